//! TLS for Cloister's services and clients, on rustls with the `ring`
//! provider.
//!
//! - [`ServerTls`]: a listener's certificate chain and key from PEM files;
//!   TLS 1.3 only unless TLS 1.2 is asked for; optionally client
//!   certificates under a CA (services calling services).
//! - [`ClientTls`]: whom a client trusts (the system's roots, or a CA file
//!   instead) and optionally its own certificate; the same configuration for
//!   HTTP (`reqwest`) and WebSockets. There is no switch that skips
//!   verification.
//! - [`outgoing`]: the configuration a process uses for its outgoing
//!   connections, set once at start ([`set_outgoing`]).
//! - [`dev`]: a development CA and certificates, for the demo and tests.
//!
//! Errors name the file and what is wrong with it; they never hold key
//! bytes.
#![forbid(unsafe_code)]

pub mod dev;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What went wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, TlsError>;

/// Make `ring` the process's default rustls provider (once; idempotent):
/// an HTTP client built without a configuration of ours needs one.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another default is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_provider();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions: TLS 1.3, and 1.2 only when asked.
fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    if allow_tls12 {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TlsError::Read {
            what,
            path: path.to_owned(),
            reason: format!("not PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        what: "TLS private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
        },
        // The parser's message names the section, never its bytes.
        e => TlsError::Read {
            what: "TLS private key",
            path: path.to_owned(),
            reason: format!("not a PEM private key: {e}"),
        },
    })
}

/// A root store from a CA file.
fn roots_from(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path, "CA certificate")? {
        roots.add(c).map_err(|e| TlsError::Read {
            what: "CA certificate",
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Where a listener's TLS comes from.
#[derive(Clone, Debug, Default)]
pub struct ServerTlsFiles {
    /// Certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Accept client certificates issued under this CA (PEM); a client
    /// without one may still connect (user devices have none).
    pub client_ca: Option<PathBuf>,
    /// Also accept TLS 1.2 (off: TLS 1.3 only).
    pub allow_tls12: bool,
}

/// A listener's TLS configuration.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Load the files and check that the key suits the certificate.
    pub fn load(files: &ServerTlsFiles) -> Result<ServerTls> {
        let chain = read_certs(&files.cert, "TLS certificate")?;
        let key = read_key(&files.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(files.allow_tls12))
            .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots_from(ca)?),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Config(format!(
                "the key in {} does not suit the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ))
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// An acceptor for incoming connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Where a client's TLS comes from.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsFiles {
    /// Trust only this CA (PEM); none: the system's roots.
    pub ca: Option<PathBuf>,
    /// This client's certificate chain and key (services calling services).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Also speak TLS 1.2 (off: TLS 1.3 only).
    pub allow_tls12: bool,
}

/// Whom a client trusts, and who it is.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Load the files (or the system's roots).
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls> {
        let roots = match &files.ca {
            Some(ca) => roots_from(ca)?,
            None => system_roots(),
        };
        Self::build(roots, files)
    }

    fn build(roots: rustls::RootCertStore, files: &ClientTlsFiles) -> Result<ClientTls> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(files.allow_tls12))
            .map_err(|e| TlsError::Config(format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let config = match &files.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert, "TLS certificate")?, read_key(key)?)
                .map_err(|e| {
                    TlsError::Config(format!(
                        "the key in {} does not suit the certificate in {}: {e}",
                        key.display(),
                        cert.display()
                    ))
                })?,
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration (for WebSocket connectors).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// An HTTP client builder with this configuration (plain `http://`
    /// URLs still work: loopback development).
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured((*self.config).clone())
    }

    /// An HTTP client with this configuration.
    pub fn http(&self) -> Result<reqwest::Client> {
        self.http_builder()
            .build()
            .map_err(|e| TlsError::Config(format!("HTTP client: {e}")))
    }

    /// [`ClientTls::http`], or a default client if that fails (it does
    /// not with a configuration that loaded).
    pub fn http_or_default(&self) -> reqwest::Client {
        self.http().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            reqwest::Client::new()
        })
    }
}

/// The system's trusted roots (the platform's CA bundle); empty, with a
/// warning, if there is none: `http://` still works and every `https://`
/// server fails to verify.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("system CA bundle: {e}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no trusted CA certificates found on this system; give a CA file");
    }
    roots
}

static OUTGOING: std::sync::RwLock<Option<ClientTls>> = std::sync::RwLock::new(None);

/// The TLS this process uses for its outgoing connections (a service
/// calling another, the CLI calling services) unless told otherwise: what
/// [`set_outgoing`] gave, else the system's roots, TLS 1.3 only, no client
/// certificate.
pub fn outgoing() -> ClientTls {
    if let Ok(g) = OUTGOING.read()
        && let Some(t) = g.as_ref()
    {
        return t.clone();
    }
    static SYSTEM: std::sync::OnceLock<ClientTls> = std::sync::OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let files = ClientTlsFiles::default();
            match ClientTls::build(system_roots(), &files) {
                Ok(t) => t,
                // TLS 1.3 with ring and no identity cannot fail to build;
                // an empty store fails closed if it ever did.
                Err(e) => {
                    tracing::warn!("system TLS: {e}");
                    ClientTls {
                        config: Arc::new(
                            rustls::ClientConfig::builder()
                                .with_root_certificates(rustls::RootCertStore::empty())
                                .with_no_client_auth(),
                        ),
                    }
                }
            }
        })
        .clone()
}

/// Set this process's outgoing TLS (at start, from `--ca-file` and the
/// service's own certificate).
pub fn set_outgoing(tls: ClientTls) {
    match OUTGOING.write() {
        Ok(mut g) => *g = Some(tls),
        Err(p) => *p.into_inner() = Some(tls),
    }
}

/// An HTTP client with this process's outgoing TLS.
pub fn http_client() -> reqwest::Client {
    outgoing().http_or_default()
}

/// An HTTP client builder with this process's outgoing TLS (for timeouts,
/// pool sizes).
pub fn http_builder() -> reqwest::ClientBuilder {
    outgoing().http_builder()
}
