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

fn read_err(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Read {
        what: "file",
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Write a file that must not exist yet; a secret one is 0600 from birth.
fn create_new(path: &Path, data: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    o.open(path)?.write_all(data.as_bytes())
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
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).map_err(|e| read_err(&ca, e))?;
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
    /// services); written to `dir/NAME.pem` and `dir/NAME.key` (0600), or
    /// `NAME-2.pem` and so on when that name was issued before.
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
        // Never overwrite: two stacks in one process may ask for the same
        // name at once, and a half-written pair would not match.
        for n in 1u32.. {
            let stem = if n == 1 {
                name.to_owned()
            } else {
                format!("{name}-{n}")
            };
            let (cert_path, key_path) = (
                self.dir.join(format!("{stem}.pem")),
                self.dir.join(format!("{stem}.key")),
            );
            match create_new(&cert_path, &cert.pem(), false) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(read_err(&cert_path, e)),
            }
            create_new(&key_path, &key.serialize_pem(), true)
                .map_err(|e| read_err(&key_path, e))?;
            return Ok((cert_path, key_path));
        }
        unreachable!("u32 names run out")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two stacks asking for the same name at once each get a pair that
    /// matches (a race here once paired one call's key with another's
    /// certificate).
    #[test]
    fn the_same_name_issued_concurrently_gives_matching_pairs() {
        crate::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = std::sync::Arc::new(DevCa::create(dir.path(), "test CA").unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ca = ca.clone();
                std::thread::spawn(move || ca.server_files("km").unwrap())
            })
            .collect();
        let mut certs = std::collections::BTreeSet::new();
        for h in handles {
            let files = h.join().unwrap();
            assert!(certs.insert(files.cert.clone()), "a file was reused");
            crate::ServerTls::load(&files).expect("key and certificate match");
        }
        assert!(dir.path().join("km.pem").exists());
        assert!(dir.path().join("km-8.pem").exists());
    }
}
