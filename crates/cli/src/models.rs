//! `gbrain models`: push, list and remove models in the tenant's repository (operator role).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_proto::models::v1::model_repository_service_client::ModelRepositoryServiceClient;
use gbrain_proto::models::v1::{
    ListModelsRequest, PushModelHeader, PushModelRequest, PushModelResponse, RemoveModelRequest,
    push_model_request::Part,
};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client::{Bearer, status};

pub type Models = ModelRepositoryServiceClient<InterceptedService<Channel, Bearer>>;

/// Bytes per pushed message.
const CHUNK_BYTES: usize = 1 << 20;

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Models> {
    let channel = crate::client::connect_channel(&args.server, &args.tls).await?;
    Ok(ModelRepositoryServiceClient::with_interceptor(
        channel,
        Bearer::new(args.token.as_deref())?,
    ))
}

/// Pushes `file` as a version of model `name`.
pub async fn push_file(
    client: &mut Models,
    file: &Path,
    name: &str,
    version: u64,
    config_json: Option<String>,
) -> Result<PushModelResponse, tonic::Status> {
    let bytes = std::fs::read(file).map_err(|e| {
        tonic::Status::invalid_argument(format!("cannot read {}: {e}", file.display()))
    })?;
    let bytes = bytes::Bytes::from(bytes);
    let mut messages = vec![PushModelRequest {
        part: Some(Part::Header(PushModelHeader {
            name: name.to_string(),
            version,
            config_json: config_json.unwrap_or_default(),
            size_bytes: bytes.len() as u64,
            serve_versions: Vec::new(),
        })),
    }];
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + CHUNK_BYTES).min(bytes.len());
        messages.push(PushModelRequest {
            part: Some(Part::Chunk(bytes.slice(at..end))),
        });
        at = end;
    }
    Ok(client
        .push_model(futures::stream::iter(messages))
        .await?
        .into_inner())
}

pub async fn push(
    file: &Path,
    name: Option<String>,
    version: u64,
    config: Option<&Path>,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("give the model a --name")?
            .to_string(),
    };
    let config_json = match config {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let mut client = connect(&args).await?;
    match push_file(&mut client, file, &name, version, config_json).await {
        Ok(r) => {
            if args.json {
                println!(
                    "{}",
                    json!({"name": r.name, "version": r.version, "state": r.state, "reason": r.reason})
                );
            } else if r.reason.is_empty() {
                println!("{} version {}: {}", r.name, r.version, r.state);
            } else {
                println!(
                    "{} version {}: {} ({})",
                    r.name, r.version, r.state, r.reason
                );
            }
            Ok(if r.state == "READY" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(s) => {
            eprintln!("error: {}", status(&s));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn ls(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    match client.list_models(ListModelsRequest {}).await {
        Ok(r) => {
            for v in r.into_inner().versions {
                if args.json {
                    println!(
                        "{}",
                        json!({"name": v.name, "version": v.version, "size_bytes": v.size_bytes,
                               "state": v.state, "reason": v.reason})
                    );
                } else {
                    println!(
                        "{}\t{}\t{} bytes\t{}{}",
                        v.name,
                        v.version,
                        v.size_bytes,
                        v.state,
                        if v.reason.is_empty() {
                            String::new()
                        } else {
                            format!("\t{}", v.reason)
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(s) => {
            eprintln!("error: {}", status(&s));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn rm(name: String, version: u64, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    match client
        .remove_model(RemoveModelRequest {
            name: name.clone(),
            version,
        })
        .await
    {
        Ok(_) => {
            if version == 0 {
                println!("removed {name}");
            } else {
                println!("removed {name} version {version}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(s) => {
            eprintln!("error: {}", status(&s));
            Ok(ExitCode::FAILURE)
        }
    }
}
