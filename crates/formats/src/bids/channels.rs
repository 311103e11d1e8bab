//! `*_channels.tsv`: name, type and units of each channel.

use super::tsv::{Tsv, is_na, number};
use crate::{Error, Result};

/// Channel types BIDS defines for EEG, iEEG and MEG (BIDS 1.10, "Channels description").
pub const CHANNEL_TYPES: &[&str] = &[
    // EEG and shared
    "AUDIO",
    "EEG",
    "EOG",
    "ECG",
    "EMG",
    "EYEGAZE",
    "GSR",
    "HEOG",
    "MISC",
    "PD",
    "PPG",
    "PUPIL",
    "REF",
    "RESP",
    "SYSCLOCK",
    "TEMP",
    "TRIG",
    "VEOG",
    // iEEG
    "ECOG",
    "SEEG",
    "DBS",
    // MEG
    "MEGMAG",
    "MEGGRADAXIAL",
    "MEGGRADPLANAR",
    "MEGREFMAG",
    "MEGREFGRADAXIAL",
    "MEGREFGRADPLANAR",
    "MEGOTHER",
    "HLU",
    "FITERR",
    "OTHER",
];

/// One row of a channels table.
#[derive(Clone, Debug, PartialEq)]
pub struct BidsChannel {
    pub name: String,
    /// Upper-case, one of [`CHANNEL_TYPES`].
    pub channel_type: String,
    pub units: String,
    pub sampling_frequency: Option<f64>,
    pub low_cutoff: Option<f64>,
    pub high_cutoff: Option<f64>,
    pub status: Option<String>,
    pub description: Option<String>,
}

pub fn parse_channels_tsv(bytes: &[u8], file: &str) -> Result<Vec<BidsChannel>> {
    let t = Tsv::parse(bytes, file)?;
    let name = t.require("name", file)?;
    let kind = t.require("type", file)?;
    let units = t.require("units", file)?;
    let opt_num = |row: &[&str], col: &str, line: usize| -> Result<Option<f64>> {
        match t.column(col) {
            Some(c) => number(row[c], file, line, col),
            None => Ok(None),
        }
    };
    let opt_text = |row: &[&str], col: &str| {
        t.column(col)
            .map(|c| row[c])
            .filter(|v| !is_na(v))
            .map(str::to_string)
    };
    let mut out = Vec::with_capacity(t.rows.len());
    for (i, row) in t.rows.iter().enumerate() {
        let line = i + 2;
        let upper = row[kind].to_ascii_uppercase();
        if !CHANNEL_TYPES.contains(&upper.as_str()) {
            return Err(Error::invalid(
                format!("{file} line {line} column type"),
                format!(
                    "{:?} is not a BIDS channel type (one of {})",
                    row[kind],
                    CHANNEL_TYPES.join(", ")
                ),
            ));
        }
        if is_na(row[name]) {
            return Err(Error::invalid(
                format!("{file} line {line} column name"),
                "a channel needs a name",
            ));
        }
        out.push(BidsChannel {
            name: row[name].to_string(),
            channel_type: upper,
            units: row[units].to_string(),
            sampling_frequency: opt_num(row, "sampling_frequency", line)?,
            low_cutoff: opt_num(row, "low_cutoff", line)?,
            high_cutoff: opt_num(row, "high_cutoff", line)?,
            status: opt_text(row, "status"),
            description: opt_text(row, "description"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_types_against_the_enum() {
        let ok = b"name\ttype\tunits\tstatus\nFp1\tEEG\tuV\tgood\nEKG\tecg\tmV\tbad\n";
        let c = parse_channels_tsv(ok, "channels.tsv").unwrap();
        assert_eq!(c[1].channel_type, "ECG");
        assert_eq!(c[1].status.as_deref(), Some("bad"));
        let bad = b"name\ttype\tunits\nFp1\tBRAINWAVE\tuV\n";
        let e = parse_channels_tsv(bad, "channels.tsv").unwrap_err();
        assert_eq!(e.field(), Some("channels.tsv line 2 column type"), "{e}");
        let missing = b"name\ttype\nFp1\tEEG\n";
        assert!(parse_channels_tsv(missing, "channels.tsv").is_err());
    }
}
