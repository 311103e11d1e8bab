//! Object paths. Hive-style `key=value` segments let a query engine prune by tenant,
//! recording and channel from the path alone.
//!
//! ```text
//! data/signals/tenant=T/recording=R/channel=00003/part-00000.parquet
//! data/signals/tenant=T/recording=R/flush=<first sample, 20 digits>-<id>.parquet (every channel)
//! data/signals/tenant=T/recording=R/compact=L<level>-<first sample>-<id>/channel=00003.parquet
//! data/events/tenant=T/recording=R/<part id>.parquet
//! data/loop/tenant=T/recording=R/<predictions|outcomes>/<part id>.parquet
//! staging/tenant=T/upload=U/<offset, 20 digits>.part
//! models/tenant=T/<model>/config.json
//! models/tenant=T/<model>/<version>/model.onnx
//! ```

use object_store::path::Path;

pub fn recording_signals(tenant: &str, recording: &str) -> Path {
    Path::from(format!(
        "data/signals/tenant={tenant}/recording={recording}"
    ))
}

pub fn signal_part(tenant: &str, recording: &str, channel: u32, part: u32) -> Path {
    Path::from(format!(
        "data/signals/tenant={tenant}/recording={recording}/channel={channel:05}/part-{part:05}.parquet"
    ))
}

/// The file of one flush of a live stream: every channel's samples from `first_sample`, a
/// channel after another ([`crate::signal::write_channels`]). One file, not one per channel:
/// flushes come twice a second per stream, and creating files is what a local disk pays for.
/// The id keeps a retried flush apart from one that was abandoned.
pub fn live_flush_file(tenant: &str, recording: &str, first_sample: u64, id: &str) -> Path {
    Path::from(format!(
        "data/signals/tenant={tenant}/recording={recording}/flush={first_sample:020}-{id}.parquet"
    ))
}

/// The folder of a compaction of a live stream's files: level `level` (a flush is level 0),
/// every channel's samples from `first_sample`.
pub fn live_compact_dir(
    tenant: &str,
    recording: &str,
    level: u32,
    first_sample: u64,
    id: &str,
) -> Path {
    Path::from(format!(
        "data/signals/tenant={tenant}/recording={recording}/compact=L{level}-{first_sample:020}-{id}"
    ))
}

/// The compaction level of a live stream's file, from its path: 0 for a flush.
pub fn live_level(path: &str) -> u32 {
    path.split("/compact=L")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// One channel's file of a live stream's compaction.
pub fn live_compact_part(dir: &Path, channel: u32) -> Path {
    dir.clone().join(format!("channel={channel:05}.parquet"))
}

pub fn recording_events(tenant: &str, recording: &str) -> Path {
    Path::from(format!("data/events/tenant={tenant}/recording={recording}"))
}

pub fn events_part(tenant: &str, recording: &str, part: &str) -> Path {
    Path::from(format!(
        "data/events/tenant={tenant}/recording={recording}/{part}.parquet"
    ))
}

/// A file of a loop session's rows (`table` is `predictions` or `outcomes`).
pub fn loop_part(tenant: &str, recording: &str, table: &str, part: &str) -> Path {
    Path::from(format!(
        "data/loop/tenant={tenant}/recording={recording}/{table}/{part}.parquet"
    ))
}

pub fn upload_dir(tenant: &str, upload: &str) -> Path {
    Path::from(format!("staging/tenant={tenant}/upload={upload}"))
}

pub fn upload_part(tenant: &str, upload: &str, offset: u64) -> Path {
    Path::from(format!(
        "staging/tenant={tenant}/upload={upload}/{offset:020}.part"
    ))
}

/// The offset of a staged part from its file name.
pub fn upload_part_offset(path: &Path) -> Option<u64> {
    path.filename()?.strip_suffix(".part")?.parse().ok()
}

/// The root of every tenant's model repository.
pub const MODELS: &str = "models";

/// A tenant's model repository: `<model>/<version>/model.onnx` and `<model>/config.json`.
pub fn model_repository(tenant: &str) -> Path {
    Path::from(format!("{MODELS}/tenant={tenant}"))
}

pub fn model_dir(tenant: &str, model: &str) -> Path {
    Path::from(format!("{MODELS}/tenant={tenant}/{model}"))
}

pub fn model_config(tenant: &str, model: &str) -> Path {
    Path::from(format!("{MODELS}/tenant={tenant}/{model}/config.json"))
}

pub fn model_file(tenant: &str, model: &str, version: u64) -> Path {
    Path::from(format!(
        "{MODELS}/tenant={tenant}/{model}/{version}/model.onnx"
    ))
}
