//! `globalbrain.models.v1.ModelRepositoryService`: pushing, listing and removing models.

use std::sync::Arc;

use bytes::BytesMut;
use gbrain_common::auth::{Principal, Role};
use gbrain_proto::models::v1 as pb;
use gbrain_proto::models::v1::model_repository_service_server::{
    ModelRepositoryService, ModelRepositoryServiceServer,
};
use tonic::{Request, Response, Status, Streaming};

use crate::config::ModelConfig;
use crate::error::Error;
use crate::model::ModelVersion;
use crate::models::Models;
use crate::repository::check_name;

pub const SERVICE_NAME: &str = "globalbrain.models.v1.ModelRepositoryService";

/// ONNX's own limit: a protobuf message of at most 2 GiB.
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Version numbers an unnumbered push tries before it gives up (others took them first).
const PUSH_TRIES: u32 = 64;

pub struct Admin {
    models: Arc<Models>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    pub fn new(models: Arc<Models>) -> Self {
        Self { models }
    }

    pub fn into_server(self) -> ModelRepositoryServiceServer<Self> {
        ModelRepositoryServiceServer::new(self)
    }
}

fn operator<T>(request: &Request<T>) -> Result<Principal, Status> {
    let p = Principal::from_request(request)?.clone();
    p.require(Role::Operator)?;
    Ok(p)
}

#[tonic::async_trait]
impl ModelRepositoryService for Admin {
    async fn push_model(
        &self,
        request: Request<Streaming<pb::PushModelRequest>>,
    ) -> Result<Response<pb::PushModelResponse>, Status> {
        let p = operator(&request)?;
        let tenant = p.tenant.as_str().to_string();
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::PushModelRequest {
                part: Some(pb::push_model_request::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "header: the first message must be the header",
                ));
            }
        };
        check_name(&header.name)?;
        if header.size_bytes == 0 || header.size_bytes > MAX_MODEL_BYTES {
            return Err(Status::invalid_argument(format!(
                "size_bytes: {} is not within 1..={MAX_MODEL_BYTES}",
                header.size_bytes
            )));
        }
        let config = if header.config_json.trim().is_empty() {
            None
        } else {
            Some(
                ModelConfig::parse(header.config_json.as_bytes())
                    .map_err(|e| Status::invalid_argument(format!("config_json: {e}")))?,
            )
        };
        let repo = self.models.repository();
        let config = if header.serve_versions.is_empty() {
            config
        } else {
            let mut c = match config {
                Some(c) => c,
                None => repo.config(&tenant, &header.name).await?,
            };
            c.version_policy =
                crate::config::VersionPolicy::Specific(header.serve_versions.clone());
            Some(c)
        };
        let mut file = BytesMut::new();
        while let Some(m) = stream.message().await? {
            match m.part {
                Some(pb::push_model_request::Part::Chunk(c)) => {
                    if file.len() as u64 + c.len() as u64 > header.size_bytes {
                        return Err(Status::invalid_argument(format!(
                            "chunk: more than the {} bytes size_bytes announced",
                            header.size_bytes
                        )));
                    }
                    file.extend_from_slice(&c);
                }
                _ => return Err(Status::invalid_argument("header: sent twice")),
            }
        }
        if file.len() as u64 != header.size_bytes {
            return Err(Status::invalid_argument(format!(
                "chunk: {} bytes arrived, size_bytes announced {}",
                file.len(),
                header.size_bytes
            )));
        }
        let file = file.freeze();
        let effective = match &config {
            Some(c) => c.clone(),
            None => repo.config(&tenant, &header.name).await?,
        };
        // Check the file before storing anything: it must load and have tensor inputs and
        // outputs. (A CUDA model is checked on the CPU when this node has no GPU.)
        let mut check = effective.clone();
        check.instance_count = 1;
        check.dynamic_batching = None;
        if check.device != crate::config::Device::Cpu && !cfg!(feature = "cuda") {
            check.device = crate::config::Device::Cpu;
        }
        let env = self.models.environment();
        let bytes = file.clone();
        let name = header.name.clone();
        let checked = tokio::task::spawn_blocking(move || {
            ModelVersion::load(env, "", &name, 0, &bytes, check, Default::default()).map(|_| ())
        })
        .await
        .map_err(|e| Status::internal(format!("checking the model: {e}")))?;
        if let Err(e) = checked {
            return Err(Status::invalid_argument(format!("file: {e}")));
        }
        let version = if header.version == 0 {
            // The next number, taken by an exclusive create: of two pushes at once, one gets
            // the next number after the other's.
            let mut next = repo
                .versions(&tenant, &header.name)
                .await?
                .last()
                .map_or(1, |v| v.version + 1);
            repo.write_config(&tenant, &header.name, config.as_ref())
                .await?;
            let mut tries = 0;
            while !repo
                .put_new(&tenant, &header.name, next, file.clone())
                .await?
            {
                tries += 1;
                if tries >= PUSH_TRIES {
                    return Err(Status::aborted(format!(
                        "version: {PUSH_TRIES} pushes of {} took the next numbers first; push again",
                        header.name
                    )));
                }
                next += 1;
            }
            next
        } else {
            repo.put(&tenant, &header.name, header.version, file, config.as_ref())
                .await?;
            header.version
        };
        tracing::info!(model = %header.name, version, "model pushed");
        let (state, reason) = match self.models.load(&tenant, &header.name).await {
            Ok(()) => ("READY", String::new()),
            Err(e) => ("UNAVAILABLE", e.to_string()),
        };
        Ok(Response::new(pb::PushModelResponse {
            name: header.name,
            version,
            state: state.into(),
            reason,
        }))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let p = operator(&request)?;
        let tenant = p.tenant.as_str();
        let repo = self.models.repository();
        let index = self.models.index(tenant);
        let mut versions = Vec::new();
        for name in repo.models(tenant).await? {
            for v in repo.versions(tenant, &name).await? {
                let row = index
                    .iter()
                    .find(|r| r.name == name && r.version == v.version.to_string());
                let (state, reason) = match row {
                    Some(r) => (r.state.to_string(), r.reason.clone()),
                    None => ("STORED".to_string(), String::new()),
                };
                versions.push(pb::ModelVersionInfo {
                    name: name.clone(),
                    version: v.version,
                    size_bytes: v.size,
                    state,
                    reason,
                });
            }
        }
        Ok(Response::new(pb::ListModelsResponse { versions }))
    }

    async fn remove_model(
        &self,
        request: Request<pb::RemoveModelRequest>,
    ) -> Result<Response<pb::RemoveModelResponse>, Status> {
        let p = operator(&request)?;
        let tenant = p.tenant.as_str().to_string();
        let r = request.into_inner();
        check_name(&r.name)?;
        let repo = self.models.repository();
        let stored = repo.versions(&tenant, &r.name).await?;
        if stored.is_empty() || (r.version != 0 && !stored.iter().any(|v| v.version == r.version)) {
            return Err(Error::NotFound(format!(
                "model {} has no {}",
                r.name,
                if r.version == 0 {
                    "versions".to_string()
                } else {
                    format!("version {}", r.version)
                }
            ))
            .into());
        }
        repo.remove(&tenant, &r.name, (r.version != 0).then_some(r.version))
            .await?;
        self.models.refresh(&tenant, &r.name).await;
        Ok(Response::new(pb::RemoveModelResponse {}))
    }
}
