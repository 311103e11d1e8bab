//! When each data record starts, and the annotations: what the TALs say, record by record.

use super::header::{Header, Variant};
use super::reader::RecordBlock;
use super::tal::parse_tals;
use crate::{Error, Result};

/// Onsets closer than this are the same instant. TALs carry at most 100 ns resolution.
const TOLERANCE_S: f64 = 5e-7;

/// More annotations than this in one file is refused rather than held in memory: ten million
/// is one every 10 ms for a day.
pub const MAX_ANNOTATIONS: usize = 10_000_000;

/// Onsets further than this from the header's start (about 317 years) are refused.
pub const MAX_ONSET_S: f64 = 1e10;

/// A run of contiguous data records.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub first_record: u64,
    pub num_records: u64,
    /// Seconds from the recording's start (its first sample) to the segment's first sample.
    pub onset: f64,
}

/// One annotation text from a TAL.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    /// Seconds from the recording's start. Negative onsets are kept.
    pub onset: f64,
    pub duration: Option<f64>,
    pub text: String,
    /// Index of the annotation signal that carried it.
    pub signal: usize,
    pub record: u64,
}

/// Builds the record timeline and collects annotations while records stream past.
///
/// Times are relative to the recording's start: the header's start plus the first record's
/// time-keeping onset, which is how EDF+ states a sub-second start.
#[derive(Debug)]
pub struct Timeline {
    record_duration: f64,
    variant: Variant,
    first_onset: Option<f64>,
    segments: Vec<Segment>,
    annotations: Vec<Annotation>,
    annotation_signals: Vec<usize>,
    warned_contiguity: bool,
    warnings: Vec<String>,
    records: u64,
}

impl Timeline {
    pub fn new(header: &Header) -> Self {
        Self {
            record_duration: header.record_duration,
            variant: header.format.variant,
            first_onset: None,
            segments: Vec::new(),
            annotations: Vec::new(),
            annotation_signals: header.annotation_signals().collect(),
            warned_contiguity: false,
            warnings: Vec::new(),
            records: 0,
        }
    }

    /// Consumes the annotation signals of every record in `block`. Blocks must come in order.
    pub fn push_block(&mut self, header: &Header, block: &RecordBlock<'_>) -> Result<()> {
        for r in 0..block.num_records {
            let record = block.first_record + r as u64;
            let mut onset = None;
            for n in 0..self.annotation_signals.len() {
                let s = self.annotation_signals[n];
                let signal = &header.signals[s];
                let field = || format!("signal[{s}] ({}).record[{record}]", signal.label);
                let tals = parse_tals(block.signal_bytes(r, signal), &field)?;
                let mut tals = tals.into_iter();
                if n == 0 && header.format.is_plus() {
                    let keeper = tals.next().ok_or_else(|| {
                        Error::invalid(
                            field(),
                            "the first annotation signal of every record must start with a \
                             time-keeping TAL, and this one is empty",
                        )
                    })?;
                    onset = Some(keeper.onset);
                    // Texts on the time-keeping TAL are annotations all the same.
                    self.push_texts(
                        keeper.onset,
                        keeper.duration,
                        keeper.texts,
                        s,
                        record,
                        &field,
                    )?;
                }
                for tal in tals {
                    self.push_texts(tal.onset, tal.duration, tal.texts, s, record, &field)?;
                }
            }
            self.push_record(record, onset)?;
        }
        Ok(())
    }

    fn push_texts(
        &mut self,
        raw_onset: f64,
        duration: Option<f64>,
        texts: Vec<String>,
        signal: usize,
        record: u64,
        field: &dyn Fn() -> String,
    ) -> Result<()> {
        let in_range = |v: f64| v.is_finite() && v.abs() <= MAX_ONSET_S;
        if !in_range(raw_onset) || duration.is_some_and(|d| !in_range(d)) {
            return Err(Error::invalid(
                field(),
                format!("TAL onset or duration beyond {MAX_ONSET_S} s"),
            ));
        }
        for text in texts.into_iter().filter(|t| !t.is_empty()) {
            if self.annotations.len() >= MAX_ANNOTATIONS {
                return Err(Error::invalid(
                    field(),
                    format!("more than {MAX_ANNOTATIONS} annotations in one file"),
                ));
            }
            // Relative to the header's start here; `finish` rebases every onset onto the
            // recording's start once the first record's onset is known.
            self.annotations.push(Annotation {
                onset: raw_onset,
                duration,
                text,
                signal,
                record,
            });
        }
        Ok(())
    }

    fn push_record(&mut self, record: u64, raw_onset: Option<f64>) -> Result<()> {
        self.records += 1;
        let first = *self.first_onset.get_or_insert(raw_onset.unwrap_or(0.0));
        let onset = match raw_onset {
            Some(o) => o - first,
            None => record as f64 * self.record_duration,
        };
        let Some(last) = self.segments.last_mut() else {
            self.segments.push(Segment {
                first_record: record,
                num_records: 1,
                onset,
            });
            return Ok(());
        };
        let expected = last.onset + last.num_records as f64 * self.record_duration;
        if (onset - expected).abs() <= TOLERANCE_S {
            last.num_records += 1;
            return Ok(());
        }
        if onset < expected {
            return Err(Error::invalid(
                format!("data_records[{record}]"),
                format!(
                    "record starts at {onset:.7} s, before the previous record ends at \
                     {expected:.7} s; records must not overlap"
                ),
            ));
        }
        if self.variant == Variant::Contiguous && !self.warned_contiguity {
            self.warned_contiguity = true;
            self.warnings.push(format!(
                "file says EDF+C (contiguous) but record {record} starts {:.7} s after the \
                 previous one ends; kept as a gap",
                onset - expected
            ));
        }
        self.segments.push(Segment {
            first_record: record,
            num_records: 1,
            onset,
        });
        Ok(())
    }

    /// Ends the scan.
    pub fn finish(self) -> TimelineSummary {
        let first = self.first_onset.unwrap_or(0.0);
        let annotations = self
            .annotations
            .into_iter()
            .map(|a| Annotation {
                onset: a.onset - first,
                ..a
            })
            .collect();
        TimelineSummary {
            start_offset: first,
            segments: self.segments,
            annotations,
            warnings: self.warnings,
            num_records: self.records,
        }
    }
}

/// What the timeline found.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineSummary {
    /// Seconds from the header's start time to the first sample: the sub-second start.
    pub start_offset: f64,
    pub segments: Vec<Segment>,
    pub annotations: Vec<Annotation>,
    pub warnings: Vec<String>,
    pub num_records: u64,
}

impl TimelineSummary {
    /// Seconds from the recording's start to the end of its last record.
    pub fn duration(&self, record_duration: f64) -> f64 {
        self.segments
            .last()
            .map_or(0.0, |s| s.onset + s.num_records as f64 * record_duration)
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::parse_header;
    use super::super::header::tests::HeaderBuilder;
    use super::super::tal::write_tal;
    use super::*;

    /// An EDF+ file with one data signal (2 samples per record) and an annotation signal of
    /// `ann_spr` samples, records starting at `onsets`.
    fn file(variant: &str, onsets: &[f64], extra: &[(usize, f64, &str)]) -> Vec<u8> {
        let ann_spr = 30;
        let mut b = HeaderBuilder::edf(&[("A", 2), ("EDF Annotations", ann_spr)]);
        b.reserved = variant.into();
        b.num_records = onsets.len().to_string();
        b.duration = "0.5".into();
        let mut f = b.build();
        for (r, onset) in onsets.iter().enumerate() {
            f.extend([1u8, 0, 2, 0]);
            let mut tal = Vec::new();
            write_tal(&mut tal, *onset, None, &[]);
            for (rr, o, t) in extra {
                if *rr == r {
                    write_tal(&mut tal, *o, Some(1.0), &[t]);
                }
            }
            tal.resize(ann_spr * 2, 0);
            f.extend(tal);
        }
        f
    }

    fn scan(f: &[u8]) -> Result<TimelineSummary> {
        let h = parse_header(f, f.len() as u64)?;
        let block = RecordBlock::new(&h, &f[h.header_bytes..], 0)?;
        let mut t = Timeline::new(&h);
        t.push_block(&h, &block)?;
        Ok(t.finish())
    }

    #[test]
    fn takes_the_sub_second_start_from_the_first_tal() {
        let f = file("EDF+C", &[0.25, 0.75, 1.25], &[(1, 2.0, "spike")]);
        let s = scan(&f).unwrap();
        assert_eq!(s.start_offset, 0.25);
        assert_eq!(
            s.segments,
            vec![Segment {
                first_record: 0,
                num_records: 3,
                onset: 0.0
            }]
        );
        assert_eq!(s.annotations.len(), 1);
        assert!((s.annotations[0].onset - 1.75).abs() < 1e-12);
        assert_eq!(s.annotations[0].duration, Some(1.0));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn keeps_edf_plus_d_gaps() {
        let f = file("EDF+D", &[0.0, 0.5, 10.0, 10.5, 30.0], &[]);
        let s = scan(&f).unwrap();
        let onsets: Vec<(u64, u64, f64)> = s
            .segments
            .iter()
            .map(|s| (s.first_record, s.num_records, s.onset))
            .collect();
        assert_eq!(onsets, vec![(0, 2, 0.0), (2, 2, 10.0), (4, 1, 30.0)]);
        assert_eq!(s.duration(0.5), 30.5);
    }

    #[test]
    fn rejects_overlapping_records() {
        let f = file("EDF+D", &[0.0, 0.25], &[]);
        let e = scan(&f).unwrap_err();
        assert_eq!(e.field(), Some("data_records[1]"), "{e}");
    }

    #[test]
    fn warns_when_edf_plus_c_is_not_contiguous() {
        let f = file("EDF+C", &[0.0, 5.0], &[]);
        let s = scan(&f).unwrap();
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn keeps_negative_onsets() {
        let f = file("EDF+C", &[0.0, 0.5], &[(0, -3.0, "before")]);
        let s = scan(&f).unwrap();
        assert_eq!(s.annotations[0].onset, -3.0);
    }

    #[test]
    fn rejects_a_missing_time_keeping_tal() {
        let mut f = file("EDF+C", &[0.0, 0.5], &[]);
        // Blank out the second record's annotation signal.
        let h = parse_header(&f, f.len() as u64).unwrap();
        let start = h.header_bytes + h.record_bytes() + h.signals[1].offset_in_record;
        for b in &mut f[start..start + 60] {
            *b = 0;
        }
        let e = scan(&f).unwrap_err();
        assert!(e.to_string().contains("time-keeping"), "{e}");
    }
}
