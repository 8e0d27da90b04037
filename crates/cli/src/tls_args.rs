//! TLS flags: a listener's certificate and key (every service), and whom
//! this process trusts on its outgoing connections (`--ca-file`, global).
//! There is no flag that turns verification off.

use crate::BoxError;
use std::path::PathBuf;

/// A service listener's TLS (`--tls-cert`, `--tls-key`, …); none: plain
/// HTTP (loopback development only).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ListenTls {
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, env = "CLOISTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Also presented as this
    /// service's client certificate when it calls another service.
    #[arg(long, env = "CLOISTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates issued under this CA (PEM): services
    /// calling this one identify themselves with theirs.
    #[arg(long, env = "CLOISTER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    #[arg(long, requires = "tls_cert")]
    pub tls12: bool,
}

impl ListenTls {
    /// The listener's TLS, loaded and checked; `None` without `--tls-cert`.
    pub fn load(&self) -> Result<Option<cloister_tls::ServerTls>, BoxError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(cloister_tls::ServerTls::load(
            &cloister_tls::ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                allow_tls12: self.tls12,
            },
        )?))
    }

    /// `https` or `http`, for the URL a service prints.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Set this process's outgoing TLS: trust `ca_file` (else the system's
    /// roots) and present this listener's certificate as the client's.
    pub fn set_outgoing(&self, ca_file: Option<&PathBuf>) -> Result<(), BoxError> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        };
        set_outgoing(ca_file, identity)
    }
}

/// Set this process's outgoing TLS from `--ca-file` (and a client
/// certificate): every HTTP client and WebSocket this process opens uses
/// it.
pub fn set_outgoing(
    ca_file: Option<&PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<(), BoxError> {
    if ca_file.is_none() && identity.is_none() {
        return Ok(());
    }
    cloister_tls::set_outgoing(cloister_tls::ClientTls::load(
        &cloister_tls::ClientTlsFiles {
            ca: ca_file.cloned(),
            identity,
            allow_tls12: false,
        },
    )?);
    Ok(())
}

/// Loopback TLS for the demo and the tests: one development CA, a
/// certificate from it for every listener, and this process's outgoing
/// connections trusting it.
#[derive(Clone)]
pub struct LocalTls {
    ca: std::sync::Arc<cloister_tls::dev::DevCa>,
}

impl LocalTls {
    /// A new CA in `dir`; this process trusts it from now on.
    pub fn create(dir: &std::path::Path) -> Result<LocalTls, BoxError> {
        let ca = cloister_tls::dev::DevCa::create(dir, "Cloister development CA")?;
        cloister_tls::set_outgoing(cloister_tls::ClientTls::load(&ca.client_files())?);
        Ok(LocalTls {
            ca: std::sync::Arc::new(ca),
        })
    }

    /// A listener's TLS for service `name` on loopback.
    pub fn server(&self, name: &str) -> Result<cloister_tls::ServerTls, BoxError> {
        Ok(cloister_tls::ServerTls::load(&self.ca.server_files(name)?)?)
    }

    /// Issue a loopback certificate for `name` (files: for a child
    /// process's `--tls-cert` and `--tls-key`).
    pub fn issue(&self, name: &str) -> Result<(PathBuf, PathBuf), BoxError> {
        Ok(self.ca.issue(name, &["localhost", "127.0.0.1"])?)
    }

    /// The CA certificate (for `--ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca_file()
    }
}

/// A new loopback listener for service `name`, with its TLS (a certificate
/// from `tls`'s CA) when `tls` is given, and its URL.
pub async fn bind_local(
    name: &str,
    tls: Option<&LocalTls>,
) -> Result<
    (
        tokio::net::TcpListener,
        Option<cloister_tls::ServerTls>,
        String,
    ),
    BoxError,
> {
    bind(name, "127.0.0.1:0", tls).await
}

/// A listener on `addr` for service `name`, as [`bind_local`].
pub async fn bind(
    name: &str,
    addr: impl tokio::net::ToSocketAddrs,
    tls: Option<&LocalTls>,
) -> Result<
    (
        tokio::net::TcpListener,
        Option<cloister_tls::ServerTls>,
        String,
    ),
    BoxError,
> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    let server_tls = tls.map(|t| t.server(name)).transpose()?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    Ok((l, server_tls, format!("{scheme}://{local}")))
}
