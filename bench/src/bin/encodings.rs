//! Compares Parquet encodings for int16 EEG samples, bytes and encode time: the measurement
//! behind `gbrain_storage::delta` (parquet-rs's own DELTA_BINARY_PACKED encoder, and PLAIN or
//! BYTE_STREAM_SPLIT with zstd, beside ours). Usage: `encodings [STD] [x]`, where `x` adds the
//! sample_index column.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Int16Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

fn main() {
    let n = 512 * 3600;
    let std: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(400.0);
    let raw = gbrain_bench::synth::pink_i16(n, 1000.0, 7);
    let m = raw.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let s0 = (raw.iter().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / n as f64).sqrt();
    let data: Vec<i16> = raw
        .iter()
        .map(|v| (*v as f64 * std / s0).round() as i16)
        .collect();
    let with_index = std::env::args().nth(2).is_some();
    let mean = data.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let sd = (data.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    println!("n={n} std={sd:.1}");
    std::fs::write(
        "/tmp/pink.i16",
        data.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let (schema, batch) = if with_index {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sample_index", DataType::Int64, false),
            Field::new("value", DataType::Int16, false),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(Int16Array::from(data.clone())),
            ],
        )
        .unwrap();
        (schema, b)
    } else {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::Int16,
            false,
        )]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int16Array::from(data.clone()))],
        )
        .unwrap();
        (schema, b)
    };
    let cases: Vec<(&str, Encoding, Compression)> = vec![
        (
            "plain+zstd1",
            Encoding::PLAIN,
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap()),
        ),
        (
            "delta",
            Encoding::DELTA_BINARY_PACKED,
            Compression::UNCOMPRESSED,
        ),
        (
            "delta+zstd1",
            Encoding::DELTA_BINARY_PACKED,
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap()),
        ),
        (
            "bss+zstd1",
            Encoding::BYTE_STREAM_SPLIT,
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap()),
        ),
        (
            "bss+zstd3",
            Encoding::BYTE_STREAM_SPLIT,
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        ),
        (
            "plain+zstd3",
            Encoding::PLAIN,
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        ),
    ];
    {
        let v32: Vec<i32> = data.iter().map(|v| *v as i32).collect();
        let t = Instant::now();
        let mut w = gbrain_storage::signal::SignalFileWriter::new(
            gbrain_storage::signal::SampleWidth::Int16,
            0,
            vec![],
        )
        .unwrap();
        w.push(&v32).unwrap();
        let bytes = w.finish().unwrap();
        let dt = t.elapsed().as_secs_f64();
        println!(
            "{:12} {:>9} bytes  ratio {:.3}  {:.0} Msamples/s",
            "gbrain",
            bytes.len(),
            bytes.len() as f64 / (n * 2) as f64,
            n as f64 / dt / 1e6
        );
    }
    for (name, enc, comp) in cases {
        let props = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_column_encoding(ColumnPath::from("value"), enc)
            .set_column_compression(ColumnPath::from("value"), comp)
            .set_column_encoding(
                ColumnPath::from("sample_index"),
                Encoding::DELTA_BINARY_PACKED,
            )
            .set_column_compression(ColumnPath::from("sample_index"), Compression::UNCOMPRESSED)
            .set_max_row_group_row_count(Some(1 << 20))
            .set_write_batch_size(
                std::env::var("WBS")
                    .ok()
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(1024),
            )
            .set_statistics_enabled(if std::env::var("NOSTATS").is_ok() {
                parquet::file::properties::EnabledStatistics::None
            } else {
                parquet::file::properties::EnabledStatistics::Page
            })
            .set_data_page_size_limit(
                std::env::var("DPS")
                    .ok()
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(1 << 20),
            )
            .build();
        let t = Instant::now();
        let mut w = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(props)).unwrap();
        w.write(&batch).unwrap();
        let bytes = w.into_inner().unwrap();
        let dt = t.elapsed().as_secs_f64();
        println!(
            "{name:12} {:>9} bytes  ratio {:.3}  {:.0} Msamples/s",
            bytes.len(),
            bytes.len() as f64 / (n * 2) as f64,
            n as f64 / dt / 1e6
        );
    }
}
