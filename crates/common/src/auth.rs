//! Authentication: bearer tokens mapped to a tenant and roles.
//!
//! Tokens come from an auth file (TOML, see the README) and may be stored as SHA-256 hashes, so
//! the file need not hold a usable secret. One tower layer, [`AuthLayer`], sits in front of every
//! gRPC service: it lets `grpc.health.v1.Health` through and rejects everything else that lacks a
//! known token. On success it puts a [`Principal`] into the request's extensions, where handlers
//! find it with [`Principal::from_request`] and check roles with [`Principal::require`].
//!
//! Tokens rotate without a restart: a service process watches its auth file
//! ([`Authenticator::watch`]) and, when the file changes, loads it and swaps the token table at
//! once, so added tokens work and removed ones are refused from then on. A file that does not
//! load (a half-written edit, a typo) changes nothing: the tokens loaded before stay, and the
//! process says why in its log. Kubernetes updates a mounted Secret by swapping a symlink, which
//! the watch sees too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// How often a service process looks at its auth file for rotated tokens.
pub const AUTH_FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The token table and the tenants' policies, as one auth file gives them.
#[derive(Default)]
struct Tables {
    by_hash: HashMap<[u8; 32], Principal>,
    tenants: BTreeMap<TenantId, TenantPolicy>,
    /// SHA-256 of the file text they were loaded from.
    digest: Option<[u8; 32]>,
}

/// The token table and the tenants' policies; reloaded from its file when that changes.
#[derive(Default)]
pub struct Authenticator {
    tables: RwLock<Arc<Tables>>,
    /// The auth file it was loaded from, if any.
    file: Option<PathBuf>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.tables();
        f.debug_struct("Authenticator")
            .field("tokens", &t.by_hash.len())
            .field("tenants", &t.tenants.len())
            .field("file", &self.file)
            .finish()
    }
}

fn read_auth_file(path: &Path) -> Result<Tables> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::AuthFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut tables = Tables::from_toml(&text).map_err(|e| match e {
        Error::Config(reason) => Error::AuthFile {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })?;
    tables.digest = Some(Sha256::digest(text.as_bytes()).into());
    Ok(tables)
}

impl Authenticator {
    /// Loads an auth file; [`Authenticator::reload`] and [`Authenticator::watch`] read it again.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tables = read_auth_file(path)?;
        Ok(Self {
            tables: RwLock::new(Arc::new(tables)),
            file: Some(path.to_path_buf()),
        })
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        Ok(Self {
            tables: RwLock::new(Arc::new(Tables::from_toml(text)?)),
            file: None,
        })
    }

    fn tables(&self) -> Arc<Tables> {
        Arc::clone(&self.tables.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the auth file again and swaps in its tokens and policies, returning how many
    /// tokens it holds. When the file does not load, nothing changes and the error says why.
    pub fn reload(&self) -> Result<usize> {
        let path = self
            .file
            .as_deref()
            .ok_or_else(|| Error::Config("these tokens were not loaded from a file".into()))?;
        Ok(self.swap(read_auth_file(path)?))
    }

    fn swap(&self, tables: Tables) -> usize {
        let n = tables.by_hash.len();
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tables);
        n
    }

    /// Checks the auth file every `every` on a thread of its own, and reloads it when its
    /// content differs from what was loaded (logging the number of tokens, never the tokens),
    /// for as long as this authenticator lives. Does nothing for tokens not loaded from a file.
    pub fn watch(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let Some(path) = self.file.clone() else {
            return Ok(());
        };
        let weak = Arc::downgrade(self);
        // A file that failed to load is told once, not at every check.
        let mut failed = None;
        std::thread::Builder::new()
            .name("gbrain-auth-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(auth) = weak.upgrade() else { return };
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    let digest = Some(<[u8; 32]>::from(Sha256::digest(&bytes)));
                    if digest == auth.tables().digest || digest == failed {
                        continue;
                    }
                    match read_auth_file(&path) {
                        Ok(tables) => {
                            failed = None;
                            let tokens = auth.swap(tables);
                            tracing::info!(path = %path.display(), tokens, "auth file reloaded");
                        }
                        Err(e) => {
                            failed = digest;
                            tracing::warn!(
                                error = %e,
                                "auth file changed but does not load; the tokens loaded before stay"
                            );
                        }
                    }
                }
            })?;
        Ok(())
    }
}

impl Tables {
    fn from_toml(text: &str) -> Result<Self> {
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
}

impl Authenticator {
    /// A single token for `tenant` with every role: the embedded cluster's development token.
    pub fn single(token: &str, tenant: TenantId) -> Self {
        let mut tables = Tables::default();
        tables.by_hash.insert(
            Sha256::digest(token.as_bytes()).into(),
            Principal {
                tenant,
                roles: Role::ALL.to_vec(),
                token_name: "dev-token".into(),
            },
        );
        Self {
            tables: RwLock::new(Arc::new(tables)),
            file: None,
        }
    }

    /// The principal a token stands for.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tables().by_hash.get(&hash).cloned()
    }

    /// The tenant's policy; the defaults when the auth file says nothing about it.
    pub fn policy(&self, tenant: &TenantId) -> TenantPolicy {
        self.tables()
            .tenants
            .get(tenant)
            .cloned()
            .unwrap_or_default()
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
    fn a_changed_file_rotates_tokens_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        let file = |token: &str| {
            format!("[[tokens]]\ntoken = \"{token}\"\ntenant = \"a\"\nroles = [\"analyst\"]\n")
        };
        std::fs::write(&path, file("old")).unwrap();
        let auth = Arc::new(Authenticator::from_file(&path).unwrap());
        assert!(auth.authenticate("old").is_some());

        std::fs::write(&path, file("new")).unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.authenticate("new").is_some());
        assert!(auth.authenticate("old").is_none());

        std::fs::write(&path, "[[tokens]]\ntoken = \"half").unwrap();
        assert!(matches!(auth.reload(), Err(Error::AuthFile { .. })));
        assert!(
            auth.authenticate("new").is_some(),
            "the tokens loaded before stay"
        );

        // The watch thread picks up a change by itself.
        std::fs::write(&path, file("newer")).unwrap();
        auth.watch(Duration::from_millis(20)).unwrap();
        let started = std::time::Instant::now();
        while auth.authenticate("newer").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the watch never reloaded the file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(auth.authenticate("new").is_none());
        assert!(
            Authenticator::single("x", TenantId::new("a").unwrap())
                .reload()
                .is_err()
        );
    }

    #[test]
    fn generated_tokens_are_distinct() {
        let a = generate_token();
        assert!(a.starts_with("gb_") && a.len() == 67);
        assert_ne!(a, generate_token());
    }
}
