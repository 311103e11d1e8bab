//! Writes EDF+ and BDF+ files, record by record, for export.

use std::io::Write;

use chrono::NaiveDateTime;

use super::header::{Encoding, FileFormat, Variant};
use crate::{Error, Result};

/// The header of a file to write.
#[derive(Clone, Debug)]
pub struct WriterHeader {
    pub format: FileFormat,
    /// The 80-character patient field (already de-identified by the caller).
    pub patient: String,
    /// The 80-character recording field (already de-identified by the caller).
    pub recording: String,
    pub start: NaiveDateTime,
    pub num_records: u64,
    /// The duration text, written as given (`1`, `0.5`).
    pub record_duration_text: String,
    pub signals: Vec<WriterSignal>,
}

/// One signal of a file to write.
#[derive(Clone, Debug)]
pub struct WriterSignal {
    pub label: String,
    pub transducer: String,
    pub physical_dimension: String,
    pub physical_min_text: String,
    pub physical_max_text: String,
    pub digital_min: i32,
    pub digital_max: i32,
    pub prefiltering: String,
    pub samples_per_record: usize,
    pub reserved: String,
}

impl WriterSignal {
    /// An `EDF Annotations` / `BDF Annotations` signal of `samples_per_record` samples.
    pub fn annotations(encoding: Encoding, samples_per_record: usize) -> Self {
        let (digital_min, digital_max) = encoding.digital_range();
        Self {
            label: match encoding {
                Encoding::Int16 => "EDF Annotations".into(),
                Encoding::Int24 => "BDF Annotations".into(),
            },
            transducer: String::new(),
            physical_dimension: String::new(),
            physical_min_text: "-1".into(),
            physical_max_text: "1".into(),
            digital_min,
            digital_max,
            prefiltering: String::new(),
            samples_per_record,
            reserved: String::new(),
        }
    }

    fn is_annotation(&self) -> bool {
        self.label == "EDF Annotations" || self.label == "BDF Annotations"
    }
}

/// What goes into one data record: samples for ordinary signals, TAL bytes for annotation
/// signals, in the header's signal order.
#[derive(Debug)]
pub enum RecordSignal<'a> {
    Samples(&'a [i32]),
    Annotations(&'a [u8]),
}

/// Writes the header on creation, then one record per [`EdfWriter::write_record`] call.
pub struct EdfWriter<W> {
    out: W,
    header: WriterHeader,
    records: u64,
    buf: Vec<u8>,
}

impl<W: Write> EdfWriter<W> {
    pub fn new(mut out: W, header: WriterHeader) -> Result<Self> {
        if header.format.variant == Variant::Plain {
            return Err(Error::unsupported(
                "format",
                "the writer writes EDF+ or BDF+ only",
            ));
        }
        let bytes = encode_header(&header)?;
        out.write_all(&bytes)?;
        Ok(Self {
            out,
            header,
            records: 0,
            buf: Vec::new(),
        })
    }

    pub fn write_record(&mut self, signals: &[RecordSignal<'_>]) -> Result<()> {
        if self.records == self.header.num_records {
            return Err(Error::invalid(
                "data_records",
                format!("the header declares {} records", self.header.num_records),
            ));
        }
        if signals.len() != self.header.signals.len() {
            return Err(Error::invalid(
                "data_records",
                format!(
                    "record has {} signals, the header {}",
                    signals.len(),
                    self.header.signals.len()
                ),
            ));
        }
        let encoding = self.header.format.encoding;
        let bps = encoding.bytes_per_sample();
        self.buf.clear();
        for (i, (sig, data)) in self.header.signals.iter().zip(signals).enumerate() {
            let width = sig.samples_per_record * bps;
            match data {
                RecordSignal::Samples(samples) => {
                    if samples.len() != sig.samples_per_record {
                        return Err(Error::invalid(
                            format!("signal[{i}] ({})", sig.label),
                            format!(
                                "{} samples for a record of {}",
                                samples.len(),
                                sig.samples_per_record
                            ),
                        ));
                    }
                    match encoding {
                        Encoding::Int16 => {
                            for &v in *samples {
                                let v = i16::try_from(v).map_err(|_| {
                                    Error::invalid(
                                        format!("signal[{i}] ({})", sig.label),
                                        format!("sample {v} does not fit 16 bits"),
                                    )
                                })?;
                                self.buf.extend_from_slice(&v.to_le_bytes());
                            }
                        }
                        Encoding::Int24 => {
                            for &v in *samples {
                                self.buf.extend_from_slice(&v.to_le_bytes()[..3]);
                            }
                        }
                    }
                }
                RecordSignal::Annotations(tals) => {
                    if tals.len() > width {
                        return Err(Error::invalid(
                            format!("signal[{i}] ({})", sig.label),
                            format!("{} TAL bytes do not fit {width}", tals.len()),
                        ));
                    }
                    self.buf.extend_from_slice(tals);
                    self.buf.resize(self.buf.len() + width - tals.len(), 0);
                }
            }
        }
        self.out.write_all(&self.buf)?;
        self.records += 1;
        Ok(())
    }

    /// Checks that every declared record was written and hands back the sink.
    pub fn finish(mut self) -> Result<W> {
        if self.records != self.header.num_records {
            return Err(Error::invalid(
                "data_records",
                format!(
                    "wrote {} records, the header declares {}",
                    self.records, self.header.num_records
                ),
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn encode_header(h: &WriterHeader) -> Result<Vec<u8>> {
    let ns = h.signals.len();
    if ns == 0 || ns > super::header::MAX_SIGNALS {
        return Err(Error::invalid("signals", format!("{ns} signals")));
    }
    let mut out = Vec::with_capacity(256 * (ns + 1));
    match h.format.encoding {
        Encoding::Int16 => put(&mut out, "0", 8, "version")?,
        Encoding::Int24 => {
            out.push(0xff);
            put(&mut out, "BIOSEMI", 7, "version")?;
        }
    }
    put(&mut out, &h.patient, 80, "patient")?;
    put(&mut out, &h.recording, 80, "recording")?;
    // Two-digit years cover 1985-2084.
    put(
        &mut out,
        &h.start.format("%d.%m.%y").to_string(),
        8,
        "start_date",
    )?;
    put(
        &mut out,
        &h.start.format("%H.%M.%S").to_string(),
        8,
        "start_time",
    )?;
    put(&mut out, &(256 * (ns + 1)).to_string(), 8, "header_bytes")?;
    let reserved = match (h.format.encoding, h.format.variant) {
        (Encoding::Int16, Variant::Discontinuous) => "EDF+D",
        (Encoding::Int16, _) => "EDF+C",
        (Encoding::Int24, Variant::Discontinuous) => "BDF+D",
        (Encoding::Int24, _) => "BDF+C",
    };
    put(&mut out, reserved, 44, "reserved")?;
    put(&mut out, &h.num_records.to_string(), 8, "num_records")?;
    put(&mut out, &h.record_duration_text, 8, "record_duration")?;
    put(&mut out, &ns.to_string(), 4, "num_signals")?;
    let s = &h.signals;
    for x in s {
        put(&mut out, &x.label, 16, "label")?;
    }
    for x in s {
        put(&mut out, &x.transducer, 80, "transducer")?;
    }
    for x in s {
        put(&mut out, &x.physical_dimension, 8, "physical_dimension")?;
    }
    for x in s {
        put(&mut out, &x.physical_min_text, 8, "physical_min")?;
    }
    for x in s {
        put(&mut out, &x.physical_max_text, 8, "physical_max")?;
    }
    for x in s {
        put(&mut out, &x.digital_min.to_string(), 8, "digital_min")?;
    }
    for x in s {
        put(&mut out, &x.digital_max.to_string(), 8, "digital_max")?;
    }
    for x in s {
        put(&mut out, &x.prefiltering, 80, "prefiltering")?;
    }
    for x in s {
        put(
            &mut out,
            &x.samples_per_record.to_string(),
            8,
            "samples_per_record",
        )?;
    }
    for x in s {
        put(&mut out, &x.reserved, 32, "reserved")?;
    }
    if !s.iter().any(WriterSignal::is_annotation) {
        return Err(Error::invalid(
            "signals",
            "EDF+/BDF+ needs an annotation signal",
        ));
    }
    Ok(out)
}

fn put(out: &mut Vec<u8>, value: &str, width: usize, field: &str) -> Result<()> {
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Error::invalid(field, "is not printable ASCII"));
    }
    if value.len() > width {
        return Err(Error::invalid(
            field,
            format!("{value:?} is longer than {width} characters"),
        ));
    }
    out.extend_from_slice(value.as_bytes());
    out.resize(out.len() + width - value.len(), b' ');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::reader::EdfReader;
    use super::super::tal::write_tal;
    use super::super::timeline::Timeline;
    use super::*;

    #[test]
    fn round_trips_through_the_reader() {
        for (encoding, dmin, dmax) in [
            (Encoding::Int16, -32768, 32767),
            (Encoding::Int24, -8_388_608, 8_388_607),
        ] {
            let header = WriterHeader {
                format: FileFormat {
                    encoding,
                    variant: Variant::Discontinuous,
                },
                patient: "gb-abc X X X".into(),
                recording: "Startdate X X X X".into(),
                start: chrono::NaiveDate::from_ymd_opt(2001, 2, 3)
                    .unwrap()
                    .and_hms_opt(4, 5, 6)
                    .unwrap(),
                num_records: 2,
                record_duration_text: "0.5".into(),
                signals: vec![
                    WriterSignal {
                        label: "Cz".into(),
                        transducer: "AgAgCl".into(),
                        physical_dimension: "uV".into(),
                        physical_min_text: "-500".into(),
                        physical_max_text: "500".into(),
                        digital_min: dmin,
                        digital_max: dmax,
                        prefiltering: "HP:0.1Hz".into(),
                        samples_per_record: 3,
                        reserved: String::new(),
                    },
                    WriterSignal::annotations(encoding, 20),
                ],
            };
            let mut w = EdfWriter::new(Vec::new(), header).unwrap();
            for (r, onset) in [(0, 0.1), (1, 7.0)] {
                let mut tal = Vec::new();
                write_tal(&mut tal, onset, None, &[]);
                if r == 1 {
                    write_tal(&mut tal, 7.2, Some(0.1), &["blink"]);
                }
                let samples = [dmin, -1, dmax];
                w.write_record(&[
                    RecordSignal::Samples(&samples),
                    RecordSignal::Annotations(&tal),
                ])
                .unwrap();
            }
            let bytes = w.finish().unwrap();
            let mut reader = EdfReader::open(&bytes[..], bytes.len() as u64).unwrap();
            let h = reader.header().clone();
            assert_eq!(h.format.variant, Variant::Discontinuous);
            assert_eq!(h.signals[0].prefiltering, "HP:0.1Hz");
            let mut buf = Vec::new();
            let block = reader.read_block(&mut buf, 10).unwrap().unwrap();
            let mut samples = Vec::new();
            block.samples_i32(&h.signals[0], &mut samples);
            assert_eq!(samples, vec![dmin, -1, dmax, dmin, -1, dmax]);
            let mut t = Timeline::new(&h);
            t.push_block(&h, &block).unwrap();
            let s = t.finish();
            assert_eq!(s.segments.len(), 2);
            assert!((s.segments[1].onset - 6.9).abs() < 1e-9);
            assert_eq!(s.annotations[0].text, "blink");
        }
    }
}
