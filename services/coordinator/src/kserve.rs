//! The coordinator's KServe v2 client: one window's features to one of the inference nodes.
//!
//! Nodes are a list of endpoints: `http://host:port` for one node, or `dns://host:port` for
//! every address a name resolves to (a Kubernetes headless Service, say), resolved again every
//! [`RESOLVE_EVERY`] so that nodes that come and go are found. `https://host:port` and
//! `dns+https://host:port` are the same over TLS; the certificate of an address resolved from
//! a name is verified for the name, which is what a certificate for a Service carries.
//! `file:///path` names a file of endpoints, one per line (`http://` or `https://`; blank lines
//! and `#` comments skipped), read again as often as names are resolved: what a deployment
//! without DNS discovery rewrites when it adds or removes nodes (the local cluster does).
//! Requests go round-robin over the
//! nodes not ejected; a node that fails with a transport error, Unavailable, ResourceExhausted
//! or the per-try timeout is ejected for [`EJECT_FOR`] and the window is tried on the next
//! node, until its deadline. An error that is the request's own (the model is missing, the
//! input is wrong) is returned at once: another node would answer the same.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gbrain_common::tls::ClientTls;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gbrain_proto::inference::{ModelInferRequest, model_infer_request};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::{Error, Result};

/// How long a failed node is left out.
pub const EJECT_FOR: Duration = Duration::from_secs(2);
/// How often `dns://` endpoints are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

struct Node {
    endpoint: String,
    channel: Channel,
    client: GrpcInferenceServiceClient<Channel>,
    ejected_until: Mutex<Option<Instant>>,
}

impl Node {
    /// A node at `endpoint`, whose certificate names `server_name` when it is an address
    /// resolved from that name.
    fn new(endpoint: &str, server_name: Option<&str>, tls: &ClientTls) -> Result<Arc<Self>> {
        let channel = tls
            .endpoint_for(endpoint, server_name)
            .map_err(|err| Error::invalid("inference", err.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Arc::new(Self {
            endpoint: endpoint.to_string(),
            client: GrpcInferenceServiceClient::new(channel.clone()),
            channel,
            ejected_until: Mutex::new(None),
        }))
    }

    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t <= now)
    }
}

/// What a node answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Inferred {
    pub probabilities: Vec<f32>,
    pub model_version: String,
    pub node: String,
}

/// A `dns://` or `dns+https://` name.
#[derive(Debug, Clone, PartialEq)]
struct Name {
    host: String,
    port: u16,
    tls: bool,
}

impl Name {
    /// The node endpoint of one of the name's addresses, with the name its certificate
    /// carries (over TLS).
    fn node(&self, addr: std::net::SocketAddr) -> (String, Option<String>) {
        if self.tls {
            (format!("https://{addr}"), Some(self.host.clone()))
        } else {
            (format!("http://{addr}"), None)
        }
    }
}

/// The inference nodes.
pub struct Pool {
    /// `http://` and `https://` endpoints, as given.
    fixed: Vec<String>,
    /// `dns://` and `dns+https://` names.
    names: Vec<Name>,
    /// Files of endpoints (`file:///path`).
    files: Vec<std::path::PathBuf>,
    tls: ClientTls,
    nodes: RwLock<Arc<Vec<Arc<Node>>>>,
    resolved_at: Mutex<Instant>,
    resolving: AtomicBool,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "nodes",
                &self
                    .nodes()
                    .iter()
                    .map(|n| n.endpoint.clone())
                    .collect::<Vec<_>>(),
            )
            .field("names", &self.names)
            .finish()
    }
}

fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// `file:///path` as the file's path.
fn file_source(endpoint: &str) -> Result<Option<std::path::PathBuf>> {
    let Some(path) = endpoint.strip_prefix("file://") else {
        return Ok(None);
    };
    if !path.starts_with('/') {
        return Err(Error::invalid(
            "inference",
            format!("{endpoint}: a file:// endpoint names an absolute path (file:///path)"),
        ));
    }
    Ok(Some(path.into()))
}

/// The endpoints a file lists: one per line, `http://` or `https://`; others are skipped
/// with a warning.
fn parse_endpoints_file(path: &std::path::Path, text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            let ok = l.starts_with("http://") || l.starts_with("https://");
            if !ok {
                tracing::warn!(file = %path.display(), line = %l, "not an http:// or https:// endpoint; skipped");
            }
            ok
        })
        .map(str::to_string)
        .collect()
}

/// `dns://host:port` or `dns+https://host:port` as a [`Name`].
fn dns_name(endpoint: &str) -> Result<Option<Name>> {
    let (rest, tls) = if let Some(rest) = endpoint.strip_prefix("dns://") {
        (rest, false)
    } else if let Some(rest) = endpoint.strip_prefix("dns+https://") {
        (rest, true)
    } else {
        return Ok(None);
    };
    let bad = || {
        Error::invalid(
            "inference",
            format!("{endpoint}: a dns:// endpoint is dns://host:port (or dns+https://host:port)"),
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Some(Name {
        host: host.to_string(),
        port,
        tls,
    }))
}

impl Pool {
    /// Connects lazily to each endpoint (`http://host:port`, or `dns://host:port` for every
    /// address the name has, resolved now and again every [`RESOLVE_EVERY`]; `https://` and
    /// `dns+https://` over TLS, with `tls`).
    pub fn new(endpoints: &[String], tls: ClientTls) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "inference",
                "the coordinator needs at least one inference node",
            ));
        }
        let mut fixed = Vec::new();
        let mut names = Vec::new();
        let mut files = Vec::new();
        for e in endpoints {
            if let Some(f) = file_source(e)? {
                files.push(f);
                continue;
            }
            match dns_name(e)? {
                Some(n) => names.push(n),
                None => fixed.push(e.clone()),
            }
        }
        // The first resolution blocks, once, at start; later ones run in the background.
        let mut all: Vec<(String, Option<String>)> =
            fixed.iter().map(|e| (e.clone(), None)).collect();
        for name in &names {
            match std::net::ToSocketAddrs::to_socket_addrs(&(name.host.as_str(), name.port)) {
                Ok(addrs) => all.extend(addrs.map(|a| name.node(a))),
                Err(e) => {
                    tracing::warn!(host = %name.host, error = %e, "inference name not resolved yet")
                }
            }
        }
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(text) => all.extend(
                    parse_endpoints_file(f, &text)
                        .into_iter()
                        .map(|e| (e, None)),
                ),
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "inference endpoints file not read yet")
                }
            }
        }
        all.sort();
        all.dedup_by(|a, b| a.0 == b.0);
        let nodes = all
            .iter()
            .map(|(e, server_name)| Node::new(e, server_name.as_deref(), &tls))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            fixed,
            names,
            files,
            tls,
            nodes: RwLock::new(Arc::new(nodes)),
            resolved_at: Mutex::new(Instant::now()),
            resolving: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        })
    }

    fn nodes(&self) -> Arc<Vec<Arc<Node>>> {
        Arc::clone(&self.nodes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The nodes' endpoints now.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes().iter().map(|n| n.endpoint.clone()).collect()
    }

    /// Resolves the `dns://` names and reads the endpoint files again, keeping the nodes
    /// (their connections and ejections) whose addresses remain. A name that fails to resolve
    /// keeps its nodes; a file that cannot be read keeps every node.
    pub async fn resolve(&self) {
        if self.names.is_empty() && self.files.is_empty() {
            return;
        }
        let current = self.nodes();
        let mut wanted: Vec<(String, Option<String>)> =
            self.fixed.iter().map(|e| (e.clone(), None)).collect();
        for name in &self.names {
            match tokio::net::lookup_host((name.host.as_str(), name.port)).await {
                Ok(addrs) => wanted.extend(addrs.map(|a| name.node(a))),
                Err(e) => {
                    tracing::warn!(host = %name.host, error = %e, "inference name not resolved; keeping its nodes");
                    let prefix_port = format!(":{}", name.port);
                    wanted.extend(
                        current
                            .iter()
                            .filter(|n| {
                                !self.fixed.contains(&n.endpoint)
                                    && n.endpoint.ends_with(&prefix_port)
                            })
                            .map(|n| (n.endpoint.clone(), None)),
                    );
                }
            }
        }
        for f in &self.files {
            match tokio::fs::read_to_string(f).await {
                Ok(text) => wanted.extend(
                    parse_endpoints_file(f, &text)
                        .into_iter()
                        .map(|e| (e, None)),
                ),
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "inference endpoints file not read; keeping the nodes");
                    wanted.extend(current.iter().map(|n| (n.endpoint.clone(), None)));
                }
            }
        }
        wanted.sort();
        wanted.dedup_by(|a, b| a.0 == b.0);
        let nodes: Vec<Arc<Node>> = wanted
            .iter()
            .filter_map(|(e, server_name)| {
                current
                    .iter()
                    .find(|n| &n.endpoint == e)
                    .cloned()
                    .or_else(|| Node::new(e, server_name.as_deref(), &self.tls).ok())
            })
            .collect();
        let wanted: Vec<String> = wanted.into_iter().map(|(e, _)| e).collect();
        let before: Vec<&str> = current.iter().map(|n| n.endpoint.as_str()).collect();
        if before != wanted.iter().map(String::as_str).collect::<Vec<_>>() {
            tracing::info!(nodes = ?wanted, "inference nodes changed");
        }
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(nodes);
        *self.resolved_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Starts a resolution in the background when the last is older than [`RESOLVE_EVERY`].
    fn maybe_resolve(self: &Arc<Self>) {
        if self.names.is_empty() && self.files.is_empty() {
            return;
        }
        let stale = self
            .resolved_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= RESOLVE_EVERY;
        if stale && !self.resolving.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                me.resolve().await;
                me.resolving.store(false, Ordering::Release);
            });
        }
    }

    /// A channel to each node, those not ejected first (for the model repository).
    pub fn channels(&self) -> Vec<Channel> {
        let now = Instant::now();
        let mut nodes: Vec<Arc<Node>> = self.nodes().iter().cloned().collect();
        nodes.sort_by_key(|n| !n.healthy(now));
        nodes.into_iter().map(|n| n.channel.clone()).collect()
    }

    /// The node to try next: round-robin over those not ejected (all, when all are).
    fn pick(&self, nodes: &[Arc<Node>], tried: &[usize]) -> Option<usize> {
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(i) && nodes[*i].healthy(now))
            .or_else(|| (0..n).map(|k| (start + k) % n).find(|i| !tried.contains(i)))
    }

    fn eject(node: &Node) {
        *node.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + EJECT_FOR);
    }

    /// Decodes one feature vector with `model`, by `deadline`. `authorization` is the session
    /// owner's, so the nodes serve the session's tenant and no other.
    pub async fn infer(
        self: &Arc<Self>,
        model: &str,
        version: &str,
        features: &[f32],
        authorization: &MetadataValue<tonic::metadata::Ascii>,
        deadline: Instant,
    ) -> Result<Inferred> {
        let mut raw = Vec::with_capacity(features.len() * 4);
        for v in features {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        let raw = Bytes::from(raw);
        self.maybe_resolve();
        let nodes = self.nodes();
        let mut tried = Vec::new();
        let mut last = String::from("no inference node was tried");
        while let Some(i) = self.pick(&nodes, &tried) {
            tried.push(i);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut request = tonic::Request::new(ModelInferRequest {
                model_name: model.to_string(),
                model_version: version.to_string(),
                inputs: vec![model_infer_request::InferInputTensor {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, features.len() as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![raw.clone()],
                ..Default::default()
            });
            request.set_timeout(left);
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            let node = &nodes[i];
            let mut client = node.client.clone();
            match tokio::time::timeout(left, client.model_infer(request)).await {
                Ok(Ok(response)) => {
                    let r = response.into_inner();
                    let bytes = r.raw_output_contents.first().ok_or_else(|| {
                        Error::Inference(format!("{}: the answer has no output", node.endpoint))
                    })?;
                    let probabilities = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    return Ok(Inferred {
                        probabilities,
                        model_version: r.model_version,
                        node: node.endpoint.clone(),
                    });
                }
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(Error::Inference(format!(
                        "{}: {}: {}",
                        node.endpoint,
                        status.code(),
                        status.message()
                    )));
                }
                Ok(Err(status)) => {
                    Self::eject(node);
                    last = format!("{}: {}: {}", node.endpoint, status.code(), status.message());
                }
                Err(_) => {
                    Self::eject(node);
                    last = format!("{}: no answer before the deadline", node.endpoint);
                }
            }
        }
        Err(Error::Inference(format!(
            "no inference node answered by the deadline ({} tried; last: {last})",
            tried.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(Pool::new(&[], ClientTls::default()).is_err());
        for bad in [
            "dns://nohost",
            "dns://:80",
            "dns://h:port",
            "dns+https://nohost",
            "not a url",
        ] {
            assert!(
                Pool::new(&[bad.to_string()], ClientTls::default()).is_err(),
                "{bad}"
            );
        }
    }

    /// A name resolves to a node per address, and again later: nodes that stay keep their
    /// state, and fixed endpoints stay as given.
    #[tokio::test]
    async fn dns_names_resolve_to_a_node_per_address() {
        let pool = Arc::new(
            Pool::new(
                &[
                    "dns://localhost:7001".to_string(),
                    "http://10.0.0.9:8001".to_string(),
                ],
                ClientTls::default(),
            )
            .unwrap(),
        );
        let endpoints = pool.endpoints();
        assert!(endpoints.contains(&"http://10.0.0.9:8001".to_string()));
        assert!(
            endpoints.contains(&"http://127.0.0.1:7001".to_string()),
            "{endpoints:?}"
        );
        let before = pool.nodes();
        Pool::eject(&before[0]);
        pool.resolve().await;
        let after = pool.nodes();
        assert_eq!(pool.endpoints(), endpoints);
        assert!(
            Arc::ptr_eq(&before[0], &after[0]),
            "a node that stays is kept"
        );
        assert!(!after[0].healthy(Instant::now()), "with its ejection");
    }

    /// A file of endpoints gives the nodes, and again after it changes: nodes that stay keep
    /// their state; a file that goes missing keeps them all.
    #[tokio::test]
    async fn endpoint_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes");
        std::fs::write(&path, "# the nodes\nhttp://127.0.0.1:7101\n\n").unwrap();
        let source = format!("file://{}", path.display());
        let pool = Pool::new(&[source], ClientTls::default()).unwrap();
        assert_eq!(pool.endpoints(), ["http://127.0.0.1:7101"]);
        let first = pool.nodes();
        std::fs::write(
            &path,
            "http://127.0.0.1:7101\nhttp://127.0.0.1:7102\nnot-an-endpoint\nhttps://127.0.0.1:7103\n",
        )
        .unwrap();
        pool.resolve().await;
        assert_eq!(
            pool.endpoints(),
            [
                "http://127.0.0.1:7101",
                "http://127.0.0.1:7102",
                "https://127.0.0.1:7103"
            ]
        );
        assert!(
            Arc::ptr_eq(&first[0], &pool.nodes()[0]),
            "a node that stays is kept"
        );
        std::fs::remove_file(&path).unwrap();
        pool.resolve().await;
        assert_eq!(pool.endpoints().len(), 3, "a missing file keeps the nodes");
        assert!(
            Pool::new(&["file://relative/path".to_string()], ClientTls::default())
                .unwrap_err()
                .to_string()
                .contains("absolute path")
        );
    }

    /// A `dns+https://` name resolves to `https://` nodes, verified for the name; the
    /// nodes that a failed lookup keeps stay as they were.
    #[tokio::test]
    async fn dns_https_names_resolve_to_tls_nodes() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap().pem();
        let tls = ClientTls::from_pem(Some(ca.as_bytes()), None).unwrap();
        let pool = Pool::new(
            &[
                "dns+https://localhost:7002".to_string(),
                "https://10.0.0.9:8002".to_string(),
            ],
            tls,
        )
        .unwrap();
        let endpoints = pool.endpoints();
        assert!(
            endpoints.contains(&"https://127.0.0.1:7002".to_string()),
            "{endpoints:?}"
        );
        assert!(endpoints.contains(&"https://10.0.0.9:8002".to_string()));
        assert!(endpoints.iter().all(|e| e.starts_with("https://")));
        assert_eq!(
            dns_name("dns+https://gb-inference-pods:50051").unwrap(),
            Some(Name {
                host: "gb-inference-pods".into(),
                port: 50051,
                tls: true
            })
        );
        assert_eq!(
            Name {
                host: "gb-inference-pods".into(),
                port: 50051,
                tls: true
            }
            .node("10.1.2.3:50051".parse().unwrap()),
            (
                "https://10.1.2.3:50051".to_string(),
                Some("gb-inference-pods".to_string())
            )
        );
    }
}
