//! The streaming reader: the header, then data records in blocks.

use std::io::{ErrorKind, Read};

use super::header::{
    Encoding, FIXED_HEADER_BYTES, Header, SIGNAL_HEADER_BYTES, SignalHeader, parse_header,
    signal_count,
};
use crate::{Error, Result};

/// Reads an EDF or BDF file from any byte stream, a block of records at a time.
///
/// The file size must be known up front: it resolves `num_records = -1` and lets the header be
/// checked against the body before any sample is read.
pub struct EdfReader<R> {
    inner: R,
    header: Header,
    raw_header: Vec<u8>,
    next_record: u64,
    record_bytes: usize,
}

impl<R: Read> EdfReader<R> {
    pub fn open(mut inner: R, file_size: u64) -> Result<Self> {
        let mut bytes = vec![0u8; FIXED_HEADER_BYTES];
        read_exact(&mut inner, &mut bytes, || {
            Error::invalid(
                "header",
                format!("file is shorter than the fixed header of {FIXED_HEADER_BYTES} bytes"),
            )
        })?;
        let ns = signal_count(&bytes)?;
        let total = FIXED_HEADER_BYTES + ns * SIGNAL_HEADER_BYTES;
        if (total as u64) > file_size {
            return Err(Error::invalid(
                "header",
                format!(
                    "file is shorter than its header: {ns} signals need {total} header bytes, the \
                     file has {file_size}"
                ),
            ));
        }
        bytes.resize(total, 0);
        read_exact(&mut inner, &mut bytes[FIXED_HEADER_BYTES..], || {
            Error::invalid(
                "header",
                format!("file ended inside the signal headers ({total} bytes expected)"),
            )
        })?;
        let header = parse_header(&bytes, file_size)?;
        let record_bytes = header.record_bytes();
        Ok(Self {
            inner,
            header,
            raw_header: bytes,
            next_record: 0,
            record_bytes,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The header exactly as read: personal data included, so never store or log it.
    pub fn raw_header(&self) -> &[u8] {
        &self.raw_header
    }

    /// Records read so far.
    pub fn records_read(&self) -> u64 {
        self.next_record
    }

    /// Reads up to `max_records` records into `buf`, which is reused between calls. Returns
    /// `None` after the last record.
    pub fn read_block<'a>(
        &mut self,
        buf: &'a mut Vec<u8>,
        max_records: usize,
    ) -> Result<Option<RecordBlock<'a>>> {
        let left = self.header.num_records - self.next_record;
        if left == 0 {
            return Ok(None);
        }
        let n = (max_records.max(1) as u64).min(left) as usize;
        let len = n * self.record_bytes;
        buf.resize(len, 0);
        let first = self.next_record;
        read_exact(&mut self.inner, &mut buf[..len], || {
            Error::invalid(
                "data_records",
                format!("file ended inside data record {first} or one of the {n} after it"),
            )
        })?;
        self.next_record += n as u64;
        Ok(Some(RecordBlock {
            data: &buf[..len],
            first_record: first,
            num_records: n,
            record_bytes: self.record_bytes,
            encoding: self.header.format.encoding,
        }))
    }

    /// Hands back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// A run of consecutive data records, borrowed from the reader's buffer.
#[derive(Clone, Copy)]
pub struct RecordBlock<'a> {
    data: &'a [u8],
    pub first_record: u64,
    pub num_records: usize,
    record_bytes: usize,
    encoding: Encoding,
}

impl<'a> RecordBlock<'a> {
    /// Wraps `n` whole records of `header`'s layout that are already in memory.
    pub fn new(header: &Header, data: &'a [u8], first_record: u64) -> Result<Self> {
        let record_bytes = header.record_bytes();
        if record_bytes == 0 || !data.len().is_multiple_of(record_bytes) {
            return Err(Error::invalid(
                "data_records",
                format!(
                    "{} bytes are not whole records of {record_bytes}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            data,
            first_record,
            num_records: data.len() / record_bytes,
            record_bytes,
            encoding: header.format.encoding,
        })
    }

    /// The raw bytes of the block's records.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes of `signal` in record `record` (0-based within this block).
    pub fn signal_bytes(&self, record: usize, signal: &SignalHeader) -> &'a [u8] {
        let start = record * self.record_bytes + signal.offset_in_record;
        &self.data[start..start + signal.samples_per_record * self.encoding.bytes_per_sample()]
    }

    /// Appends the digital samples of `signal` over every record of the block. For EDF only.
    pub fn samples_i16(&self, signal: &SignalHeader, out: &mut Vec<i16>) {
        debug_assert_eq!(self.encoding, Encoding::Int16);
        out.reserve(signal.samples_per_record * self.num_records);
        for r in 0..self.num_records {
            let b = self.signal_bytes(r, signal);
            out.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
        }
    }

    /// Appends the digital samples of `signal` over every record of the block, widened to
    /// i32. BDF's int24 is sign-extended.
    pub fn samples_i32(&self, signal: &SignalHeader, out: &mut Vec<i32>) {
        out.reserve(signal.samples_per_record * self.num_records);
        for r in 0..self.num_records {
            let b = self.signal_bytes(r, signal);
            match self.encoding {
                Encoding::Int16 => out.extend(
                    b.chunks_exact(2)
                        .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))),
                ),
                Encoding::Int24 => out.extend(b.chunks_exact(3).map(decode_i24)),
            }
        }
    }
}

/// Little-endian int24 to i32 with sign extension.
#[inline]
pub(crate) fn decode_i24(c: &[u8]) -> i32 {
    (i32::from_le_bytes([0, c[0], c[1], c[2]])) >> 8
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], eof: impl FnOnce() -> Error) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(eof()),
        Err(e) => Err(Error::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::tests::HeaderBuilder;
    use super::*;

    #[test]
    fn sign_extends_int24() {
        assert_eq!(decode_i24(&[0xff, 0xff, 0xff]), -1);
        assert_eq!(decode_i24(&[0x00, 0x00, 0x80]), -(1 << 23));
        assert_eq!(decode_i24(&[0xff, 0xff, 0x7f]), (1 << 23) - 1);
        assert_eq!(decode_i24(&[0x56, 0x34, 0x12]), 0x123456);
    }

    #[test]
    fn reads_mixed_rates_across_blocks() {
        let mut b = HeaderBuilder::edf(&[("A", 4), ("B", 1)]);
        b.num_records = "3".into();
        let mut file = b.build();
        for r in 0..3i16 {
            for s in 0..4i16 {
                file.extend((r * 10 + s).to_le_bytes());
            }
            file.extend((-r).to_le_bytes());
        }
        let size = file.len() as u64;
        let mut reader = EdfReader::open(&file[..], size).unwrap();
        let header = reader.header().clone();
        let mut buf = Vec::new();
        let (mut a, mut bb) = (Vec::new(), Vec::new());
        while let Some(block) = reader.read_block(&mut buf, 2).unwrap() {
            block.samples_i16(&header.signals[0], &mut a);
            block.samples_i32(&header.signals[1], &mut bb);
        }
        assert_eq!(a, vec![0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]);
        assert_eq!(bb, vec![0, -1, -2]);
        assert_eq!(reader.records_read(), 3);
    }

    #[test]
    fn a_lying_size_gives_an_error_not_a_panic() {
        let mut b = HeaderBuilder::edf(&[("A", 4)]);
        b.num_records = "3".into();
        let mut file = b.build();
        file.extend([0u8; 8]);
        // The caller claims the whole file is there; the stream ends early.
        let size = (file.len() + 16) as u64;
        let mut reader = EdfReader::open(&file[..], size).unwrap();
        let mut buf = Vec::new();
        let e = reader.read_block(&mut buf, 10).err().unwrap();
        assert_eq!(e.field(), Some("data_records"));
    }
}
