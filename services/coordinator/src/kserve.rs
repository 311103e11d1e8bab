//! The coordinator's KServe v2 client: one window's features to one of the inference nodes.
//!
//! Nodes are a list of endpoints: `http://host:port` for one node, or `dns://host:port` for
//! every address a name resolves to (a Kubernetes headless Service, say), resolved again every
//! [`RESOLVE_EVERY`] so that nodes that come and go are found. Requests go round-robin over the
//! nodes not ejected; a node that fails with a transport error, Unavailable, ResourceExhausted
//! or the per-try timeout is ejected for [`EJECT_FOR`] and the window is tried on the next
//! node, until its deadline. An error that is the request's own (the model is missing, the
//! input is wrong) is returned at once: another node would answer the same.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gbrain_proto::inference::{ModelInferRequest, model_infer_request};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

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
    fn new(endpoint: &str) -> Result<Arc<Self>> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|err| Error::invalid("inference", format!("{endpoint}: {err}")))?
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

/// The inference nodes.
pub struct Pool {
    /// `http://` endpoints, as given.
    fixed: Vec<String>,
    /// `dns://` names: (host, port).
    names: Vec<(String, u16)>,
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

/// `dns://host:port` as (host, port).
fn dns_name(endpoint: &str) -> Result<Option<(String, u16)>> {
    let Some(rest) = endpoint.strip_prefix("dns://") else {
        return Ok(None);
    };
    let bad = || {
        Error::invalid(
            "inference",
            format!("{endpoint}: a dns:// endpoint is dns://host:port"),
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Some((host.to_string(), port)))
}

fn endpoint_of(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

impl Pool {
    /// Connects lazily to each endpoint (`http://host:port`, or `dns://host:port` for every
    /// address the name has, resolved now and again every [`RESOLVE_EVERY`]).
    pub fn new(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "inference",
                "the coordinator needs at least one inference node",
            ));
        }
        let mut fixed = Vec::new();
        let mut names = Vec::new();
        for e in endpoints {
            match dns_name(e)? {
                Some(n) => names.push(n),
                None => fixed.push(e.clone()),
            }
        }
        // The first resolution blocks, once, at start; later ones run in the background.
        let mut all = fixed.clone();
        for (host, port) in &names {
            match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port)) {
                Ok(addrs) => all.extend(addrs.map(endpoint_of)),
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "inference name not resolved yet")
                }
            }
        }
        all.sort();
        all.dedup();
        let nodes = all
            .iter()
            .map(|e| Node::new(e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            fixed,
            names,
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

    /// Resolves the `dns://` names again, keeping the nodes (their connections and ejections)
    /// whose addresses remain. A name that fails to resolve keeps its nodes.
    pub async fn resolve(&self) {
        if self.names.is_empty() {
            return;
        }
        let current = self.nodes();
        let mut wanted: Vec<String> = self.fixed.clone();
        for (host, port) in &self.names {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => wanted.extend(addrs.map(endpoint_of)),
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "inference name not resolved; keeping its nodes");
                    let prefix_port = format!(":{port}");
                    wanted.extend(
                        current
                            .iter()
                            .filter(|n| {
                                !self.fixed.contains(&n.endpoint)
                                    && n.endpoint.ends_with(&prefix_port)
                            })
                            .map(|n| n.endpoint.clone()),
                    );
                }
            }
        }
        wanted.sort();
        wanted.dedup();
        let nodes: Vec<Arc<Node>> = wanted
            .iter()
            .filter_map(|e| {
                current
                    .iter()
                    .find(|n| &n.endpoint == e)
                    .cloned()
                    .or_else(|| Node::new(e).ok())
            })
            .collect();
        let before: Vec<&str> = current.iter().map(|n| n.endpoint.as_str()).collect();
        if before != wanted.iter().map(String::as_str).collect::<Vec<_>>() {
            tracing::info!(nodes = ?wanted, "inference nodes changed");
        }
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(nodes);
        *self.resolved_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Starts a resolution in the background when the last is older than [`RESOLVE_EVERY`].
    fn maybe_resolve(self: &Arc<Self>) {
        if self.names.is_empty() {
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
        assert!(Pool::new(&[]).is_err());
        for bad in ["dns://nohost", "dns://:80", "dns://h:port"] {
            assert!(Pool::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    /// A name resolves to a node per address, and again later: nodes that stay keep their
    /// state, and fixed endpoints stay as given.
    #[tokio::test]
    async fn dns_names_resolve_to_a_node_per_address() {
        let pool = Arc::new(
            Pool::new(&[
                "dns://localhost:7001".to_string(),
                "http://10.0.0.9:8001".to_string(),
            ])
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
}
