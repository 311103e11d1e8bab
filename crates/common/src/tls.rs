//! TLS for the gRPC servers and their clients (rustls on ring).
//!
//! Plaintext stays the default. A server turns TLS on with a certificate and its key
//! ([`ServerTls`]); a client CA on top makes it mutual, so that every connection must present
//! a certificate that CA signed. Bearer tokens are checked as before, inside the TLS session:
//! a certificate says which machine calls, the token which tenant and roles.
//!
//! A client ([`ClientTls`]) uses TLS for `https://` endpoints, trusting the CA it was given
//! (or the system's roots) and presenting its own certificate when it has one. `http://`
//! endpoints stay plaintext whatever it holds.
//!
//! Kubernetes' gRPC probes cannot speak TLS, so a server can also answer `grpc.health.v1`,
//! and nothing else, in plaintext on a port of its own (`--health-listen`, see
//! [`crate::server::Listeners`]).
//!
//! Every file is read and checked when the process starts: a certificate without its key, a
//! key that does not match, or a file with no certificate in it stops the process with a
//! message naming the flag, rather than failing each handshake later.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::clap_blocks::{ClientTlsArgs, ServerTlsArgs};
use crate::{Error, Result};

/// The longest a TLS handshake may take, on either side: a peer that stalls mid-handshake does
/// not hold a connection for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server's gRPC port presents, and which client certificates it requires.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: ServerTlsConfig,
    mutual: bool,
}

impl ServerTls {
    /// TLS as the flags say: None without a certificate (plaintext); an error when only half
    /// of it is given or a file does not hold what it should.
    pub fn from_args(args: &ServerTlsArgs) -> Result<Option<Self>> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (None, None) => {
                if args.tls_client_ca.is_some() {
                    return Err(Error::Config(
                        "--tls-client-ca (GBRAIN_TLS_CLIENT_CA) needs --tls-cert and --tls-key: \
                         client certificates are asked for only over TLS"
                            .into(),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "--tls-cert (GBRAIN_TLS_CERT) is set but --tls-key (GBRAIN_TLS_KEY) is not: \
                     TLS needs both"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "--tls-key (GBRAIN_TLS_KEY) is set but --tls-cert (GBRAIN_TLS_CERT) is not: \
                     TLS needs both"
                        .into(),
                ));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let cert = read(cert, "--tls-cert")?;
        let key = read(key, "--tls-key")?;
        let client_ca = args
            .tls_client_ca
            .as_deref()
            .map(|p| read(p, "--tls-client-ca"))
            .transpose()?;
        Self::from_pem(&cert, &key, client_ca.as_deref()).map(Some)
    }

    /// TLS with `cert` (a PEM chain, the server's certificate first) and its `key`; with a
    /// `client_ca`, clients must present a certificate it signed.
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self> {
        certificates(cert, "--tls-cert")?;
        private_key(key, "--tls-key")?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = client_ca {
            trust_anchors(ca, "--tls-client-ca")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        // Builds the rustls configuration now, so that a key that does not match its
        // certificate stops the process at start.
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| Error::Config(format!("TLS: {}", chain(&e))))?;
        Ok(Self {
            config,
            mutual: client_ca.is_some(),
        })
    }

    /// The configuration for tonic's server builder.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// `tls`, or `mtls` when client certificates are required, for logs.
    pub fn mode(&self) -> &'static str {
        if self.mutual { "mtls" } else { "tls" }
    }
}

/// What a client trusts on `https://` endpoints, and the certificate it presents to servers
/// that ask for one. The default trusts the system's roots and presents nothing.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    /// As the flags say; an error when only half of the identity is given or a file does not
    /// hold what it should.
    pub fn from_args(args: &ClientTlsArgs) -> Result<Self> {
        let ca = args
            .tls_ca
            .as_deref()
            .map(|p| read(p, "--tls-ca"))
            .transpose()?;
        let identity = match (&args.tls_client_cert, &args.tls_client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read(cert, "--tls-client-cert")?,
                read(key, "--tls-client-key")?,
            )),
            (Some(_), None) => {
                return Err(Error::Config(
                    "--tls-client-cert (GBRAIN_TLS_CLIENT_CERT) is set but --tls-client-key \
                     (GBRAIN_TLS_CLIENT_KEY) is not: a client certificate needs its key"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "--tls-client-key (GBRAIN_TLS_CLIENT_KEY) is set but --tls-client-cert \
                     (GBRAIN_TLS_CLIENT_CERT) is not: a client certificate needs its key"
                        .into(),
                ));
            }
        };
        Self::from_pem(
            ca.as_deref(),
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }

    /// Trusting `ca` (PEM; None: the system's roots) and presenting `identity` (a PEM chain
    /// and its key) when there is one.
    pub fn from_pem(ca: Option<&[u8]>, identity: Option<(&[u8], &[u8])>) -> Result<Self> {
        if let Some(ca) = ca {
            trust_anchors(ca, "--tls-ca")?;
        }
        if let Some((cert, key)) = identity {
            certificates(cert, "--tls-client-cert")?;
            private_key(key, "--tls-client-key")?;
        }
        let tls = Self {
            ca: ca.map(Certificate::from_pem),
            identity: identity.map(|(cert, key)| Identity::from_pem(cert, key)),
        };
        // Builds a rustls configuration now (without the system's roots, which are read only
        // when an https:// endpoint needs them), so that a key that does not match its
        // certificate stops the process at start.
        let mut check = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            check = check.ca_certificate(ca.clone());
        }
        if let Some(identity) = &tls.identity {
            check = check.identity(identity.clone());
        }
        Endpoint::from_static("https://localhost")
            .tls_config(check)
            .map_err(|e| Error::Config(format!("TLS: {}", chain(&e))))?;
        Ok(tls)
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether a CA was given (otherwise the system's roots are trusted).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The endpoint of `url`: plaintext for `http://`, TLS for `https://`, verifying the
    /// server's certificate for the URL's host.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        self.endpoint_for(url, None)
    }

    /// Like [`Self::endpoint`], verifying the certificate for `server_name` instead of the
    /// URL's host: for an address resolved from a name, whose certificate names the name.
    pub fn endpoint_for(&self, url: &str, server_name: Option<&str>) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("invalid endpoint {url:?}: {}", chain(&e))))?;
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(name) = server_name {
            config = config.domain_name(name);
        }
        endpoint
            .tls_config(config)
            .map_err(|e| Error::Config(format!("TLS for {url}: {}", chain(&e))))
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))
}

/// Checks that `pem` holds at least one certificate.
fn certificates(pem: &[u8], flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{flag}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{flag}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
        )));
    }
    Ok(certs)
}

/// Checks that `pem` holds a private key.
fn private_key(pem: &[u8], flag: &str) -> Result<()> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|e| Error::Config(format!("{flag}: no PEM private key in the file: {e}")))
}

/// Checks that `pem` holds certificates that can each be a trust anchor (rustls skips any
/// that cannot, which would leave a server or client trusting nothing, silently).
fn trust_anchors(pem: &[u8], flag: &str) -> Result<()> {
    let certs = certificates(pem, flag)?;
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        return Err(Error::Config(format!(
            "{flag}: {ignored} certificate(s) in the file cannot be parsed as a CA"
        )));
    }
    Ok(())
}

/// An error with its sources: tonic's transport errors say only "transport error" at the top.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    use super::*;

    struct Pem {
        cert: String,
        key: String,
    }

    fn ca() -> (Pem, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let cert = params.self_signed(&key).unwrap();
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        (pem, Issuer::new(params, key))
    }

    fn leaf(issuer: &Issuer<'_, KeyPair>, usage: ExtendedKeyUsagePurpose) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn half_a_server_identity_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.pem");
        std::fs::write(&file, "x").unwrap();
        let only_cert = ServerTlsArgs {
            tls_cert: Some(file.clone()),
            ..Default::default()
        };
        let e = message(ServerTls::from_args(&only_cert).unwrap_err());
        assert!(e.contains("--tls-key"), "{e}");
        let only_key = ServerTlsArgs {
            tls_key: Some(file.clone()),
            ..Default::default()
        };
        let e = message(ServerTls::from_args(&only_key).unwrap_err());
        assert!(e.contains("--tls-cert"), "{e}");
        let only_ca = ServerTlsArgs {
            tls_client_ca: Some(file.clone()),
            ..Default::default()
        };
        let e = message(ServerTls::from_args(&only_ca).unwrap_err());
        assert!(e.contains("--tls-client-ca"), "{e}");
        assert!(
            ServerTls::from_args(&ServerTlsArgs::default())
                .unwrap()
                .is_none(),
            "no flags: plaintext"
        );
        let half_client = ClientTlsArgs {
            tls_client_cert: Some(file),
            ..Default::default()
        };
        let e = message(ClientTls::from_args(&half_client).unwrap_err());
        assert!(e.contains("--tls-client-key"), "{e}");
    }

    #[test]
    fn files_that_do_not_hold_what_they_should_are_refused() {
        let (ca, issuer) = ca();
        let server = leaf(&issuer, ExtendedKeyUsagePurpose::ServerAuth);
        let e = message(ServerTls::from_pem(b"not pem", server.key.as_bytes(), None).unwrap_err());
        assert!(
            e.contains("--tls-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
        // A certificate where the key should be.
        let e = message(
            ServerTls::from_pem(server.cert.as_bytes(), server.cert.as_bytes(), None).unwrap_err(),
        );
        assert!(e.contains("--tls-key"), "{e}");
        // A key that is not the certificate's.
        let other = leaf(&issuer, ExtendedKeyUsagePurpose::ServerAuth);
        assert!(ServerTls::from_pem(server.cert.as_bytes(), other.key.as_bytes(), None).is_err());
        let e = message(
            ServerTls::from_pem(
                server.cert.as_bytes(),
                server.key.as_bytes(),
                Some(server.key.as_bytes()),
            )
            .unwrap_err(),
        );
        assert!(e.contains("--tls-client-ca"), "{e}");
        let e = message(ClientTls::from_pem(Some(b"nothing"), None).unwrap_err());
        assert!(e.contains("--tls-ca"), "{e}");
        let client = leaf(&issuer, ExtendedKeyUsagePurpose::ClientAuth);
        assert!(
            ClientTls::from_pem(
                Some(ca.cert.as_bytes()),
                Some((client.cert.as_bytes(), server.key.as_bytes()))
            )
            .is_err(),
            "a client key that is not its certificate's"
        );
    }

    #[test]
    fn good_files_load_and_say_what_they_are() {
        let (ca, issuer) = ca();
        let server = leaf(&issuer, ExtendedKeyUsagePurpose::ServerAuth);
        let tls = ServerTls::from_pem(server.cert.as_bytes(), server.key.as_bytes(), None).unwrap();
        assert_eq!(tls.mode(), "tls");
        let mtls = ServerTls::from_pem(
            server.cert.as_bytes(),
            server.key.as_bytes(),
            Some(ca.cert.as_bytes()),
        )
        .unwrap();
        assert!(mtls.mutual());
        assert_eq!(mtls.mode(), "mtls");

        let client = leaf(&issuer, ExtendedKeyUsagePurpose::ClientAuth);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let args = ClientTlsArgs {
            tls_ca: Some(write("ca.pem", &ca.cert)),
            tls_client_cert: Some(write("client.pem", &client.cert)),
            tls_client_key: Some(write("client.key", &client.key)),
        };
        let tls = ClientTls::from_args(&args).unwrap();
        assert!(tls.has_ca() && tls.has_identity());
        // Only https:// endpoints get TLS; both parse.
        tls.endpoint("http://127.0.0.1:1").unwrap();
        tls.endpoint_for("https://10.0.0.1:50051", Some("inference-pods"))
            .unwrap();
        assert!(tls.endpoint("not a url").is_err());
        let _ = ca.key;
    }
}
