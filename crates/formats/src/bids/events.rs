//! `*_events.tsv`: behavioural and task events.

use super::tsv::{Tsv, is_na, number};
use crate::{Error, Result};

/// One row of an events table.
#[derive(Clone, Debug, PartialEq)]
pub struct BidsEvent {
    /// Seconds from the start of the recording. `None` for `n/a`, which behavioural files
    /// without time-locking use.
    pub onset: Option<f64>,
    pub duration: Option<f64>,
    pub trial_type: Option<String>,
    pub value: Option<String>,
    pub sample: Option<i64>,
    pub response_time: Option<f64>,
    /// Every other column, in file order; `None` for `n/a`.
    pub extra: Vec<(String, Option<String>)>,
}

/// Parses an events table. `file` names it in errors.
pub fn parse_events_tsv(bytes: &[u8], file: &str) -> Result<Vec<BidsEvent>> {
    let t = Tsv::parse(bytes, file)?;
    let onset = t.require("onset", file)?;
    let duration = t.require("duration", file)?;
    let trial_type = t.column("trial_type");
    let value = t.column("value");
    let sample = t.column("sample");
    let response_time = t.column("response_time");
    let known = [
        Some(onset),
        Some(duration),
        trial_type,
        value,
        sample,
        response_time,
    ];
    let extra_columns: Vec<usize> = (0..t.columns.len())
        .filter(|i| !known.contains(&Some(*i)))
        .collect();
    let text = |row: &[&str], c: Option<usize>| {
        c.map(|c| row[c]).filter(|v| !is_na(v)).map(str::to_string)
    };
    let mut events = Vec::with_capacity(t.rows.len());
    for (i, row) in t.rows.iter().enumerate() {
        let line = i + 2;
        let onset_v = number(row[onset], file, line, "onset")?;
        let duration_v = number(row[duration], file, line, "duration")?;
        if let Some(d) = duration_v
            && d < 0.0
        {
            return Err(Error::invalid(
                format!("{file} line {line} column duration"),
                format!("{d} is negative"),
            ));
        }
        let sample_v = match sample.map(|c| row[c]) {
            Some(cell) if !is_na(cell) => Some(cell.parse::<i64>().map_err(|_| {
                Error::invalid(
                    format!("{file} line {line} column sample"),
                    format!("{cell:?} is not an integer sample index"),
                )
            })?),
            _ => None,
        };
        let response_time_v = match response_time {
            Some(c) => number(row[c], file, line, "response_time")?,
            None => None,
        };
        events.push(BidsEvent {
            onset: onset_v,
            duration: duration_v,
            trial_type: text(row, trial_type),
            value: text(row, value),
            sample: sample_v,
            response_time: response_time_v,
            extra: extra_columns
                .iter()
                .map(|&c| (t.columns[c].to_string(), text(row, Some(c))))
                .collect(),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_extra_columns() {
        let tsv = b"onset\tduration\ttrial_type\tvalue\tsample\tresponse_time\tstim_file\n\
                    1.5\t0.5\tleft\t3\t384\t0.412\tf01.bmp\n\
                    2\tn/a\tright\tn/a\tn/a\tn/a\tn/a\n";
        let e = parse_events_tsv(tsv, "events.tsv").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].onset, Some(1.5));
        assert_eq!(e[0].trial_type.as_deref(), Some("left"));
        assert_eq!(e[0].value.as_deref(), Some("3"));
        assert_eq!(e[0].sample, Some(384));
        assert_eq!(e[0].response_time, Some(0.412));
        assert_eq!(
            e[0].extra,
            vec![("stim_file".to_string(), Some("f01.bmp".to_string()))]
        );
        assert_eq!(e[1].duration, None);
        assert_eq!(e[1].extra, vec![("stim_file".to_string(), None)]);
    }

    #[test]
    fn requires_onset_and_duration() {
        let e = parse_events_tsv(b"duration\ttrial_type\n1\tx\n", "e.tsv").unwrap_err();
        assert!(e.to_string().contains("\"onset\""), "{e}");
        let e = parse_events_tsv(b"onset\ttrial_type\n1\tx\n", "e.tsv").unwrap_err();
        assert!(e.to_string().contains("\"duration\""), "{e}");
    }

    #[test]
    fn rejects_non_numeric_onsets_naming_the_line() {
        let e = parse_events_tsv(b"onset\tduration\n1\t0\nsoon\t0\n", "e.tsv").unwrap_err();
        assert_eq!(e.field(), Some("e.tsv line 3 column onset"), "{e}");
        let e = parse_events_tsv(b"onset\tduration\n1\t-1\n", "e.tsv").unwrap_err();
        assert_eq!(e.field(), Some("e.tsv line 2 column duration"), "{e}");
        let e = parse_events_tsv(b"onset\tduration\tsample\n1\t0\t1.5\n", "e.tsv").unwrap_err();
        assert_eq!(e.field(), Some("e.tsv line 2 column sample"), "{e}");
    }
}
