//! Building blocks every Global Brain service shares.
//!
//! - [`auth`]: bearer tokens mapped to a tenant and roles, enforced by one tower layer in front
//!   of every gRPC service (health checks excepted).
//! - [`tenant`]: tenant names and their per-tenant policies.
//! - [`clap_blocks`]: command-line and environment configuration shared by the binaries.
//! - [`server`]: serving gRPC with health, reflection, metrics and graceful shutdown.
//! - [`tls`]: TLS and mutual TLS of the gRPC servers and their clients.
//! - [`metrics`]: request metrics for the Prometheus endpoint.
//! - [`clock`]: time as an injected dependency.
//! - [`executor`]: dedicated runtimes for CPU-heavy work, background ones at a lower priority.
//!
//! No DataFusion and no ONNX Runtime here: this crate stays light so that every binary can
//! depend on it.

pub mod auth;
pub mod clap_blocks;
pub mod clock;
mod error;
pub mod executor;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod tenant;
pub mod tls;

pub use error::{Error, Result};
