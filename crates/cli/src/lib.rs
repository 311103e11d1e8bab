//! The client side of Global Brain, shared by the `gbrain` command and the integration tests:
//! connecting with a token, resumable uploads, BIDS import, SQL over Flight SQL, snapshots, models,
//! closed-loop simulation, and the embedded cluster itself.

pub mod bids;
pub mod client;
pub mod cluster;
pub mod loop_sim;
pub mod models;
pub mod output;
pub mod snapshot;
pub mod sql;
pub mod upload;
