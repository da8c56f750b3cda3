//! TLS client configuration for upstream connections (rustls 0.23, ring).
//!
//! Verification is always on: the bundled webpki roots plus the operating
//! system's store, or only the CAs of a route's `ca:` file. The name checked
//! and sent as SNI is `server_name:` or the host of `address:`. SPKI pins
//! (`pin_sha256:`) are checked after, never instead of, normal verification.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{ListenMap, Security, Upstream};

pub mod resume;

/// A TLS setting could not be turned into a working configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A certificate chain file could not be used.
    #[error("cannot use the certificate file {path}: {reason}")]
    CertFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A private key file could not be used.
    #[error("cannot use the key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// A TLS listener without `certificate:` and `key:`.
    #[error("a TLS listener needs `certificate:` and `key:`")]
    MissingCertificate,
    /// No trust anchors at all.
    #[error("no trusted CA certificates could be loaded")]
    NoRoots,
}

/// TLS settings for one upstream.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// Client configuration (roots, pins).
    pub config: Arc<rustls::ClientConfig>,
    /// Name checked and sent as SNI.
    pub name: ServerName<'static>,
}

/// How a route reaches its upstream; the TLS settings exist exactly when
/// the transport needs them.
#[derive(Debug, Clone)]
pub enum UpstreamTransport {
    /// Plain TCP from the first byte to the last.
    Plain,
    /// TLS from the first byte.
    Tls(TlsTarget),
    /// Plain TCP upgraded by STLS/STARTTLS before anything else is said.
    StartTls(TlsTarget),
}

impl UpstreamTransport {
    /// Loads what the route's upstream `security` needs (roots, CA file,
    /// pins, name).
    pub fn prepare(up: &Upstream) -> Result<Self, TlsSetupError> {
        let target = || -> Result<TlsTarget, TlsSetupError> {
            Ok(TlsTarget {
                config: client_config(up)?,
                name: server_name(up)?,
            })
        };
        Ok(match up.security {
            Security::None => Self::Plain,
            Security::Tls => Self::Tls(target()?),
            Security::Starttls => Self::StartTls(target()?),
        })
    }

    /// The route's `security` setting this transport carries out.
    pub fn security(&self) -> Security {
        match self {
            Self::Plain => Security::None,
            Self::Tls(_) => Security::Tls,
            Self::StartTls(_) => Security::Starttls,
        }
    }
}

/// How a route listens; the certificate exists exactly when TLS is offered.
#[derive(Debug, Clone)]
pub enum ListenSide {
    /// Plain TCP (validation refuses `require_tls_for_auth` here: TLS
    /// could never be had, so logins are always allowed).
    Plain,
    /// TLS from the first byte.
    ImplicitTls(Arc<ServerConfig>),
    /// Plain, upgraded by STLS/STARTTLS on the client's request.
    StartTls {
        /// The server configuration for the upgrade.
        config: Arc<ServerConfig>,
        /// Logins refused (and not advertised) before TLS.
        required_for_auth: bool,
    },
}

impl ListenSide {
    /// Loads the listener's certificate and key when its `security` needs them.
    pub fn prepare(map: &ListenMap) -> Result<Self, TlsSetupError> {
        let required_for_auth = map.requires_tls_for_auth();
        let config = || match (&map.certificate, &map.key) {
            (Some(cert), Some(key)) => server_config(cert, key),
            _ => Err(TlsSetupError::MissingCertificate),
        };
        Ok(match map.security {
            Security::None => Self::Plain,
            Security::Tls => Self::ImplicitTls(config()?),
            Security::Starttls => Self::StartTls {
                config: config()?,
                required_for_auth,
            },
        })
    }

    /// Whether logins are refused before TLS.
    pub fn required_for_auth(&self) -> bool {
        match self {
            Self::StartTls {
                required_for_auth, ..
            } => *required_for_auth,
            Self::Plain | Self::ImplicitTls(_) => false,
        }
    }
}

/// The listen side's TLS situation, as the protocol machines see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenTls {
    /// The listener offers STLS/STARTTLS.
    pub starttls: bool,
    /// The connection is encrypted (implicit TLS, or after an upgrade).
    pub active: bool,
    /// Logins are refused (and not advertised) before TLS.
    pub required_for_auth: bool,
}

/// The crypto provider postern uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate from a PEM file; at least one is required.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |reason: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a valid PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(err(
            "it contains no `-----BEGIN CERTIFICATE-----` block".to_owned()
        ));
    }
    Ok(certs)
}

/// Builds a listener's server configuration from PEM files: a certificate
/// chain (leaf first) and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC;
/// RSA, ECDSA and Ed25519 keys).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let cert_err = |reason: String| TlsSetupError::CertFile {
        path: cert.display().to_string(),
        reason,
    };
    let key_err = |reason: String| TlsSetupError::KeyFile {
        path: key.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not a valid PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "it contains no `-----BEGIN CERTIFICATE-----` block".to_owned(),
        ));
    }
    let key_bytes = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    // The key's bytes are never echoed: only the parser's error kind.
    let private = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| key_err(format!("no usable private key found ({e})")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            key_err(format!(
                "the key does not fit the certificate or is not supported ({e})"
            ))
        })?;
    Ok(Arc::new(config))
}

/// The trust anchors: the certificates of a CA file, or the bundled roots
/// plus the system's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_ca_file(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(roots)
}

/// A client configuration for HTTPS to an identity provider: `ca` or the
/// bundled and system roots, standard verification, HTTP/1.1.
pub fn https_client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsSetupError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Builds the client configuration for one route's upstream.
pub fn client_config(up: &Upstream) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = roots(up.ca.as_deref())?;
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let pins = up
        .pin_sha256
        .iter()
        .filter_map(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(p.trim())
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        })
        .collect::<Vec<_>>();
    let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() {
        webpki
    } else {
        Arc::new(PinningVerifier {
            inner: webpki,
            pins,
        })
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // One store per route (this config), sized for its concurrency.
    config.resumption = rustls::client::Resumption::store(Arc::new(resume::TicketStore::new(
        resume::TICKETS_PER_SERVER,
    )));
    Ok(Arc::new(config))
}

/// The name to verify and send as SNI.
pub fn server_name(up: &Upstream) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(up.tls_name().to_owned())
        .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))
}

/// SHA-256 over the DER SubjectPublicKeyInfo of a certificate.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let digest = Sha256::digest(parsed.tbs_certificate.subject_pki.raw);
    <[u8; 32]>::try_from(digest.as_slice()).ok()
}

/// Normal verification first, then the end-entity key must match a pin.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match spki_sha256(end_entity) {
            Some(hash) if self.pins.contains(&hash) => Ok(verified),
            _ => Err(rustls::Error::General(
                "the server's public key matches none of the configured pin_sha256 values"
                    .to_owned(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_testkit::TempDir;

    fn write_pair(
        dir: &TempDir,
        name: &str,
        cert: &str,
        key: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            dir.write(&format!("{name}.pem"), cert),
            dir.write(&format!("{name}.key"), key),
        )
    }

    #[test]
    fn listener_keys_of_every_supported_kind_load() {
        let dir = TempDir::new("postern-keys");
        for (name, alg) in [
            ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("ed25519", &rcgen::PKCS_ED25519),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            let (c, k) = write_pair(&dir, name, &cert.pem(), &key.serialize_pem());
            server_config(&c, &k).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // RSA (PKCS#8 and PKCS#1), made with openssl when it is installed.
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok()
        {
            for (name, extra) in [("rsa8", &[][..]), ("rsa1", &["-traditional"][..])] {
                let key = dir.path().join(format!("{name}.key"));
                let cert = dir.path().join(format!("{name}.pem"));
                let ok = std::process::Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=localhost",
                    ])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("openssl")
                    .success();
                assert!(ok);
                if !extra.is_empty() {
                    let ok = std::process::Command::new("openssl")
                        .args(["rsa", "-traditional", "-in"])
                        .arg(&key)
                        .arg("-out")
                        .arg(&key)
                        .status()
                        .expect("openssl")
                        .success();
                    assert!(ok);
                }
                server_config(&cert, &key).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }

    #[test]
    fn bad_listener_files_are_named_without_echoing_the_key() {
        let dir = TempDir::new("postern-badkeys");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let other = rcgen::KeyPair::generate().expect("key");
        let (c, k) = write_pair(&dir, "mismatch", &cert.pem(), &other.serialize_pem());
        let e = server_config(&c, &k)
            .expect_err("mismatched key")
            .to_string();
        assert!(e.contains("mismatch.key"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let (c, k) = write_pair(&dir, "empty", "", &key.serialize_pem());
        assert!(server_config(&c, &k)
            .expect_err("no cert")
            .to_string()
            .contains("empty.pem"));
        let missing = dir.path().join("missing.key");
        assert!(server_config(&c, &missing).is_err());
    }
}
