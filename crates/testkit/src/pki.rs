//! A throw-away PKI minted per test run with rcgen.
//!
//! Every [`TestPki`] is an independent CA; a second `TestPki::new()` is
//! therefore an "unknown CA" for the first one's clients. All rustls builders
//! here take the ring provider explicitly so no process-wide default provider
//! has to be installed.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};

use crate::unique::{stamp, Stamp};

/// Common name of every test CA.
pub const TEST_CA_COMMON_NAME: &str = "postern test CA";

/// Subject alternative names of the default server leaf.
pub const DEFAULT_LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The ring crypto provider, as an `Arc` ready for rustls builders.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A leaf certificate with its private key.
struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

/// A CA plus a server leaf (`localhost`, `127.0.0.1`, `::1`) signed by it.
pub struct TestPki {
    ca_cert: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaf: Leaf,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of test output.
        f.debug_struct("TestPki")
            .field("ca", &TEST_CA_COMMON_NAME)
            .field("leaf_names", &DEFAULT_LEAF_NAMES)
            .finish_non_exhaustive()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// Mint a fresh CA (CN "postern test CA") and a default server leaf.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, TEST_CA_COMMON_NAME);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "postern tests");
        // A distinct subject per CA: with identical DNs a client trusting
        // another TestPki would match the anchor by name and report
        // BadSignature instead of the UnknownIssuer an unknown CA gives.
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unique_label());
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("self-sign test CA");
        let issuer = Issuer::new(params, ca_key);
        let leaf = mint_leaf(&issuer, &DEFAULT_LEAF_NAMES);
        Self {
            ca_cert: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer,
            leaf,
        }
    }

    /// Server config presenting the default leaf plus the CA; no client auth.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.build_server_config(&self.leaf)
    }

    /// Server config presenting a new leaf from the same CA with other SANs
    /// (for wrong-name tests). Entries that parse as IP addresses become IP
    /// SANs, the rest DNS SANs.
    pub fn server_config_for_names(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let leaf = mint_leaf(&self.issuer, names);
        self.build_server_config(&leaf)
    }

    /// Client config trusting only this CA, no client certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_cert.clone())
            .expect("add test CA to root store");
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.clone()
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Write the CA certificate to `dir/ca.pem` and return that path.
    pub fn write_ca_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        fs::write(&path, &self.ca_pem).expect("write ca.pem");
        path
    }

    /// The default leaf certificate in PEM (leaf only, no chain).
    pub fn leaf_cert_pem(&self) -> String {
        self.leaf.cert_pem.clone()
    }

    /// The default leaf followed by the CA, in PEM (a full chain file).
    pub fn leaf_chain_pem(&self) -> String {
        format!("{}{}", self.leaf.cert_pem, self.ca_pem)
    }

    /// The default leaf's private key, PKCS#8 PEM.
    pub fn leaf_key_pem(&self) -> String {
        self.leaf.key.serialize_pem()
    }

    /// Write `leaf.pem` (leaf + CA chain) and `leaf.key` into `dir`;
    /// returns `(cert_path, key_path)`.
    pub fn write_leaf_pem(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("leaf.pem");
        let key = dir.join("leaf.key");
        fs::write(&cert, self.leaf_chain_pem()).expect("write leaf.pem");
        fs::write(&key, self.leaf_key_pem()).expect("write leaf.key");
        (cert, key)
    }

    /// Standard base64 of SHA-256 over the default leaf's DER
    /// SubjectPublicKeyInfo (the HPKP / `pin-sha256` form).
    pub fn leaf_spki_sha256_base64(&self) -> String {
        let digest = Sha256::digest(self.leaf.key.subject_public_key_info());
        base64::engine::general_purpose::STANDARD.encode(digest)
    }

    fn build_server_config(&self, leaf: &Leaf) -> Arc<rustls::ServerConfig> {
        let chain = vec![leaf.cert.clone(), self.ca_cert.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("test leaf and key match");
        Arc::new(config)
    }
}

fn unique_label() -> String {
    let Stamp { pid, n, nanos } = stamp();
    format!("run {pid}-{n}-{nanos}")
}

fn mint_leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("generate leaf key");
    let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    params.is_ca = IsCa::NoCa;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).expect("sign test leaf");
    Leaf {
        cert: cert.der().clone(),
        cert_pem: cert.pem(),
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn spki_pin_matches_certificate() {
        let pki = TestPki::new();
        let (_, cert) =
            x509_parser::parse_x509_certificate(pki.leaf.cert.as_ref()).expect("parse leaf");
        let spki_der = cert.tbs_certificate.subject_pki.raw;
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der));
        assert_eq!(pki.leaf_spki_sha256_base64(), expected);
        assert_eq!(expected.len(), 44);
    }

    #[test]
    fn ca_and_leaf_shape() {
        let pki = TestPki::new();
        let (_, ca) = x509_parser::parse_x509_certificate(pki.ca_cert.as_ref()).expect("parse CA");
        assert!(ca.is_ca());
        assert!(ca.subject().to_string().contains(TEST_CA_COMMON_NAME));
        let (_, leaf) =
            x509_parser::parse_x509_certificate(pki.leaf.cert.as_ref()).expect("parse leaf");
        assert!(!leaf.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
        let san = leaf
            .subject_alternative_name()
            .expect("SAN ext ok")
            .expect("SAN ext present");
        let rendered: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(rendered.len(), 3, "{rendered:?}");
        assert!(pki
            .leaf_cert_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.leaf_key_pem().contains("PRIVATE KEY"));
    }

    #[test]
    fn write_ca_pem_writes_file() {
        let pki = TestPki::new();
        let dir = TempDir::new("pki");
        let path = pki.write_ca_pem(dir.path());
        assert_eq!(path, dir.path().join("ca.pem"));
        assert_eq!(fs::read_to_string(&path).expect("read back"), pki.ca_pem());
        let (cert, key) = pki.write_leaf_pem(dir.path());
        assert!(cert.exists() && key.exists());
    }

    #[test]
    fn two_pkis_are_independent() {
        let a = TestPki::new();
        let b = TestPki::new();
        assert_ne!(a.ca_pem(), b.ca_pem());
        assert_ne!(a.leaf_spki_sha256_base64(), b.leaf_spki_sha256_base64());
    }
}
