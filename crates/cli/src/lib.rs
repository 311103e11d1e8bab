//! The client side of Global Brain, shared by the `gbrain` command and the integration tests:
//! connecting with a token, resumable uploads, BIDS import, SQL over Flight SQL, snapshots, models,
//! closed-loop simulation, the embedded cluster itself, and the local cluster of separate
//! processes.

pub mod bids;
pub mod client;
pub mod cluster;
pub mod local_cluster;
pub mod loop_sim;
pub mod models;
pub mod output;
pub mod snapshot;
pub mod sql;
pub mod upload;
