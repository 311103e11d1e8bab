//! `*_eeg.json` and `*_ieeg.json`: the recording's sidecar.

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The required fields of a signal sidecar, checked, plus the whole document.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalSidecar {
    pub task_name: String,
    pub reference: String,
    pub sampling_frequency: f64,
    /// `None` when the file says `n/a`.
    pub power_line_frequency: Option<f64>,
    pub software_filters: Value,
    pub document: Map<String, Value>,
}

/// Parses and checks a sidecar. `ieeg` selects the iEEG variant, whose reference field is
/// `iEEGReference`.
pub fn parse_signal_sidecar(bytes: &[u8], file: &str, ieeg: bool) -> Result<SignalSidecar> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(file, format!("is not valid JSON ({e})")))?;
    let Value::Object(doc) = doc else {
        return Err(Error::invalid(file, "must be a JSON object"));
    };
    let reference_key = if ieeg {
        "iEEGReference"
    } else {
        "EEGReference"
    };
    let required = [
        "TaskName",
        reference_key,
        "SamplingFrequency",
        "PowerLineFrequency",
        "SoftwareFilters",
    ];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| !doc.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            format!("{file}.{}", missing[0]),
            format!(
                "required field missing (missing: {}; required: {})",
                missing.join(", "),
                required.join(", ")
            ),
        ));
    }
    let field = |k: &str| format!("{file}.{k}");
    let string = |k: &str| -> Result<String> {
        match &doc[k] {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            other => Err(Error::invalid(
                field(k),
                format!("must be a non-empty string, found {other}"),
            )),
        }
    };
    let task_name = string("TaskName")?;
    let reference = string(reference_key)?;
    let sampling_frequency = match doc["SamplingFrequency"].as_f64() {
        Some(v) if v > 0.0 && v.is_finite() => v,
        _ => {
            return Err(Error::invalid(
                field("SamplingFrequency"),
                format!(
                    "must be a positive number, found {}",
                    doc["SamplingFrequency"]
                ),
            ));
        }
    };
    let power_line_frequency = match &doc["PowerLineFrequency"] {
        Value::String(s) if s == "n/a" => None,
        v => match v.as_f64() {
            Some(f) if f > 0.0 => Some(f),
            _ => {
                return Err(Error::invalid(
                    field("PowerLineFrequency"),
                    format!("must be a positive number or \"n/a\", found {v}"),
                ));
            }
        },
    };
    let software_filters = match &doc["SoftwareFilters"] {
        v @ Value::Object(_) => v.clone(),
        Value::String(s) if s == "n/a" => Value::String(s.clone()),
        v => {
            return Err(Error::invalid(
                field("SoftwareFilters"),
                format!("must be an object or \"n/a\", found {v}"),
            ));
        }
    };
    Ok(SignalSidecar {
        task_name,
        reference,
        sampling_frequency,
        power_line_frequency,
        software_filters,
        document: doc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"TaskName":"rest","EEGReference":"Cz","SamplingFrequency":256,
        "PowerLineFrequency":50,"SoftwareFilters":"n/a","Manufacturer":"X"}"#;

    #[test]
    fn accepts_a_complete_sidecar() {
        let s = parse_signal_sidecar(OK.as_bytes(), "eeg.json", false).unwrap();
        assert_eq!(s.task_name, "rest");
        assert_eq!(s.power_line_frequency, Some(50.0));
        assert!(s.document.contains_key("Manufacturer"));
    }

    #[test]
    fn names_the_missing_field() {
        let e = parse_signal_sidecar(
            br#"{"TaskName":"rest","SamplingFrequency":256}"#,
            "eeg.json",
            false,
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("eeg.json.EEGReference"), "{e}");
        assert!(e.to_string().contains("PowerLineFrequency"), "{e}");
        let e = parse_signal_sidecar(OK.as_bytes(), "ieeg.json", true).unwrap_err();
        assert_eq!(e.field(), Some("ieeg.json.iEEGReference"), "{e}");
        let e = parse_signal_sidecar(b"[1]", "eeg.json", false).unwrap_err();
        assert!(e.to_string().contains("object"), "{e}");
    }

    #[test]
    fn checks_field_types() {
        let bad = OK.replace("256", "\"fast\"");
        let e = parse_signal_sidecar(bad.as_bytes(), "eeg.json", false).unwrap_err();
        assert_eq!(e.field(), Some("eeg.json.SamplingFrequency"), "{e}");
    }
}
