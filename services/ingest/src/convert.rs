//! The CPU part of ingest: EDF/BDF records in, Parquet signal files out.
//!
//! Runs on the ingest CPU pool, never on the IO runtime. Records are read in blocks of about
//! [`BLOCK_BYTES`]; each block's channels are decoded and encoded in parallel, one channel per
//! task, straight from the record bytes into each channel's signal file. The annotation
//! signals go through the [`Timeline`] on the way. Finished files go to `sink` as they complete,
//! and channel files are cut into parts whenever the encoded bytes held in memory pass
//! [`ConvertOptions::flush_bytes`], so memory stays bounded whatever the recording's length or
//! channel count.

use std::io::Read;

use bytes::Bytes;
use gbrain_formats::edf::{
    EdfReader, Encoding, Header, Timeline, TimelineSummary, Trigger, TriggerDecoder,
    is_status_channel,
};
use gbrain_storage::signal::{SampleWidth, SignalFileWriter};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Target bytes of records per block.
pub const BLOCK_BYTES: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Encoded bytes held in memory before every channel's current part is written out.
    pub flush_bytes: usize,
    /// Bytes of records read and encoded as one block.
    pub block_bytes: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            flush_bytes: 256 << 20,
            block_bytes: BLOCK_BYTES,
        }
    }
}

/// A finished signal file.
#[derive(Debug)]
pub struct FinishedPart {
    /// Index of the signal in the header.
    pub channel: u32,
    pub part: u32,
    pub first_sample: u64,
    pub rows: u64,
    pub bytes: Bytes,
}

/// What a conversion found besides the samples.
#[derive(Debug)]
pub struct Converted {
    pub timeline: TimelineSummary,
    /// BioSemi triggers, with the Status channel's index.
    pub triggers: Option<(usize, Vec<Trigger>)>,
    /// Samples per header signal (0 for annotation signals).
    pub samples: Vec<u64>,
    /// SHA-256 of the whole file, when asked for.
    pub sha256: Option<[u8; 32]>,
}

struct ChannelState {
    signal: usize,
    width: SampleWidth,
    writer: Option<SignalFileWriter>,
    part: u32,
    written: u64,
    buf: Vec<i32>,
    triggers: Option<TriggerDecoder>,
    recording_id: String,
}

impl ChannelState {
    fn writer(&mut self) -> Result<&mut SignalFileWriter> {
        if self.writer.is_none() {
            let w = SignalFileWriter::new(
                self.width,
                self.written,
                vec![
                    ("gbrain.recording_id".into(), self.recording_id.clone()),
                    ("gbrain.channel_index".into(), self.signal.to_string()),
                ],
            )?;
            self.writer = Some(w);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| Error::Internal("signal writer missing".into()))
    }

    fn take_part(&mut self) -> Result<Option<FinishedPart>> {
        let Some(w) = self.writer.take() else {
            return Ok(None);
        };
        let rows = w.rows();
        let first_sample = self.written;
        let bytes = w.finish()?;
        self.written += rows;
        let part = FinishedPart {
            channel: self.signal as u32,
            part: self.part,
            first_sample,
            rows,
            bytes,
        };
        self.part += 1;
        Ok(Some(part))
    }
}

/// Converts every record of `reader`. `sink` receives finished files in no particular order;
/// an error from it stops the conversion. With `hash`, the whole file is hashed on the way, in
/// parallel with the encoding.
pub fn convert<R: Read>(
    reader: &mut EdfReader<R>,
    recording_id: &str,
    options: &ConvertOptions,
    hash: bool,
    sink: &mut dyn FnMut(FinishedPart) -> Result<()>,
) -> Result<Converted> {
    let header: Header = reader.header().clone();
    let width = match header.format.encoding {
        Encoding::Int16 => SampleWidth::Int16,
        Encoding::Int24 => SampleWidth::Int32,
    };
    let mut hasher = hash.then(|| {
        let mut h = Sha256::new();
        h.update(reader.raw_header());
        h
    });
    let mut states: Vec<ChannelState> = header
        .data_signals()
        .map(|i| ChannelState {
            signal: i,
            width,
            writer: None,
            part: 0,
            written: 0,
            buf: Vec::new(),
            triggers: is_status_channel(&header, &header.signals[i]).then(TriggerDecoder::new),
            recording_id: recording_id.to_string(),
        })
        .collect();
    let record_bytes = header.record_bytes().max(1);
    let per_block = (options.block_bytes / record_bytes).max(1);
    let mut timeline = Timeline::new(&header);
    let mut buf = Vec::new();

    while let Some(block) = reader.read_block(&mut buf, per_block)? {
        timeline.push_block(&header, &block)?;
        let mut encode = || -> Result<()> {
            states.par_iter_mut().try_for_each(|st| -> Result<()> {
                let signal = &header.signals[st.signal];
                st.buf.clear();
                block.samples_i32(signal, &mut st.buf);
                if let Some(t) = st.triggers.as_mut() {
                    t.push(&st.buf)?;
                }
                let samples = std::mem::take(&mut st.buf);
                let pushed = st
                    .writer()
                    .and_then(|w| w.push(&samples).map_err(Error::from));
                st.buf = samples;
                pushed
            })
        };
        match hasher.as_mut() {
            Some(h) => {
                let data = block.data();
                let ((), encoded) = rayon::join(|| h.update(data), encode);
                encoded?;
            }
            None => encode()?,
        }
        let held: usize = states
            .iter()
            .filter_map(|s| s.writer.as_ref())
            .map(SignalFileWriter::buffered_bytes)
            .sum();
        if held > options.flush_bytes {
            flush(&mut states, sink)?;
        }
    }
    flush(&mut states, sink)?;

    let mut samples = vec![0u64; header.signals.len()];
    let mut triggers = None;
    for st in states {
        samples[st.signal] = st.written;
        if let Some(t) = st.triggers {
            triggers = Some((st.signal, t.finish()));
        }
    }
    Ok(Converted {
        timeline: timeline.finish(),
        triggers,
        samples,
        sha256: hasher.map(|h| h.finalize().into()),
    })
}

fn flush(
    states: &mut [ChannelState],
    sink: &mut dyn FnMut(FinishedPart) -> Result<()>,
) -> Result<()> {
    let parts: Vec<Option<FinishedPart>> = states
        .par_iter_mut()
        .map(ChannelState::take_part)
        .collect::<Result<_>>()?;
    for p in parts.into_iter().flatten() {
        sink(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gbrain_storage::signal::read_signal_file;

    fn data_dir() -> std::path::PathBuf {
        std::env::var_os("GBRAIN_TEST_DATA")
            .map(Into::into)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
            })
    }

    #[test]
    fn converts_losslessly_and_cuts_parts_under_memory_pressure() {
        let bytes = std::fs::read(data_dir().join("eeg_edf/test_generator.bdf")).unwrap();
        let reference =
            gbrain_formats::edf::read_to_memory(&bytes[..], bytes.len() as u64).unwrap();
        for flush_bytes in [usize::MAX, 1] {
            let mut reader = EdfReader::open(&bytes[..], bytes.len() as u64).unwrap();
            let mut parts = Vec::new();
            let converted = convert(
                &mut reader,
                "rec",
                &ConvertOptions {
                    flush_bytes,
                    block_bytes: 50_000,
                },
                true,
                &mut |p| {
                    parts.push(p);
                    Ok(())
                },
            )
            .unwrap();
            let want_sha: [u8; 32] = Sha256::digest(&bytes).into();
            assert_eq!(converted.sha256, Some(want_sha));
            for (i, want) in reference.samples.iter().enumerate() {
                let mut mine: Vec<&FinishedPart> =
                    parts.iter().filter(|p| p.channel as usize == i).collect();
                mine.sort_by_key(|p| p.part);
                let mut got = Vec::new();
                for p in mine {
                    let (first, values) = read_signal_file(p.bytes.clone(), "t").unwrap();
                    assert_eq!(first, got.len() as u64);
                    got.extend(values);
                }
                assert_eq!(&got, want, "signal {i}");
                assert_eq!(converted.samples[i], want.len() as u64);
            }
            if flush_bytes == 1 {
                assert!(parts.iter().any(|p| p.part > 0), "small budgets cut parts");
            }
        }
    }
}
