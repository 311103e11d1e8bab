//! Signal files: one Parquet file per channel and part, or one per live flush holding every
//! channel (see [`write_channels`]).
//!
//! Columns: `sample_index` (int64, the sample's position in the channel, counting from 0 over
//! the whole recording) and `value` (the original digital sample: int16 for EDF, int32 holding
//! int24 for BDF). Row groups hold [`ROWS_PER_GROUP`] samples with min/max statistics, so a
//! time range becomes a sample range and prunes row groups.
//!
//! The column chunks are written by [`crate::delta`] and spliced into the file with parquet's
//! own file writer, which writes the footer; every Parquet reader reads the result.
//!
//! Deltas of noise-like signals are incompressible, but periodic, synthetic and flat-lined
//! signals (calibration, test, disconnected channels) repeat, and zstd then shrinks their delta
//! pages a hundredfold. Each value chunk is tried with zstd level 1 and kept compressed only when
//! that saves [`ZSTD_MIN_SAVING`]; a channel whose chunks keep not compressing is not tried again
//! for [`ZSTD_BACKOFF_GROUPS`] row groups, so noise costs almost nothing extra.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, Int16Array, Int32Array, Int64Array};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{ColumnChunkMetaData, KeyValue};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnDescPtr, Type};

use crate::delta;
use crate::{Error, Result};

/// Samples per row group: 64 Ki, about two minutes at 512 Hz.
pub const ROWS_PER_GROUP: usize = 1 << 16;

/// The share of bytes zstd must save for a chunk to be stored compressed.
pub const ZSTD_MIN_SAVING: f64 = 0.05;

/// Row groups a channel skips zstd after two chunks in a row did not compress.
pub const ZSTD_BACKOFF_GROUPS: u32 = 16;

/// Key-value metadata key holding the first sample index of the file.
pub const FIRST_SAMPLE_KEY: &str = "gbrain.first_sample";

/// Key-value metadata key holding how many channels a file of [`write_channels`] holds.
pub const CHANNELS_KEY: &str = "gbrain.channels";

/// Row groups each channel spans in a file of [`write_channels`] whose channels hold `rows`
/// samples each.
pub fn groups_per_channel(rows: u64) -> usize {
    rows.div_ceil(ROWS_PER_GROUP as u64).max(1) as usize
}

/// The row groups of channel `channel` in a file of [`write_channels`] whose channels hold
/// `rows` samples each.
pub fn channel_groups(rows: u64, channel: usize) -> Range<usize> {
    let g = groups_per_channel(rows);
    channel * g..(channel + 1) * g
}

/// Writes channels of the same samples into one file, in the layout of a one-channel file:
/// channel 0's values in row groups of their own, then channel 1's, each counting
/// `sample_index` from `first_sample`. A reader picks a channel by its row groups,
/// [`channel_groups`]; any Parquet reader sees every channel's rows one after another.
/// Every channel must hold the same number of samples, at least one.
pub fn write_channels(
    width: SampleWidth,
    first_sample: u64,
    channels: &[Vec<i32>],
) -> Result<Bytes> {
    let rows = channels.first().map_or(0, Vec::len);
    if rows == 0 || channels.iter().any(|c| c.len() != rows) {
        return Err(Error::Corrupt {
            path: "(being written)".into(),
            reason: format!(
                "a multi-channel signal file needs channels of one length, at least 1; got {:?}",
                channels.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        });
    }
    let mut w = SignalFileWriter::new(
        width,
        first_sample,
        vec![(CHANNELS_KEY.to_string(), channels.len().to_string())],
    )?;
    for (i, values) in channels.iter().enumerate() {
        if i > 0 {
            w.next_channel()?;
        }
        w.push(values)?;
    }
    w.finish()
}

/// The stored width of the digital values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleWidth {
    /// EDF: int16.
    Int16,
    /// BDF: int24, stored as int32.
    Int32,
}

fn schema(width: SampleWidth) -> Result<Arc<Type>> {
    let bits = match width {
        SampleWidth::Int16 => 16,
        SampleWidth::Int32 => 32,
    };
    let text = format!(
        "message signal {{ required int64 sample_index (INTEGER(64,true)); required int32 value \
         (INTEGER({bits},true)); }}"
    );
    Ok(Arc::new(parquet::schema::parser::parse_message_type(
        &text,
    )?))
}

/// Writes one signal file, a row group at a time, into memory.
pub struct SignalFileWriter {
    writer: SerializedFileWriter<Vec<u8>>,
    index_column: ColumnDescPtr,
    value_column: ColumnDescPtr,
    pending: Vec<i32>,
    first_sample: u64,
    next_index: u64,
    rows: u64,
    page: Vec<u8>,
    zstd_misses: u32,
    zstd_skip: u32,
}

impl SignalFileWriter {
    /// `first_sample` is the channel-wide index of the first value pushed. `metadata` goes
    /// into the footer's key-value metadata.
    pub fn new(
        width: SampleWidth,
        first_sample: u64,
        metadata: Vec<(String, String)>,
    ) -> Result<Self> {
        let schema = schema(width)?;
        let mut kv: Vec<KeyValue> = metadata
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect();
        kv.push(KeyValue::new(
            FIRST_SAMPLE_KEY.to_string(),
            first_sample.to_string(),
        ));
        let props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("globalbrain {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(kv))
            .build();
        let writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props))?;
        let descr = writer.schema_descr();
        let index_column = descr.column(0);
        let value_column = descr.column(1);
        Ok(Self {
            writer,
            index_column,
            value_column,
            pending: Vec::with_capacity(ROWS_PER_GROUP),
            first_sample,
            next_index: first_sample,
            rows: 0,
            page: Vec::new(),
            zstd_misses: 0,
            zstd_skip: 0,
        })
    }

    /// Appends samples.
    pub fn push(&mut self, mut values: &[i32]) -> Result<()> {
        while !values.is_empty() {
            let room = ROWS_PER_GROUP - self.pending.len();
            let n = room.min(values.len());
            self.pending.extend_from_slice(&values[..n]);
            values = &values[n..];
            if self.pending.len() == ROWS_PER_GROUP {
                self.flush_group()?;
            }
        }
        Ok(())
    }

    /// Ends the current channel's row groups; what is pushed next is another channel's values
    /// from the first sample again ([`write_channels`]).
    pub fn next_channel(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.flush_group()?;
        }
        self.next_index = self.first_sample;
        self.zstd_misses = 0;
        self.zstd_skip = 0;
        Ok(())
    }

    /// Samples written so far, including buffered ones.
    pub fn rows(&self) -> u64 {
        self.rows + self.pending.len() as u64
    }

    /// Bytes held in memory: the encoded file so far plus buffered samples.
    pub fn buffered_bytes(&self) -> usize {
        self.writer.bytes_written() + self.pending.len() * 4
    }

    /// Writes what is buffered and the footer, and returns the file.
    pub fn finish(mut self) -> Result<Bytes> {
        if !self.pending.is_empty() {
            self.flush_group()?;
        }
        let out = self.writer.into_inner()?;
        Ok(Bytes::from(out))
    }

    fn flush_group(&mut self) -> Result<()> {
        let n = self.pending.len();
        let first = self.next_index as i64;

        self.page.clear();
        delta::encode_counting_i64(first, n, &mut self.page);
        let index_stats = Statistics::int64(
            Some(first),
            Some(first + n as i64 - 1),
            None,
            Some(0),
            false,
        );
        let index_chunk = column_chunk(&self.index_column, &self.page, None, n, index_stats)?;

        self.page.clear();
        let (min, max) = delta::encode_i32(&self.pending, &mut self.page);
        let value_stats = Statistics::int32(Some(min), Some(max), None, Some(0), false);
        let compressed = self.try_zstd()?;
        let value_chunk = column_chunk(
            &self.value_column,
            &self.page,
            compressed.as_deref(),
            n,
            value_stats,
        )?;

        let mut group = self.writer.next_row_group()?;
        group.append_column(&index_chunk.0, index_chunk.1)?;
        group.append_column(&value_chunk.0, value_chunk.1)?;
        group.close()?;

        self.rows += n as u64;
        self.next_index += n as u64;
        self.pending.clear();
        Ok(())
    }
}

impl SignalFileWriter {
    /// zstd of the current page when it is worth keeping, with back-off for channels that do
    /// not compress.
    fn try_zstd(&mut self) -> Result<Option<Vec<u8>>> {
        if self.zstd_skip > 0 {
            self.zstd_skip -= 1;
            return Ok(None);
        }
        let compressed = zstd::bulk::compress(&self.page, 1)?;
        if (compressed.len() as f64) < self.page.len() as f64 * (1.0 - ZSTD_MIN_SAVING) {
            self.zstd_misses = 0;
            return Ok(Some(compressed));
        }
        self.zstd_misses += 1;
        if self.zstd_misses >= 2 {
            self.zstd_misses = 0;
            self.zstd_skip = ZSTD_BACKOFF_GROUPS;
        }
        Ok(None)
    }
}

/// Wraps encoded values in a data page and describes the chunk for splicing. With
/// `compressed`, the page holds those zstd bytes of `values`.
fn column_chunk(
    descr: &ColumnDescPtr,
    values: &[u8],
    compressed: Option<&[u8]>,
    n: usize,
    stats: Statistics,
) -> Result<(Bytes, ColumnCloseResult)> {
    let (buf, codec) = match compressed {
        Some(c) => (c, Compression::ZSTD(parquet::basic::ZstdLevel::try_new(1)?)),
        None => (values, Compression::UNCOMPRESSED),
    };
    let page = Page::DataPage {
        buf: Bytes::copy_from_slice(buf),
        num_values: n as u32,
        encoding: Encoding::DELTA_BINARY_PACKED,
        def_level_encoding: Encoding::RLE,
        rep_level_encoding: Encoding::RLE,
        statistics: Some(stats.clone()),
    };
    let mut sink = TrackedWrite::new(Vec::with_capacity(buf.len() + 64));
    let header_and_data = {
        let mut pages = SerializedPageWriter::new(&mut sink);
        let spec = pages.write_page(CompressedPage::new(page, values.len()))?;
        pages.close()?;
        spec
    };
    let bytes = Bytes::from(sink.into_inner()?);
    let len = bytes.len() as i64;
    let metadata = ColumnChunkMetaData::builder(Arc::clone(descr))
        .set_encodings(vec![Encoding::DELTA_BINARY_PACKED, Encoding::RLE])
        .set_num_values(n as i64)
        .set_compression(codec)
        .set_total_compressed_size(len)
        .set_total_uncompressed_size(header_and_data.uncompressed_size as i64)
        .set_data_page_offset(0)
        .set_statistics(stats)
        .build()?;
    let close = ColumnCloseResult {
        bytes_written: len as u64,
        rows_written: n as u64,
        metadata,
        bloom_filter: None,
        column_index: None,
        offset_index: None,
    };
    Ok((bytes, close))
}

/// Reads a signal file back: its first sample index and every digital value.
pub fn read_signal_file(bytes: Bytes, path: &str) -> Result<(u64, Vec<i32>)> {
    read_signal_groups(bytes, path, None)
}

/// Reads the digital values of some row groups of a signal file, or of all (`None`): one
/// channel of a file of [`write_channels`] with [`channel_groups`].
pub fn read_signal_groups(
    bytes: Bytes,
    path: &str,
    groups: Option<Range<usize>>,
) -> Result<(u64, Vec<i32>)> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_string(),
        reason,
    };
    let (builder, first, rows) = open(bytes, path, groups)?;
    let reader = builder.with_batch_size(ROWS_PER_GROUP).build()?;
    let mut out = Vec::with_capacity(rows as usize);
    let mut expect = first as i64;
    for batch in reader {
        let batch = batch?;
        let index = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| corrupt("sample_index is not int64".into()))?;
        if !index.is_empty()
            && (index.value(0) != expect
                || index.value(index.len() - 1) != expect + index.len() as i64 - 1)
        {
            return Err(corrupt(format!(
                "sample_index is not contiguous from {expect}"
            )));
        }
        expect += index.len() as i64;
        let col = batch.column(1);
        if let Some(v) = col.as_any().downcast_ref::<Int16Array>() {
            out.extend(v.values().iter().map(|x| i32::from(*x)));
        } else if let Some(v) = col.as_any().downcast_ref::<Int32Array>() {
            out.extend_from_slice(v.values());
        } else {
            return Err(corrupt(format!(
                "value column has type {}",
                col.data_type()
            )));
        }
    }
    Ok((first, out))
}

/// A reader of a signal file's row groups `groups` (all when `None`), with the file's first
/// sample and the rows those groups hold.
fn open(
    bytes: Bytes,
    path: &str,
    groups: Option<Range<usize>>,
) -> Result<(ParquetRecordBatchReaderBuilder<Bytes>, u64, u64)> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_string(),
        reason,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let meta = builder.metadata();
    let first = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == FIRST_SAMPLE_KEY))
        .and_then(|k| k.value.as_deref()?.parse::<u64>().ok())
        .ok_or_else(|| corrupt(format!("no {FIRST_SAMPLE_KEY} metadata")))?;
    let Some(groups) = groups else {
        let rows = meta.file_metadata().num_rows() as u64;
        return Ok((builder, first, rows));
    };
    let total = meta.num_row_groups();
    if groups.end > total || groups.is_empty() {
        return Err(corrupt(format!(
            "row groups {groups:?} asked of a file with {total}"
        )));
    }
    let rows = groups
        .clone()
        .map(|g| meta.row_group(g).num_rows() as u64)
        .sum();
    Ok((builder.with_row_groups(groups.collect()), first, rows))
}

/// Reads the digital values of a signal file a row group at a time.
pub struct SignalFileReader {
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    path: String,
    first_sample: u64,
    rows: u64,
}

impl SignalFileReader {
    /// Reads row groups `groups` (every one when `None`; one channel of a file of
    /// [`write_channels`] with [`channel_groups`]).
    pub fn new(bytes: Bytes, path: &str, groups: Option<Range<usize>>) -> Result<Self> {
        let (builder, first_sample, rows) = open(bytes, path, groups)?;
        let mask = parquet::arrow::ProjectionMask::leaves(builder.parquet_schema(), [1]);
        let batches = builder
            .with_projection(mask)
            .with_batch_size(ROWS_PER_GROUP)
            .build()?;
        Ok(Self {
            batches,
            path: path.to_string(),
            first_sample,
            rows,
        })
    }

    pub fn first_sample(&self) -> u64 {
        self.first_sample
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends the next batch of values to `out`; false at the end.
    pub fn next_into(&mut self, out: &mut Vec<i32>) -> Result<bool> {
        let Some(batch) = self.batches.next() else {
            return Ok(false);
        };
        let batch = batch?;
        let col = batch.column(0);
        if let Some(v) = col.as_any().downcast_ref::<Int16Array>() {
            out.extend(v.values().iter().map(|x| i32::from(*x)));
        } else if let Some(v) = col.as_any().downcast_ref::<Int32Array>() {
            out.extend_from_slice(v.values());
        } else {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!("value column has type {}", col.data_type()),
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn round_trips_and_any_reader_sees_int16_values() {
        let values: Vec<i32> = (0..(ROWS_PER_GROUP * 2 + 1000))
            .map(|i| ((i as i32 * 7919) % 65536) - 32768)
            .collect();
        let mut w = SignalFileWriter::new(
            SampleWidth::Int16,
            1000,
            vec![("gbrain.channel".into(), "3".into())],
        )
        .unwrap();
        w.push(&values[..5]).unwrap();
        w.push(&values[5..]).unwrap();
        assert_eq!(w.rows(), values.len() as u64);
        let bytes = w.finish().unwrap();

        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap();
        assert_eq!(builder.metadata().num_row_groups(), 3);
        let rg = builder.metadata().row_group(1);
        let stats = rg.column(0).statistics().unwrap();
        assert_eq!(
            stats.min_bytes_opt().unwrap(),
            &(1000i64 + ROWS_PER_GROUP as i64).to_le_bytes()
        );
        assert_eq!(builder.schema().field(1).data_type(), &DataType::Int16);

        let (first, got) = read_signal_file(bytes.clone(), "t").unwrap();
        assert_eq!(first, 1000);
        assert_eq!(got, values);

        let mut r = SignalFileReader::new(bytes, "t", None).unwrap();
        assert_eq!((r.first_sample(), r.rows()), (1000, values.len() as u64));
        let mut streamed = Vec::new();
        while r.next_into(&mut streamed).unwrap() {}
        assert_eq!(streamed, values);
    }

    #[test]
    fn periodic_signals_are_compressed_and_read_back() {
        // A square wave: its deltas repeat, so zstd shrinks them; noise is left alone.
        let square: Vec<i32> = (0..ROWS_PER_GROUP * 3)
            .map(|i| if i / 50 % 2 == 0 { 1000 } else { -1000 })
            .collect();
        let mut seed = 7u64;
        let noise: Vec<i32> = (0..ROWS_PER_GROUP * 3)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as i32 % 2000) - 1000
            })
            .collect();
        let mut sizes = Vec::new();
        for values in [&square, &noise] {
            let mut w = SignalFileWriter::new(SampleWidth::Int16, 0, vec![]).unwrap();
            w.push(values).unwrap();
            let bytes = w.finish().unwrap();
            sizes.push(bytes.len());
            let meta = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .unwrap()
                .metadata()
                .clone();
            let codec = meta.row_group(0).column(1).compression();
            assert_eq!(
                matches!(codec, Compression::ZSTD(_)),
                std::ptr::eq(values, &square)
            );
            let (_, got) = read_signal_file(bytes, "t").unwrap();
            assert_eq!(&got, values);
        }
        assert!(sizes[0] * 20 < sizes[1], "{sizes:?}");
    }

    #[test]
    fn one_file_holds_every_channel_and_each_reads_back_alone() {
        // Short channels (a live flush) and channels longer than a row group.
        for rows in [125usize, ROWS_PER_GROUP + 7] {
            let channels: Vec<Vec<i32>> = (0..5)
                .map(|c| {
                    (0..rows)
                        .map(|i| (i as i32 * 31 + c * 1000) % 70_000)
                        .collect()
                })
                .collect();
            let bytes = write_channels(SampleWidth::Int32, 500, &channels).unwrap();
            let meta = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .unwrap()
                .metadata()
                .clone();
            assert_eq!(
                meta.num_row_groups(),
                5 * groups_per_channel(rows as u64),
                "rows {rows}"
            );
            for (c, want) in channels.iter().enumerate() {
                let groups = channel_groups(rows as u64, c);
                let (first, got) =
                    read_signal_groups(bytes.clone(), "t", Some(groups.clone())).unwrap();
                assert_eq!((first, &got), (500, want), "channel {c} of rows {rows}");
                // Its row groups' statistics give its sample range, for pruning.
                let stats = meta.row_group(groups.start).column(0).statistics().unwrap();
                assert_eq!(stats.min_bytes_opt().unwrap(), &500i64.to_le_bytes());

                let mut r = SignalFileReader::new(bytes.clone(), "t", Some(groups)).unwrap();
                assert_eq!((r.first_sample(), r.rows()), (500, rows as u64));
                let mut streamed = Vec::new();
                while r.next_into(&mut streamed).unwrap() {}
                assert_eq!(&streamed, want);
            }
        }
        let err = read_signal_groups(
            write_channels(SampleWidth::Int32, 0, &[vec![1, 2]]).unwrap(),
            "t",
            Some(1..2),
        )
        .unwrap_err();
        assert!(err.to_string().contains("row groups 1..2"), "{err}");
        assert!(write_channels(SampleWidth::Int32, 0, &[vec![1], vec![1, 2]]).is_err());
        assert!(write_channels(SampleWidth::Int32, 0, &[]).is_err());
    }

    #[test]
    fn round_trips_int24_values_as_int32() {
        let values: Vec<i32> = vec![-(1 << 23), (1 << 23) - 1, 0, -1, 12345];
        let mut w = SignalFileWriter::new(SampleWidth::Int32, 0, vec![]).unwrap();
        w.push(&values).unwrap();
        let bytes = w.finish().unwrap();
        let (first, got) = read_signal_file(bytes, "t").unwrap();
        assert_eq!(first, 0);
        assert_eq!(got, values);
    }
}
