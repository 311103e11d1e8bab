//! `gbrain snapshot`: name the catalog as it is now, list and delete names.

use std::process::ExitCode;

use gbrain_common::clap_blocks::ClientArgs;
use gbrain_proto::query::v1::snapshot_service_client::SnapshotServiceClient;
use gbrain_proto::query::v1::{
    CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest, Snapshot,
};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client::{Bearer, status};

pub type Snapshots = SnapshotServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Snapshots> {
    let channel = crate::client::connect_channel(&args.server, &args.tls).await?;
    Ok(SnapshotServiceClient::with_interceptor(
        channel,
        Bearer::new(args.token.as_deref())?,
    ))
}

fn line(s: &Snapshot) -> String {
    format!(
        "{}\tcommit {}\tcreated {}\tquery as {}.<table>",
        s.name, s.commit, s.created_at, s.schema
    )
}

fn as_json(s: &Snapshot) -> serde_json::Value {
    json!({"name": s.name, "commit": s.commit, "created_at": s.created_at, "schema": s.schema})
}

pub async fn create(name: String, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    match client.create_snapshot(CreateSnapshotRequest { name }).await {
        Ok(r) => {
            let s = r.into_inner();
            if args.json {
                println!("{}", as_json(&s));
            } else {
                println!("{}", line(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(s) => {
            eprintln!("error: {}", status(&s));
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn list(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    match client.list_snapshots(ListSnapshotsRequest {}).await {
        Ok(r) => {
            let list = r.into_inner().snapshots;
            if args.json {
                println!(
                    "{}",
                    serde_json::Value::Array(list.iter().map(as_json).collect())
                );
            } else {
                for s in &list {
                    println!("{}", line(s));
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

pub async fn delete(name: String, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args).await?;
    match client
        .delete_snapshot(DeleteSnapshotRequest { name: name.clone() })
        .await
    {
        Ok(r) if r.get_ref().deleted => {
            println!("deleted snapshot {name}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            eprintln!("error: no snapshot named {name}");
            Ok(ExitCode::FAILURE)
        }
        Err(s) => {
            eprintln!("error: {}", status(&s));
            Ok(ExitCode::FAILURE)
        }
    }
}
