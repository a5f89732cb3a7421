//! TLS server configuration (`--tls-cert`, `--tls-key`): PEM files loaded into a
//! `rustls::ServerConfig`, and a holder that swaps in a reloaded one on SIGHUP.
//!
//! rustls with the `ring` provider and its safe defaults: TLS 1.3 and 1.2 only, forward-secret
//! AEAD cipher suites only, no renegotiation, no compression. ALPN offers `http/1.1` (WebSocket
//! upgrades ride on it). The event loop drives a `rustls::ServerConnection` over each socket
//! with [`TlsConfigHolder::current`]; a reload changes what new connections get and leaves open
//! ones alone.
//!
//! This module must never put key material in an error or a log line, and a failed reload must
//! never leave the gateway without a certificate: the old configuration stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The one application protocol offered in ALPN.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";
/// A certificate chain or key is a few kilobytes; the bound stops a wrong path early.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// Why the certificate or key was refused; each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{flag} {path}: cannot read it: {source}")]
    Read { flag: &'static str, path: String, source: std::io::Error },
    #[error("{flag} {path}: larger than {MAX_PEM_FILE_BYTES} bytes: is this a PEM file?")]
    TooLarge { flag: &'static str, path: String },
    #[error("--tls-cert {path}: no certificate in it (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: String },
    #[error("--tls-cert {path}: not valid PEM: {reason}")]
    BadCertificatePem { path: String, reason: String },
    #[error(
        "--tls-key {path}: no private key in it (expected -----BEGIN PRIVATE KEY-----, \
         RSA PRIVATE KEY or EC PRIVATE KEY, unencrypted)"
    )]
    NoKey { path: String },
    #[error("--tls-key {path}: not valid PEM")]
    BadKeyPem { path: String },
    #[error("--tls-key {key} does not belong to the certificate in --tls-cert {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("--tls-cert {cert}, --tls-key {key}: {reason}")]
    Rejected { cert: String, key: String, reason: String },
}

/// Builds the server configuration from a PEM certificate chain (leaf first) and a PEM private
/// key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let cert_pem = read_bounded("--tls-cert", cert)?;
    let chain =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
            TlsConfigError::BadCertificatePem { path: cert_path.clone(), reason: pem_reason(&e) }
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: cert_path });
    }
    let key_pem = read_bounded("--tls-key", key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsConfigError::NoKey { path: key_path.clone() },
        _ => TlsConfigError::BadKeyPem { path: key_path.clone() },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private_key));
    let mut config = config.map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsConfigError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone() }
        }
        other => TlsConfigError::Rejected {
            cert: cert_path.clone(),
            key: key_path.clone(),
            reason: other.to_string(),
        },
    })?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "bad base64 inside a section".into(),
        other => other.to_string(),
    }
}

fn read_bounded(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    use std::io::Read as _;
    let read_error =
        |source| TlsConfigError::Read { flag, path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsConfigError::TooLarge { flag, path: path.display().to_string() });
    }
    Ok(bytes)
}

/// The configuration in force, and where to reload it from.
#[derive(Debug)]
pub struct TlsConfigHolder {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
}

/// A warning when the private key may be read by other users of the machine (log it at warn,
/// at start and after each reload).
pub fn key_file_warning(key: &Path) -> Option<String> {
    crate::access::readable_by_others("--tls-key", key)
}

impl TlsConfigHolder {
    /// Loads the files once; at start an error is exit 64.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfigHolder, TlsConfigError> {
        let config = load_server_config(cert, key)?;
        Ok(TlsConfigHolder {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::new(config),
        })
    }

    /// The configuration for a new connection (a pointer copy, no lock).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads both files. On success new connections get the new certificate; on error the
    /// old one stays and the error says why (log it).
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let config = load_server_config(&self.cert, &self.key)?;
        self.current.store(config);
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// What the operator should fix that does not stop TLS (a key readable by others).
    pub fn warnings(&self) -> Vec<String> {
        key_file_warning(&self.key).into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(label: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("gateway-test-{label}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct TestCert {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn self_signed(names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    fn write(dir: &TempDir, cert: &TestCert) -> (PathBuf, PathBuf) {
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert.cert_pem).unwrap();
        std::fs::write(&key_path, &cert.key_pem).unwrap();
        (cert_path, key_path)
    }

    fn client_config(
        trusted: &CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Runs a whole handshake in memory, both sides sans-IO, and returns the server side.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<ServerConnection, rustls::Error> {
        let mut server = ServerConnection::new(server)?;
        let mut client = ClientConnection::new(client, name.to_string().try_into().unwrap())?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                server.read_tls(&mut slice).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                client.read_tls(&mut slice).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn a_verifying_client_completes_tls13_and_tls12_with_http11_alpn() {
        let dir = TempDir::new("tls-ok");
        let cert = self_signed(&["localhost", "127.0.0.1"]);
        let (cert_path, key_path) = write(&dir, &cert);
        let holder = TlsConfigHolder::load(&cert_path, &key_path).unwrap();
        let config = holder.current();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let server = handshake(
            Arc::clone(&config),
            client_config(&cert.der, &[&rustls::version::TLS13]),
            "localhost",
        )
        .unwrap();
        assert_eq!(server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));

        let server = handshake(
            Arc::clone(&config),
            client_config(&cert.der, &[&rustls::version::TLS12]),
            "127.0.0.1",
        )
        .unwrap();
        assert_eq!(server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));

        // A client that verifies refuses a name the certificate does not carry.
        let wrong = handshake(
            Arc::clone(&config),
            client_config(&cert.der, &[&rustls::version::TLS13]),
            "example.com",
        );
        assert!(wrong.is_err());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = TempDir::new("tls-mismatch");
        let a = self_signed(&["localhost"]);
        let b = self_signed(&["localhost"]);
        let (cert_path, key_path) = write(&dir, &a);
        std::fs::write(&key_path, &b.key_pem).unwrap();
        let err = load_server_config(&cert_path, &key_path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--tls-key {} does not belong to the certificate in --tls-cert {}",
                key_path.display(),
                cert_path.display()
            )
        );
    }

    #[test]
    fn missing_and_swapped_files_name_the_flag() {
        let dir = TempDir::new("tls-bad");
        let cert = self_signed(&["localhost"]);
        let (cert_path, key_path) = write(&dir, &cert);
        let missing = dir.path().join("missing.pem");
        let err = load_server_config(&missing, &key_path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--tls-cert {}: cannot read it: ", missing.display())),
            "{err}"
        );
        // Both flags given the certificate: no key in the key file.
        let err = load_server_config(&cert_path, &cert_path).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoKey { .. }), "{err}");
        // The key given as the certificate: no certificate in it, and the key is not quoted.
        let err = load_server_config(&key_path, &key_path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--tls-cert {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
                key_path.display()
            )
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let err = load_server_config(&cert_path, &garbage).unwrap_err().to_string();
        assert_eq!(err, format!("--tls-key {}: not valid PEM", garbage.display()));
    }

    #[test]
    fn reload_swaps_in_a_good_pair_and_keeps_the_old_one_on_error() {
        let dir = TempDir::new("tls-reload");
        let first = self_signed(&["localhost"]);
        let (cert_path, key_path) = write(&dir, &first);
        let holder = TlsConfigHolder::load(&cert_path, &key_path).unwrap();
        let before = holder.current();

        std::fs::write(&cert_path, "not a certificate").unwrap();
        assert!(holder.reload().is_err());
        assert!(Arc::ptr_eq(&before, &holder.current()), "a failed reload keeps the old config");

        let second = self_signed(&["localhost"]);
        write(&dir, &second);
        holder.reload().unwrap();
        let after = holder.current();
        assert!(!Arc::ptr_eq(&before, &after));
        // New connections get the new certificate: a client trusting only it succeeds...
        assert!(handshake(
            Arc::clone(&after),
            client_config(&second.der, &[&rustls::version::TLS13]),
            "localhost"
        )
        .is_ok());
        // ...and one trusting only the old one fails.
        assert!(handshake(
            after,
            client_config(&first.der, &[&rustls::version::TLS13]),
            "localhost"
        )
        .is_err());
    }

    #[test]
    fn the_make_run_tls_certificate_loads_and_verifies() {
        let dir = TempDir::new("tls-dev-cert");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-cert.sh");
        let status = std::process::Command::new(script)
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("scripts/dev-cert.sh runs (openssl on PATH: scripts/setup.sh installs it)");
        assert!(status.success());
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let holder = TlsConfigHolder::load(&cert_path, &key_path).unwrap();
        assert!(holder.warnings().is_empty(), "dev-cert.sh writes the key with mode 600");
        let der = CertificateDer::from_pem_file(&cert_path).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let client = client_config(&der, &[&rustls::version::TLS13]);
            assert!(handshake(holder.current(), client, name).is_ok(), "{name}");
        }
    }
}
