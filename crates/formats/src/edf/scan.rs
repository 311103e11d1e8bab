//! Reads a whole file into memory: for tests, the fuzz target and small files. The ingest
//! pipeline streams instead.

use std::io::Read;

use super::header::Header;
use super::reader::EdfReader;
use super::timeline::{Timeline, TimelineSummary};
use super::triggers::{Trigger, TriggerDecoder, is_status_channel};
use crate::Result;

/// Everything in a file.
#[derive(Debug)]
pub struct Scan {
    pub header: Header,
    pub timeline: TimelineSummary,
    /// Digital samples of every signal, in header order; empty for annotation signals.
    pub samples: Vec<Vec<i32>>,
    pub triggers: Vec<Trigger>,
}

/// Reads, validates and decodes every record.
pub fn read_to_memory<R: Read>(reader: R, file_size: u64) -> Result<Scan> {
    let mut reader = EdfReader::open(reader, file_size)?;
    let header = reader.header().clone();
    let mut timeline = Timeline::new(&header);
    let mut samples: Vec<Vec<i32>> = vec![Vec::new(); header.signals.len()];
    let status = header
        .signals
        .iter()
        .position(|s| is_status_channel(&header, s));
    let mut triggers = TriggerDecoder::new();
    let mut buf = Vec::new();
    while let Some(block) = reader.read_block(&mut buf, 64)? {
        timeline.push_block(&header, &block)?;
        for i in header.data_signals() {
            let before = samples[i].len();
            block.samples_i32(&header.signals[i], &mut samples[i]);
            if Some(i) == status {
                triggers.push(&samples[i][before..])?;
            }
        }
    }
    Ok(Scan {
        header,
        timeline: timeline.finish(),
        samples,
        triggers: triggers.finish(),
    })
}
