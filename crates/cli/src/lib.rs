//! The client side of Global Brain, shared by the `gbrain` command and the integration tests:
//! connecting with a token, resumable uploads, and BIDS import.

pub mod bids;
pub mod client;
pub mod output;
pub mod upload;
