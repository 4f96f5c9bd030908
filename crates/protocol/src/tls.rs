//! TLS on every hop (issue 12): each site server and DP serves HTTPS only,
//! with a certificate made at init (or one its administrator supplied),
//! and every client pins the certificate it expects by its SHA-256
//! fingerprint instead of trusting whatever answers.
//!
//! Where the pins come from, so that nothing is ever trust on first use:
//! tokens a site mints end in `.CENTRALKEY.CERTIFICATE` (see
//! [`crate::enrollment::Token`]), so an agent, a DP, a child site and the
//! administrator's CLI pin the site's certificate from the token they were
//! handed; an enrolled agent or DP keeps the pin in its configuration; and
//! a site hands its agents each DP's fingerprint in their policy, which
//! itself came over a pinned connection. A client given no pin (a server
//! whose certificate an administrator's CA signed) verifies the chain and
//! the name against the web's root certificates instead.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a server keeps its certificate and key, under its data directory.
pub mod layout {
    /// The certificate chain (PEM), leaf first.
    pub const CERT: &str = "tls/cert.pem";
    /// The private key (PEM, mode 0600).
    pub const KEY: &str = "tls/key.pem";
}

/// What can go wrong with a server's certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or no key, or is malformed.
    #[error("{} holds no usable {what}: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The certificate and key do not make a TLS identity (the key does
    /// not match, or its kind is not supported).
    #[error("the certificate and key in {} are not usable: {reason}", dir.display())]
    Identity { dir: PathBuf, reason: String },
    /// Making a certificate failed.
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

/// The SHA-256 fingerprint of a certificate (its DER bytes), as
/// `openssl x509 -noout -fingerprint -sha256` prints it (without colons).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// Parses 64 hex digits, with or without colons between the bytes
    /// (`AB:CD:…`, as openssl prints it).
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).ok()?;
        Some(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The server side of TLS, made by [`Identity::acceptor`].
pub type Acceptor = tokio_rustls::TlsAcceptor;

/// The certificate and key an administrator supplies at init (PEM files)
/// instead of the self-signed certificate made otherwise.
#[derive(Clone, Debug)]
pub struct Supplied {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Makes a server's identity under `dir` at init: installs the `supplied`
/// one, or makes a self-signed certificate for this machine's host name.
/// Returns the fingerprint clients pin.
pub fn make(dir: &Path, supplied: Option<&Supplied>) -> Result<Fingerprint, TlsError> {
    match supplied {
        Some(files) => Identity::install(dir, &files.cert, &files.key),
        None => {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            Identity::create(dir, &[host])
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's certificate chain and key, as read from its data directory.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    dir: PathBuf,
}

impl Identity {
    /// Makes a self-signed certificate (ECDSA P-256) for `names` (host
    /// names and IP addresses the server is reached at; loopback and
    /// `localhost` are always included) and writes it and its key under
    /// `dir`. Returns its fingerprint.
    pub fn create(dir: &Path, names: &[String]) -> Result<Fingerprint, TlsError> {
        let mut names: Vec<String> = names.to_vec();
        for default in ["localhost", "127.0.0.1", "::1"] {
            if !names.iter().any(|name| name == default) {
                names.push(default.to_owned());
            }
        }
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|err| TlsError::Generate(err.to_string()))?;
        write(
            dir,
            made.cert.pem().as_bytes(),
            made.signing_key.serialize_pem().as_bytes(),
        )?;
        Ok(Fingerprint::of(made.cert.der()))
    }

    /// Takes the certificate chain and key an administrator supplied (PEM
    /// files), checks that they make an identity, and copies them under
    /// `dir`. Returns the leaf certificate's fingerprint.
    pub fn install(dir: &Path, cert: &Path, key: &Path) -> Result<Fingerprint, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = parse_chain(&cert_pem, cert)?;
        let private = parse_key(&key_pem, key)?;
        server_config(chain.clone(), private, dir)?;
        write(dir, &cert_pem, &key_pem)?;
        Ok(Fingerprint::of(&chain[0]))
    }

    /// Reads the identity under `dir` (the files [`layout`] names).
    pub fn load(dir: &Path) -> Result<Identity, TlsError> {
        let cert = dir.join(layout::CERT);
        let key = dir.join(layout::KEY);
        Ok(Identity {
            chain: parse_chain(&read(&cert)?, &cert)?,
            key: parse_key(&read(&key)?, &key)?,
            dir: dir.to_owned(),
        })
    }

    /// Whether `dir` holds an identity already.
    pub fn exists(dir: &Path) -> bool {
        dir.join(layout::CERT).exists()
    }

    /// The fingerprint clients pin: the leaf certificate's.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// The server side of TLS with this identity (HTTP/1.1 only).
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        Ok(tokio_rustls::TlsAcceptor::from(self.server_config()?))
    }

    /// The rustls configuration of [`Identity::acceptor`].
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        server_config(self.chain.clone(), self.key.clone_key(), &self.dir).map(Arc::new)
    }
}

/// The fingerprint of the certificate under `dir`.
pub fn fingerprint_in(dir: &Path) -> Result<Fingerprint, TlsError> {
    Ok(Identity::load(dir)?.fingerprint())
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    dir: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let identity = |reason: String| TlsError::Identity {
        dir: dir.to_owned(),
        reason,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| identity(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| identity(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(chain)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

fn write(dir: &Path, cert: &[u8], key: &[u8]) -> Result<(), TlsError> {
    let cert_path = dir.join(layout::CERT);
    let folder = cert_path.parent().expect("the layout names a folder");
    std::fs::create_dir_all(folder).map_err(|source| TlsError::Io {
        what: "creating",
        path: folder.to_owned(),
        source,
    })?;
    let key_path = dir.join(layout::KEY);
    cascade_store::write_atomically(&key_path, key, 0o600).map_err(|source| TlsError::Io {
        what: "writing",
        path: key_path,
        source,
    })?;
    cascade_store::write_atomically(&cert_path, cert, 0o644).map_err(|source| TlsError::Io {
        what: "writing",
        path: cert_path,
        source,
    })
}

/// An HTTPS-only client builder: with a pin, only a server presenting
/// that exact certificate is accepted (whatever name it was reached by);
/// without, the chain and name are verified against the web's roots
/// (reqwest's own TLS setup). Every client Cascade makes starts here.
pub fn client_builder(pin: Option<Fingerprint>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().https_only(true);
    match pin {
        Some(pin) => builder.use_preconfigured_tls(pinned_config(pin)),
        None => builder,
    }
}

/// The client side of TLS accepting only the certificate `pin` names (for
/// a client other than reqwest's: a test speaking raw HTTP/1.1).
pub fn pinned_config(pin: Fingerprint) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin,
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts exactly the certificate whose fingerprint is pinned, and checks
/// that the server holds its key (the handshake's signature).
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server presented certificate {presented}, not the pinned {}: it is not the server the token or policy named, or the connection was intercepted",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_as_openssl_prints_it() {
        let fingerprint = Fingerprint::of(b"certificate");
        let hex = fingerprint.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(Fingerprint::parse(&hex), Some(fingerprint));
        let openssl: Vec<String> = hex
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8(pair.to_vec()).unwrap())
            .collect();
        assert_eq!(Fingerprint::parse(&openssl.join(":")), Some(fingerprint));
        assert_eq!(Fingerprint::parse("abc"), None);
    }

    #[test]
    fn a_made_identity_loads_with_its_fingerprint_and_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = Identity::create(dir.path(), &["site.example".into()]).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), made);
        loaded.acceptor().unwrap();
        let mode = std::fs::metadata(dir.path().join(layout::KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_supplied_key_that_does_not_match_its_certificate_is_refused() {
        let made = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        Identity::create(made.path(), &[]).unwrap();
        Identity::create(other.path(), &[]).unwrap();
        let target = tempfile::tempdir().unwrap();
        let err = Identity::install(
            target.path(),
            &made.path().join(layout::CERT),
            &other.path().join(layout::KEY),
        )
        .expect_err("a mismatched key is refused");
        assert!(matches!(err, TlsError::Identity { .. }), "{err}");
        assert!(!Identity::exists(target.path()));
        let err = Identity::install(
            target.path(),
            &made.path().join(layout::KEY),
            &made.path().join(layout::KEY),
        )
        .expect_err("a key is not a certificate");
        assert!(err.to_string().contains("no usable certificate"), "{err}");
    }
}
