//! A development CA: one self-signed CA and certificates it issues, written
//! as PEM files. For `cloister demo --tls` and the tests; production
//! deployments bring their own PKI (docs/operations.md).

use crate::{ClientTlsFiles, Result, ServerTlsFiles, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA that issues certificates into a directory.
pub struct DevCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a certificate: {e}"))
}

fn write(path: &Path, data: &str, secret: bool) -> Result<()> {
    let err = |e: std::io::Error| TlsError::Read {
        what: "file",
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::write(path, data).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

impl DevCa {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn create(dir: &Path, name: &str) -> Result<DevCa> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
            what: "directory",
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write(&dir.join("ca.pem"), &cert.pem(), false)?;
        Ok(DevCa {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issue a certificate for `name` valid for `hosts` (DNS names or IP
    /// addresses), usable by a server and as a client (services calling
    /// services); written to `dir/NAME.pem` and `dir/NAME.key` (0600).
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok((cert_path, key_path))
    }

    /// A listener's files for `name` on loopback (`localhost`, 127.0.0.1).
    pub fn server_files(&self, name: &str) -> Result<ServerTlsFiles> {
        let (cert, key) = self.issue(name, &["localhost", "127.0.0.1"])?;
        Ok(ServerTlsFiles {
            cert,
            key,
            client_ca: Some(self.ca_file()),
            allow_tls12: false,
        })
    }

    /// A client that trusts this CA only (no client certificate).
    pub fn client_files(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: Some(self.ca_file()),
            identity: None,
            allow_tls12: false,
        }
    }
}
