//! Authentication: bearer tokens mapped to a tenant and roles.
//!
//! Tokens come from an auth file (TOML, see the README) and may be stored as SHA-256 hashes, so
//! the file need not hold a usable secret. One tower layer, [`AuthLayer`], sits in front of every
//! gRPC service: it lets `grpc.health.v1.Health` through and rejects everything else that lacks a
//! known token. On success it puts a [`Principal`] into the request's extensions, where handlers
//! find it with [`Principal::from_request`] and check roles with [`Principal::require`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::tenant::{TenantId, TenantPolicy};
use crate::{Error, Result};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Uploads recordings and events.
    Submitter,
    /// Reads and exports data, runs queries.
    Analyst,
    /// Manages models and runtime settings.
    Operator,
    /// Everything, including tenant settings.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Submitter, Role::Analyst, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitter => "submitter",
            Self::Analyst => "analyst",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller: a tenant, its roles and the token's name (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub roles: Vec<Role>,
    /// A name for audit logs: the auth file's `name`, or a short hash of the token.
    pub token_name: String,
}

impl Principal {
    /// The principal the auth layer attached to this request.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::unauthenticated("no authenticated principal on the request"))
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// PermissionDenied unless the principal has `role` (admin has every role).
    pub fn require(&self, role: Role) -> Result<(), Status> {
        if self.has(role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this needs the {} role; the token has {}",
                role.as_str(),
                if self.roles.is_empty() {
                    "none".to_string()
                } else {
                    self.roles
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )))
        }
    }

    /// PermissionDenied unless the principal has at least one of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), Status> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this needs one of the roles {}",
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// The auth file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: Option<String>,
    /// The token in clear text.
    token: Option<String>,
    /// Lowercase hex SHA-256 of the token.
    sha256: Option<String>,
    tenant: String,
    roles: Vec<Role>,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// Hex SHA-256 of a token, as the auth file stores it (`gbrain token hash` prints it).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token table and the tenants' policies.
#[derive(Default)]
pub struct Authenticator {
    by_hash: HashMap<[u8; 32], Principal>,
    tenants: BTreeMap<TenantId, TenantPolicy>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.by_hash.len())
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl Authenticator {
    /// Loads an auth file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::AuthFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(reason) => Error::AuthFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let file: AuthFile = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let mut auth = Self::default();
        for (name, policy) in file.tenants {
            auth.tenants.insert(TenantId::new(name)?, policy);
        }
        for (i, t) in file.tokens.into_iter().enumerate() {
            let hash = match (&t.token, &t.sha256) {
                (Some(tok), None) => Sha256::digest(tok.as_bytes()).into(),
                (None, Some(h)) => {
                    let bytes = hex::decode(h.trim()).ok().filter(|b| b.len() == 32);
                    let bytes = bytes.ok_or_else(|| {
                        Error::Config(format!(
                            "tokens[{i}].sha256 must be 64 hex digits (see `gbrain token hash`)"
                        ))
                    })?;
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&bytes);
                    a
                }
                _ => {
                    return Err(Error::Config(format!(
                        "tokens[{i}] needs exactly one of `token` and `sha256`"
                    )));
                }
            };
            if t.roles.is_empty() {
                return Err(Error::Config(format!("tokens[{i}] has no roles")));
            }
            let tenant = TenantId::new(t.tenant)?;
            let token_name = t.name.unwrap_or_else(|| hex::encode(&hash[..4]));
            if auth
                .by_hash
                .insert(
                    hash,
                    Principal {
                        tenant,
                        roles: t.roles,
                        token_name,
                    },
                )
                .is_some()
            {
                return Err(Error::Config(format!(
                    "tokens[{i}] repeats an earlier token"
                )));
            }
        }
        Ok(auth)
    }

    /// A single token for `tenant` with every role: the embedded cluster's development token.
    pub fn single(token: &str, tenant: TenantId) -> Self {
        let mut auth = Self::default();
        auth.by_hash.insert(
            Sha256::digest(token.as_bytes()).into(),
            Principal {
                tenant,
                roles: Role::ALL.to_vec(),
                token_name: "dev-token".into(),
            },
        );
        auth
    }

    /// The principal a token stands for.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// The tenant's policy; the defaults when the auth file says nothing about it.
    pub fn policy(&self, tenant: &TenantId) -> TenantPolicy {
        self.tenants.get(tenant).cloned().unwrap_or_default()
    }

    /// Checks the `authorization` metadata of a request.
    pub fn check_header(&self, value: Option<&http::HeaderValue>) -> Result<Principal, Status> {
        let value = value.ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send the metadata 'authorization: Bearer <token>'",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be 'Bearer <token>'")
            })?;
        self.authenticate(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
    }
}

/// Creates a random token: 32 bytes from the OS, hex, with a `gb_` prefix.
pub fn generate_token() -> String {
    use rand::Rng;
    // ThreadRng is a CSPRNG seeded from the operating system.
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!("gb_{}", hex::encode(bytes))
}

/// Paths that need no token: the gRPC health service, so that probes and load balancers work.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// The tower layer that authenticates every gRPC request.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready must serve this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_public(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        match self
            .auth
            .check_header(req.headers().get(http::header::AUTHORIZATION))
        {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::info!(path = %req.uri().path(), reason = %status.message(), "request not authenticated");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        name = "ward-3"
        token = "secret-a"
        tenant = "hospital-a"
        roles = ["submitter"]

        [[tokens]]
        sha256 = "11507a0e2f5e69d5dfa40a62a1bd7b6ee57e6bcd85c67c9b8431b36fff21c437"
        tenant = "lab-b"
        roles = ["analyst", "operator"]

        [tenants.hospital-a.deid]
        keep_age = false
        dates = "keep"
    "#;

    #[test]
    fn loads_clear_and_hashed_tokens() {
        let auth = Authenticator::from_toml(FILE).unwrap();
        let a = auth.authenticate("secret-a").unwrap();
        assert_eq!(a.tenant.as_str(), "hospital-a");
        assert_eq!(a.token_name, "ward-3");
        assert!(a.require(Role::Submitter).is_ok());
        assert_eq!(
            a.require(Role::Analyst).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // sha256("new") is the hash above.
        assert_eq!(
            hash_token("new"),
            "11507a0e2f5e69d5dfa40a62a1bd7b6ee57e6bcd85c67c9b8431b36fff21c437"
        );
        let b = auth.authenticate("new").unwrap();
        assert_eq!(b.tenant.as_str(), "lab-b");
        assert!(auth.authenticate("secret-b").is_none());
        let policy = auth.policy(&TenantId::new("hospital-a").unwrap());
        assert!(!policy.deid.keep_age);
        assert!(policy.deid.keep_sex);
        assert_eq!(policy.deid.dates, crate::tenant::DatePolicy::Keep);
        assert_eq!(
            auth.policy(&TenantId::new("other").unwrap()),
            TenantPolicy::default()
        );
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "[[tokens]]\ntenant = \"a\"\nroles = [\"admin\"]\n",
            "[[tokens]]\ntoken = \"x\"\nsha256 = \"00\"\ntenant = \"a\"\nroles = [\"admin\"]\n",
            "[[tokens]]\ntoken = \"x\"\ntenant = \"A B\"\nroles = [\"admin\"]\n",
            "[[tokens]]\ntoken = \"x\"\ntenant = \"a\"\nroles = [\"king\"]\n",
            "[[tokens]]\ntoken = \"x\"\ntenant = \"a\"\nroles = []\n",
            "[[tokens]]\nsha256 = \"zz\"\ntenant = \"a\"\nroles = [\"admin\"]\n",
            "[whatever]\n",
        ] {
            assert!(Authenticator::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_the_authorization_header() {
        let auth = Authenticator::single("tok", TenantId::new("demo").unwrap());
        let ok = http::HeaderValue::from_static("Bearer tok");
        assert_eq!(
            auth.check_header(Some(&ok)).unwrap().tenant.as_str(),
            "demo"
        );
        for bad in ["Bearer nope", "tok", "Basic dG9r"] {
            let v = http::HeaderValue::from_str(bad).unwrap();
            assert_eq!(
                auth.check_header(Some(&v)).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            auth.check_header(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn generated_tokens_are_distinct() {
        let a = generate_token();
        assert!(a.starts_with("gb_") && a.len() == 67);
        assert_ne!(a, generate_token());
    }
}
