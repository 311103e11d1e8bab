//! The coordinator's KServe v2 client: one window's features to one of the inference nodes.
//!
//! Nodes are a static list of endpoints. Requests go round-robin over the nodes not ejected;
//! a node that fails with a transport error, Unavailable, ResourceExhausted or the per-try
//! timeout is ejected for [`EJECT_FOR`] and the window is tried on the next node, until its
//! deadline. An error that is the request's own (the model is missing, the input is wrong) is
//! returned at once: another node would answer the same.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gbrain_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gbrain_proto::inference::{ModelInferRequest, model_infer_request};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// How long a failed node is left out.
pub const EJECT_FOR: Duration = Duration::from_secs(2);

struct Node {
    endpoint: String,
    channel: Channel,
    client: GrpcInferenceServiceClient<Channel>,
    ejected_until: Mutex<Option<Instant>>,
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
    nodes: Vec<Node>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.endpoint).collect::<Vec<_>>(),
            )
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

impl Pool {
    /// Connects lazily to each endpoint (`http://host:port`).
    pub fn new(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "inference",
                "the coordinator needs at least one inference node",
            ));
        }
        let nodes = endpoints
            .iter()
            .map(|e| {
                let channel = Endpoint::from_shared(e.clone())
                    .map_err(|err| Error::invalid("inference", format!("{e}: {err}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(Node {
                    endpoint: e.clone(),
                    client: GrpcInferenceServiceClient::new(channel.clone()),
                    channel,
                    ejected_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            nodes,
            next: AtomicUsize::new(0),
        })
    }

    /// A channel to each node, those not ejected first (for the model repository).
    pub fn channels(&self) -> Vec<Channel> {
        let now = Instant::now();
        let mut nodes: Vec<&Node> = self.nodes.iter().collect();
        nodes.sort_by_key(|n| {
            n.ejected_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t > now)
        });
        nodes.into_iter().map(|n| n.channel.clone()).collect()
    }

    /// The node to try next: round-robin over those not ejected (all, when all are).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let healthy = |i: usize| {
            self.nodes[i]
                .ejected_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|t| t <= now)
        };
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !tried.contains(i) && healthy(*i))
            .or_else(|| (0..n).map(|k| (start + k) % n).find(|i| !tried.contains(i)))
    }

    fn eject(&self, i: usize) {
        *self.nodes[i]
            .ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + EJECT_FOR);
    }

    /// Decodes one feature vector with `model`, by `deadline`. `authorization` is the session
    /// owner's, so the nodes serve the session's tenant and no other.
    pub async fn infer(
        &self,
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
        let mut tried = Vec::new();
        let mut last = String::from("no inference node was tried");
        while let Some(i) = self.pick(&tried) {
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
            let node = &self.nodes[i];
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
                    self.eject(i);
                    last = format!("{}: {}: {}", node.endpoint, status.code(), status.message());
                }
                Err(_) => {
                    self.eject(i);
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
