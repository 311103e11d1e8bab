//! A model's configuration: `<model>/config.json` beside its versions in the repository.
//!
//! ```json
//! {
//!   "max_batch_size": 32,
//!   "dynamic_batching": { "max_queue_delay_us": 500, "max_queue_size": 1024, "timeout_us": 1000000 },
//!   "instance_count": 1,
//!   "intra_op_threads": 1,
//!   "device": "cpu",
//!   "version_policy": { "latest": 1 }
//! }
//! ```
//!
//! Every field is optional; a model without `config.json` gets the defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a model's sessions run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU N. Loading fails when it cannot be registered:
    /// a model asked to run on a GPU never silently runs on the CPU.
    Cuda(i32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Self::Cuda)
                .ok_or_else(|| format!("device '{s}' is neither 'cpu' nor 'cuda:N'")),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which versions of a model are served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The newest N versions.
    Latest(usize),
    /// Exactly these versions (those that exist).
    Specific(Vec<u64>),
    /// Every version.
    All,
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those in the repository.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        match self {
            Self::Latest(n) => sorted.split_off(sorted.len().saturating_sub(*n)),
            Self::Specific(wanted) => sorted.into_iter().filter(|v| wanted.contains(v)).collect(),
            Self::All => sorted,
        }
    }
}

/// Dynamic batching: requests held for a moment and run together along the batch dimension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicBatching {
    /// The longest a request waits for others to join its batch, in microseconds.
    pub max_queue_delay_us: u64,
    /// Requests waiting beyond this many are refused with ResourceExhausted.
    pub max_queue_size: usize,
    /// A request not run within this many microseconds fails with DeadlineExceeded; 0 for
    /// none (a client's gRPC deadline still applies).
    pub timeout_us: u64,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        Self {
            max_queue_delay_us: 500,
            max_queue_size: 4096,
            timeout_us: 0,
        }
    }
}

impl DynamicBatching {
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_micros(self.max_queue_delay_us)
    }

    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_us > 0).then(|| Duration::from_micros(self.timeout_us))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The largest batch (first dimension) one execution takes; 0 when the model has no batch
    /// dimension.
    pub max_batch_size: usize,
    /// Off when absent.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Sessions of each version, run side by side.
    pub instance_count: usize,
    /// Threads each session's operators use.
    pub intra_op_threads: usize,
    pub device: Device,
    pub version_policy: VersionPolicy,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 0,
            dynamic_batching: None,
            instance_count: 1,
            intra_op_threads: 1,
            device: Device::Cpu,
            version_policy: VersionPolicy::default(),
        }
    }
}

/// Limits that keep one model from taking the node.
const MAX_INSTANCES: usize = 64;
const MAX_THREADS: usize = 256;

impl ModelConfig {
    /// Parses and checks `config.json`.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let config: Self = serde_json::from_slice(text)
            .map_err(|e| Error::FailedPrecondition(format!("config.json: {e}")))?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::FailedPrecondition(format!(
                "config.json: {field}: {reason}"
            )))
        };
        if self.instance_count == 0 || self.instance_count > MAX_INSTANCES {
            return bad(
                "instance_count",
                format!("{} is not within 1..={MAX_INSTANCES}", self.instance_count),
            );
        }
        if self.intra_op_threads == 0 || self.intra_op_threads > MAX_THREADS {
            return bad(
                "intra_op_threads",
                format!("{} is not within 1..={MAX_THREADS}", self.intra_op_threads),
            );
        }
        if let VersionPolicy::Latest(0) = self.version_policy {
            return bad("version_policy", "latest must be at least 1".into());
        }
        if let Some(b) = &self.dynamic_batching {
            if self.max_batch_size == 0 {
                return bad(
                    "dynamic_batching",
                    "needs max_batch_size above 0 (the model must have a batch dimension)".into(),
                );
            }
            if b.max_queue_size == 0 {
                return bad(
                    "dynamic_batching.max_queue_size",
                    "must be at least 1".into(),
                );
            }
            if b.max_queue_delay_us > 10_000_000 {
                return bad(
                    "dynamic_batching.max_queue_delay_us",
                    "more than 10 s would hold requests too long".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_config_parse() {
        assert_eq!(ModelConfig::parse(b"{}").unwrap(), ModelConfig::default());
        let c = ModelConfig::parse(
            br#"{"max_batch_size": 32, "dynamic_batching": {"max_queue_delay_us": 200},
                "instance_count": 2, "intra_op_threads": 4, "device": "cuda:1",
                "version_policy": {"specific": [1, 3]}}"#,
        )
        .unwrap();
        assert_eq!(c.device, Device::Cuda(1));
        assert_eq!(c.dynamic_batching.unwrap().max_queue_size, 4096);
        assert_eq!(c.version_policy.select(&[1, 2, 3, 4]), vec![1, 3]);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (text, field) in [
            (r#"{"device": "tpu"}"#, "device"),
            (r#"{"instance_count": 0}"#, "instance_count"),
            (r#"{"dynamic_batching": {}}"#, "dynamic_batching"),
            (r#"{"version_policy": {"latest": 0}}"#, "version_policy"),
            (r#"{"max_batch": 3}"#, "max_batch"),
        ] {
            let e = ModelConfig::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn version_policies_select() {
        let have = [3, 1, 2, 10];
        assert_eq!(VersionPolicy::Latest(2).select(&have), vec![3, 10]);
        assert_eq!(VersionPolicy::Latest(9).select(&have), vec![1, 2, 3, 10]);
        assert_eq!(VersionPolicy::All.select(&have), vec![1, 2, 3, 10]);
        assert_eq!(VersionPolicy::Specific(vec![2, 7]).select(&have), vec![2]);
    }
}
