//! Certificates made for one test: a CA, a server certificate it signed for `localhost` and
//! `127.0.0.1`, a client certificate it signed, and a client certificate of another CA. Each
//! is also written as PEM files, for the binary and third-party clients.

use std::path::{Path, PathBuf};

use gbrain_common::tls::{ClientTls, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, in PEM, and where they were written.
pub struct Pair {
    pub cert: String,
    pub key: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// The test's certificates; the files live as long as it does.
pub struct Pki {
    /// The CA that signed `server` and `client`.
    pub ca: String,
    pub ca_path: PathBuf,
    /// Another CA, which signed `foreign_client`.
    pub other_ca: String,
    pub other_ca_path: PathBuf,
    pub server: Pair,
    pub client: Pair,
    pub foreign_client: Pair,
    _dir: tempfile::TempDir,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Pair {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("signed");
    let pair = Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
        cert_path: dir.join(format!("{name}.pem")),
        key_path: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert_path, &pair.cert).expect("write cert");
    std::fs::write(&pair.key_path, &pair.key).expect("write key");
    pair
}

impl Pki {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, issuer) = new_ca("gbrain test ca");
        let (other_ca, other_issuer) = new_ca("another ca");
        let server = leaf(
            dir.path(),
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client = leaf(
            dir.path(),
            "client",
            &["gbrain-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        let foreign_client = leaf(
            dir.path(),
            "foreign-client",
            &["gbrain-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_issuer,
        );
        let ca_path = dir.path().join("ca.pem");
        let other_ca_path = dir.path().join("other-ca.pem");
        std::fs::write(&ca_path, &ca).expect("write ca");
        std::fs::write(&other_ca_path, &other_ca).expect("write ca");
        Self {
            ca,
            ca_path,
            other_ca,
            other_ca_path,
            server,
            client,
            foreign_client,
            _dir: dir,
        }
    }

    /// The server's TLS; with `mutual`, clients need a certificate of the CA.
    pub fn server_tls(&self, mutual: bool) -> ServerTls {
        ServerTls::from_pem(
            self.server.cert.as_bytes(),
            self.server.key.as_bytes(),
            mutual.then_some(self.ca.as_bytes()),
        )
        .expect("server tls")
    }

    /// A client trusting the CA, presenting `identity` when there is one.
    pub fn client_tls(&self, identity: Option<&Pair>) -> ClientTls {
        ClientTls::from_pem(
            Some(self.ca.as_bytes()),
            identity.map(|p| (p.cert.as_bytes(), p.key.as_bytes())),
        )
        .expect("client tls")
    }

    /// The flags of a client trusting the CA and presenting `identity`.
    pub fn client_args(
        &self,
        identity: Option<&Pair>,
    ) -> gbrain_common::clap_blocks::ClientTlsArgs {
        gbrain_common::clap_blocks::ClientTlsArgs {
            tls_ca: Some(self.ca_path.clone()),
            tls_client_cert: identity.map(|p| p.cert_path.clone()),
            tls_client_key: identity.map(|p| p.key_path.clone()),
        }
    }
}
