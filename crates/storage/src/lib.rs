//! Where recordings live on object storage, and in what shape.
//!
//! - [`store`]: an `object_store` from a URL (`file://` or `s3://`).
//! - [`layout`]: the object paths, partitioned by tenant, recording and channel so that queries
//!   prune by path before they open a file.
//! - [`signal`]: one Parquet file per channel and part: `sample_index` and the original digital
//!   `value`, losslessly, encoded by the fast delta encoder in [`delta`].
//! - [`events`]: events and annotations as Parquet.
//! - [`loop_rows`]: the feedback loop's predictions and outcomes as Parquet.
//! - [`staging`]: the bytes of unfinished uploads, durable so that uploads can resume.
//!
//! Physical values are never stored: `value * gain + offset` with the channel's gain and offset
//! from the catalog gives them, and the original digital values stay exact.

pub mod delta;
mod error;
pub mod events;
pub mod layout;
pub mod loop_rows;
pub mod signal;
pub mod staging;
pub mod store;

pub use error::{Error, Result};
