//! `inference.GRPCInferenceService`: KServe v2 over gRPC.

use std::collections::HashMap;
use std::sync::Arc;

use gbrain_common::auth::{Principal, Role};
use gbrain_proto::inference as pb;
use gbrain_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use pb::infer_parameter::ParameterChoice;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::model::{ModelVersion, Stats, TensorSpec};
use crate::models::Models;
use crate::tensor::Tensor;

/// The gRPC name of the service.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// ONNX Runtime models, as Triton names the platform.
const PLATFORM: &str = "onnxruntime_onnx";

pub struct InferenceService {
    models: Arc<Models>,
    /// Cancelled when the node starts draining: it is then no longer ready.
    draining: CancellationToken,
}

impl std::fmt::Debug for InferenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InferenceService")
    }
}

fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    Principal::from_request(request).cloned()
}

/// Callers that may run and inspect models.
const USE: [Role; 2] = [Role::Analyst, Role::Operator];

fn logged(p: &Principal, e: Error) -> Status {
    let status = Status::from(&e);
    match status.code() {
        tonic::Code::Internal | tonic::Code::Unavailable => {
            tracing::warn!(tenant = %p.tenant.as_str(), error = %e, "inference request failed")
        }
        _ => tracing::debug!(tenant = %p.tenant.as_str(), error = %e, "inference request refused"),
    }
    status
}

fn bool_param(params: &HashMap<String, pb::InferParameter>, name: &str) -> Option<bool> {
    match params.get(name)?.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(b) => Some(*b),
        _ => None,
    }
}

fn metadata(s: &TensorSpec) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: s.name.clone(),
        datatype: s.dtype.name().to_string(),
        shape: s.shape.clone(),
    }
}

fn duration(d: (u64, u64)) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.0,
        ns: d.1,
    })
}

fn statistics(m: &ModelVersion, s: Stats) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name: m.name.clone(),
        version: m.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration((0, 0)),
            cache_miss: duration((0, 0)),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(
                |(size, (n, input, infer, output))| pb::InferBatchStatistics {
                    batch_size: *size,
                    compute_input: duration((*n, *input)),
                    compute_infer: duration((*n, *infer)),
                    compute_output: duration((*n, *output)),
                },
            )
            .collect(),
        memory_usage: Vec::new(),
        response_stats: HashMap::new(),
    }
}

impl InferenceService {
    pub fn new(models: Arc<Models>, draining: CancellationToken) -> Self {
        Self { models, draining }
    }

    pub fn into_server(self) -> GrpcInferenceServiceServer<Self> {
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(gbrain_common::server::MAX_MESSAGE_BYTES)
    }

    async fn infer(
        &self,
        p: &Principal,
        req: pb::ModelInferRequest,
    ) -> Result<pb::ModelInferResponse, Error> {
        let model = self
            .models
            .get(p.tenant.as_str(), &req.model_name, &req.model_version)?;
        let raw_in = !req.raw_input_contents.is_empty();
        // Which outputs, and whether they go back raw.
        let mut wanted: Vec<usize> = Vec::new();
        let mut raw_out = bool_param(&req.parameters, "binary_data_output").unwrap_or(raw_in);
        for o in &req.outputs {
            let at = model
                .outputs
                .iter()
                .position(|s| s.name == o.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = model.outputs.iter().map(|s| s.name.as_str()).collect();
                    Error::invalid(
                        format!("outputs[{}]", o.name),
                        format!("the model has no such output (it has {})", names.join(", ")),
                    )
                })?;
            if let Some(b) = bool_param(&o.parameters, "binary_data") {
                raw_out = b;
            }
            wanted.push(at);
        }
        if wanted.is_empty() {
            wanted = (0..model.outputs.len()).collect();
        }
        let typed_in: usize = req
            .inputs
            .iter()
            .filter(|i| i.contents.is_some())
            .map(|i| elements(&i.shape))
            .fold(0, usize::saturating_add);
        let (inputs, raw) = (req.inputs, req.raw_input_contents);
        let given = offload(typed_in, move || tensors(inputs, raw)).await?;
        let inputs = model.check(given)?;
        let outputs = model.infer(inputs).await?;
        let chosen: Vec<Tensor> = wanted.iter().map(|&i| outputs[i].clone()).collect();
        // FP16 and BF16 have no typed contents.
        let raw_out = raw_out || chosen.iter().any(|t| !t.dtype.has_typed_contents());
        let typed_out = if raw_out {
            0
        } else {
            chosen
                .iter()
                .map(|t| elements(&t.shape))
                .fold(0, usize::saturating_add)
        };
        let response = pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version.to_string(),
            id: req.id,
            ..Default::default()
        };
        offload(typed_out, move || Ok(respond(response, chosen, raw_out))).await
    }
}

/// Converting typed contents touches every element: above this many elements it runs on a
/// blocking thread rather than on the IO runtime.
const INLINE_ELEMENTS: usize = 1 << 16;

fn elements(shape: &[i64]) -> usize {
    shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .fold(1, usize::saturating_mul)
}

/// Runs `work` here when it touches few elements, else on a blocking thread.
async fn offload<T: Send + 'static>(
    elements: usize,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    if elements < INLINE_ELEMENTS {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("conversion task: {e}")))?
}

/// The request's tensors, from raw bytes or typed contents.
fn tensors(
    inputs: Vec<pb::model_infer_request::InferInputTensor>,
    raw: Vec<bytes::Bytes>,
) -> Result<Vec<Tensor>, Error> {
    let raw_in = !raw.is_empty();
    if raw_in && raw.len() != inputs.len() {
        return Err(Error::invalid(
            "raw_input_contents",
            format!(
                "{} entries for {} inputs: give one per input, in order",
                raw.len(),
                inputs.len()
            ),
        ));
    }
    let mut raw = raw.into_iter();
    let mut given = Vec::with_capacity(inputs.len());
    for input in inputs {
        let t = match raw.next() {
            Some(bytes) => {
                if input.contents.is_some() {
                    return Err(Error::invalid(
                        format!("inputs[{}].contents", input.name),
                        "set together with raw_input_contents: use one or the other",
                    ));
                }
                Tensor::from_raw(&input.name, &input.datatype, &input.shape, bytes)?
            }
            None => {
                let contents = input.contents.unwrap_or_default();
                Tensor::from_contents(&input.name, &input.datatype, &input.shape, &contents)?
            }
        };
        given.push(t);
    }
    Ok(given)
}

/// Fills the response with the chosen outputs, raw or typed.
fn respond(
    mut response: pb::ModelInferResponse,
    chosen: Vec<Tensor>,
    raw_out: bool,
) -> pb::ModelInferResponse {
    for t in chosen {
        let contents = if raw_out {
            response.raw_output_contents.push(t.data.clone());
            None
        } else {
            t.to_contents()
        };
        response
            .outputs
            .push(pb::model_infer_response::InferOutputTensor {
                name: t.name,
                datatype: t.dtype.name().to_string(),
                shape: t.shape,
                parameters: HashMap::new(),
                contents,
            });
    }
    response
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.models.is_ready() && !self.draining.is_cancelled();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let p = principal(&request)?;
        p.require_any(&USE)?;
        let r = request.into_inner();
        let ready = match self.models.get(p.tenant.as_str(), &r.name, &r.version) {
            Ok(_) => !self.draining.is_cancelled(),
            Err(Error::InvalidArgument { field, reason }) => {
                return Err(Status::invalid_argument(format!("{field}: {reason}")));
            }
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "gbrain-inference".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![
                "model_repository".into(),
                "statistics".into(),
                "binary_tensor_data".into(),
            ],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let p = principal(&request)?;
        p.require_any(&USE)?;
        let r = request.into_inner();
        let tenant = p.tenant.as_str();
        let m = self
            .models
            .get(tenant, &r.name, &r.version)
            .map_err(|e| logged(&p, e))?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name.clone(),
            versions: self
                .models
                .versions(tenant, &r.name)
                .iter()
                .map(u64::to_string)
                .collect(),
            platform: PLATFORM.into(),
            inputs: m.inputs.iter().map(metadata).collect(),
            outputs: m.outputs.iter().map(metadata).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let p = principal(&request)?;
        p.require_any(&USE)?;
        let response = self
            .infer(&p, request.into_inner())
            .await
            .map_err(|e| logged(&p, e))?;
        Ok(Response::new(response))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let p = principal(&request)?;
        p.require_any(&USE)?;
        let r = request.into_inner();
        let tenant = p.tenant.as_str();
        let versions = if r.name.is_empty() {
            self.models.ready_versions(tenant)
        } else {
            vec![
                self.models
                    .get(tenant, &r.name, &r.version)
                    .map_err(|e| logged(&p, e))?,
            ]
        };
        let mut model_stats: Vec<pb::ModelStatistics> =
            versions.iter().map(|m| statistics(m, m.stats())).collect();
        model_stats.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let p = principal(&request)?;
        p.require_any(&USE)?;
        let r = request.into_inner();
        let models = self
            .models
            .index(p.tenant.as_str())
            .into_iter()
            .filter(|row| !r.ready || row.state == "READY")
            .map(|row| pb::repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.into(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let p = principal(&request)?;
        p.require(Role::Operator)?;
        let r = request.into_inner();
        if let Some(name) = r.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters[{name}]: not supported; push model files with `gbrain models push`"
            )));
        }
        self.models
            .load(p.tenant.as_str(), &r.model_name)
            .await
            .map_err(|e| logged(&p, e))?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let p = principal(&request)?;
        p.require(Role::Operator)?;
        let r = request.into_inner();
        self.models
            .unload(p.tenant.as_str(), &r.model_name)
            .await
            .map_err(|e| logged(&p, e))?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
