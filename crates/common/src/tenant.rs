//! Tenants and their policies.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A tenant name: 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit. It
/// appears in object paths, so the alphabet is deliberately small.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(Error::Config(format!(
                "tenant {name:?} must be 1-64 characters of a-z, 0-9, '-' and '_', starting with \
                 a letter or digit"
            )));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens to the recording's start date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatePolicy {
    /// Keep the date and time as recorded.
    Keep,
    /// Move the date back by a keyed whole number of days per subject (time of day kept), so
    /// that intervals between one subject's recordings survive but the calendar date does not.
    #[default]
    Shift,
    /// Replace the date with 1985-01-01, the EDF+ convention for an unknown date; the time of
    /// day is kept.
    Remove,
}

/// De-identification policy of one tenant. De-identification itself cannot be switched off:
/// only what survives it is configurable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeidPolicy {
    /// Keep the subject's sex.
    pub keep_sex: bool,
    /// Keep the age in whole years at the recording date, capped at 90.
    pub keep_age: bool,
    pub dates: DatePolicy,
    /// Replace the patient's name tokens in annotation text with `[name]`.
    pub scrub_annotations: bool,
}

impl Default for DeidPolicy {
    fn default() -> Self {
        Self {
            keep_sex: true,
            keep_age: true,
            dates: DatePolicy::Shift,
            scrub_annotations: true,
        }
    }
}

/// Per-tenant settings from the auth file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantPolicy {
    pub deid: DeidPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_tenant_names() {
        assert!(TenantId::new("hospital-a").is_ok());
        assert!(TenantId::new("demo_2").is_ok());
        for bad in ["", "-x", "Upper", "a/b", "../x", &"a".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad}");
        }
    }
}
