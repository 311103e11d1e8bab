//! Time-stamped Annotation Lists, the contents of EDF+ annotation signals.
//!
//! A TAL is `+onset[\x15duration]\x14[text\x14]...\x00`; a record's annotation signal holds any
//! number of them followed by `\x00` padding. The first TAL of a record's first annotation
//! signal has no text and keeps time: its onset is the record's start.

use crate::{Error, Result};

/// One TAL: an onset, an optional duration and zero or more texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Tal {
    /// Seconds relative to the header's start date and time. May be negative.
    pub onset: f64,
    pub duration: Option<f64>,
    /// Annotation texts. A time-keeping TAL has none (or only empty ones).
    pub texts: Vec<String>,
}

impl Tal {
    pub fn is_time_keeping(&self) -> bool {
        self.texts.iter().all(String::is_empty)
    }
}

/// Parses the TALs of one record's annotation signal. `field` names the signal and record for
/// error messages.
pub fn parse_tals(bytes: &[u8], field: &dyn Fn() -> String) -> Result<Vec<Tal>> {
    let mut tals = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == 0 {
            at += 1;
            continue;
        }
        let end = memchr::memchr(0, &bytes[at..])
            .map(|e| at + e)
            .ok_or_else(|| {
                Error::invalid(
                    field(),
                    "TAL is not terminated by a 0x00 byte before the end of the signal",
                )
            })?;
        tals.push(parse_one(&bytes[at..end], field)?);
        at = end + 1;
    }
    Ok(tals)
}

fn parse_one(tal: &[u8], field: &dyn Fn() -> String) -> Result<Tal> {
    let time_end = memchr::memchr(0x14, tal).ok_or_else(|| {
        Error::invalid(
            field(),
            format!(
                "TAL of {} bytes has no 0x14 byte after its onset",
                tal.len()
            ),
        )
    })?;
    let time = &tal[..time_end];
    let (onset_bytes, duration_bytes) = match memchr::memchr(0x15, time) {
        Some(p) => (&time[..p], Some(&time[p + 1..])),
        None => (time, None),
    };
    // Annotations can hold names: echo a field only when it looks like a number.
    let onset_text = numeric_or_len(onset_bytes);
    let sign = match onset_bytes.first() {
        Some(b'+') => 1.0,
        Some(b'-') => -1.0,
        _ => {
            return Err(Error::invalid(
                field(),
                format!("TAL onset {onset_text} must start with '+' or '-'"),
            ));
        }
    };
    let onset = parse_unsigned(&onset_bytes[1..]).ok_or_else(|| {
        Error::invalid(
            field(),
            format!("TAL onset {onset_text} is not a decimal number"),
        )
    })? * sign;
    let duration = match duration_bytes {
        None => None,
        Some(d) => Some(parse_unsigned(d).ok_or_else(|| {
            Error::invalid(
                field(),
                format!(
                    "TAL duration {} is not an unsigned decimal number",
                    numeric_or_len(d)
                ),
            )
        })?),
    };
    let rest = &tal[time_end + 1..];
    let mut texts = Vec::new();
    // Texts are each followed by 0x14; what follows the last 0x14 must be empty.
    let mut parts: Vec<&[u8]> = rest.split(|b| *b == 0x14).collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    for part in parts {
        let text = std::str::from_utf8(part).map_err(|e| {
            Error::invalid(field(), format!("annotation text is not valid UTF-8 ({e})"))
        })?;
        texts.push(text.to_string());
    }
    Ok(Tal {
        onset,
        duration,
        texts,
    })
}

/// `"12.5"` when the bytes look numeric, else `(7 bytes)`, so that error messages never
/// repeat free text.
fn numeric_or_len(b: &[u8]) -> String {
    if b.len() <= 24
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.'))
    {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("({} bytes)", b.len())
    }
}

fn parse_unsigned(b: &[u8]) -> Option<f64> {
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        return None;
    }
    if b.iter().filter(|c| **c == b'.').count() > 1 || b == b"." {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Appends one TAL to `out`. Onsets and durations are written with up to 7 decimals (100 ns),
/// the resolution EDF+ writers use, without trailing zeros. Control characters in texts
/// (0x00, 0x14 and 0x15 delimit TALs) become spaces, so any text makes a valid TAL.
pub fn write_tal(out: &mut Vec<u8>, onset: f64, duration: Option<f64>, texts: &[&str]) {
    out.push(if onset < 0.0 { b'-' } else { b'+' });
    out.extend_from_slice(format_seconds(onset.abs()).as_bytes());
    if let Some(d) = duration {
        out.push(0x15);
        out.extend_from_slice(format_seconds(d.abs()).as_bytes());
    }
    out.push(0x14);
    if texts.is_empty() {
        out.push(0x14);
    }
    for t in texts {
        // UTF-8 never uses bytes below 0x80 inside a multi-byte character.
        out.extend(t.bytes().map(|b| if b < 0x20 { b' ' } else { b }));
        out.push(0x14);
    }
    out.push(0);
}

fn format_seconds(v: f64) -> String {
    let s = format!("{v:.7}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> String {
        "annotations".to_string()
    }

    #[test]
    fn parses_time_keeping_and_text_tals() {
        let b = b"+0.3945312\x14\x14\x00+2.3457031\x14XLSpike\x14\x00\x00\x00";
        let tals = parse_tals(b, &f).unwrap();
        assert_eq!(tals.len(), 2);
        assert!(tals[0].is_time_keeping());
        assert_eq!(tals[0].onset, 0.3945312);
        assert_eq!(tals[1].texts, vec!["XLSpike"]);
        assert_eq!(tals[1].duration, None);
    }

    #[test]
    fn parses_durations_negative_onsets_several_texts_and_utf8() {
        let b = "-1.5\x1525.25\x14Apnea\x14\u{4e2d}\u{6587}\x14\x00".as_bytes();
        let tals = parse_tals(b, &f).unwrap();
        assert_eq!(tals[0].onset, -1.5);
        assert_eq!(tals[0].duration, Some(25.25));
        assert_eq!(tals[0].texts, vec!["Apnea", "\u{4e2d}\u{6587}"]);
    }

    #[test]
    fn rejects_an_onset_without_a_sign() {
        let e = parse_tals(b"12.5\x14text\x14\x00", &f).unwrap_err();
        assert!(e.to_string().contains("must start with '+' or '-'"), "{e}");
    }

    #[test]
    fn rejects_malformed_numbers_and_missing_terminators() {
        assert!(parse_tals(b"+1.2.3\x14\x14\x00", &f).is_err());
        assert!(parse_tals(b"+1\x15-2\x14x\x14\x00", &f).is_err());
        assert!(parse_tals(b"+1\x14x\x14", &f).is_err());
        assert!(parse_tals(b"+1\x00", &f).is_err());
        assert!(parse_tals(b"+\x14\x14\x00", &f).is_err());
    }

    #[test]
    fn written_tals_parse_back() {
        let mut out = Vec::new();
        write_tal(&mut out, 0.3945312, None, &[]);
        write_tal(&mut out, -2.0, Some(0.5), &["a", "\u{4e2d}"]);
        write_tal(&mut out, 1.0, None, &["a\x14b\x00c\x15d"]);
        let tals = parse_tals(&out, &f).unwrap();
        assert_eq!(tals[2].texts, vec!["a b c d"]);
        assert_eq!(tals[0].onset, 0.3945312);
        assert!(tals[0].is_time_keeping());
        assert_eq!(tals[1].onset, -2.0);
        assert_eq!(tals[1].duration, Some(0.5));
        assert_eq!(tals[1].texts, vec!["a", "\u{4e2d}"]);
        assert_eq!(&out[..12], b"+0.3945312\x14\x14");
    }
}
