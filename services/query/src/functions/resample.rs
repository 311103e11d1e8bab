//! Resampling channels onto a common time grid, to fuse signals recorded at different rates.
//!
//! The grid restarts at each segment's onset: point `k` of a segment is at `onset + k / rate`,
//! for every `k / rate` inside the segment's duration, which is the same for every channel of a
//! recording. So channels of one recording resampled to one rate share `sample_index` and `t`,
//! and join on them exactly.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::plan_err;
use datafusion::error::Result;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::args::{Args, allowed};
use super::epochs::{constant_dictionary, dictionary_type};
use super::exec::{FunctionTable, spread};
use super::signal::{FunctionEnv, read_digital};
use crate::tables::timestamp_type;
use crate::view::ChannelInfo;

/// Output points computed per batch.
const BLOCK: u64 = 1 << 16;

/// The highest rate a channel can be resampled to.
pub const MAX_RATE: f64 = 100_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Straight line between the two neighbouring samples.
    Linear,
    /// The nearest sample.
    Nearest,
    /// The mean of the samples within half an output period: for downsampling.
    Mean,
}

impl Method {
    fn parse(s: Option<&str>) -> std::result::Result<Self, String> {
        match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("linear") => Ok(Self::Linear),
            Some("nearest") => Ok(Self::Nearest),
            Some("mean") => Ok(Self::Mean),
            Some(other) => Err(format!("method {other:?} is not linear, nearest or mean")),
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("recording_id", dictionary_type(), false),
        Field::new("channel", dictionary_type(), false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("t", DataType::Float64, false),
        Field::new("time", timestamp_type(), true),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// `resample(rate [, channels [, recording [, method]]])`.
#[derive(Debug)]
pub struct ResampleFunction {
    env: Arc<FunctionEnv>,
}

impl ResampleFunction {
    pub fn new(env: Arc<FunctionEnv>) -> Self {
        Self { env }
    }
}

impl TableFunctionImpl for ResampleFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = "resample";
        if let Some(t) = super::exec::unbound(name, args.exprs(), schema) {
            return Ok(t);
        }
        let a = Args::new(name, args.exprs(), 1, 4)?;
        let rate = a.f64(0, "rate")?;
        if !(rate > 0.0 && rate <= MAX_RATE) {
            return plan_err!(
                "{name}: argument 1 (rate) must be in (0, {MAX_RATE}] Hz, got {rate}"
            );
        }
        let channels = a.set(1, "channels")?;
        let only = a.set(2, "recording")?;
        let method = match Method::parse(a.opt_str(3, "method")?.as_deref()) {
            Ok(m) => m,
            Err(e) => return plan_err!("{name}: argument 4 (method): {e}"),
        };
        let env = Arc::clone(&self.env);
        let schema = schema();
        let out = Arc::clone(&schema);
        Ok(Arc::new(FunctionTable {
            call: None,
            name,
            schema,
            plan: Arc::new(move |partitions| {
                let chosen: Vec<usize> = env
                    .view
                    .channels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| {
                        allowed(&only, &c.recording_id) && allowed(&channels, &c.label)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let (env, schema) = (Arc::clone(&env), Arc::clone(&out));
                Box::pin(async move {
                    Ok(spread(chosen, partitions, move |pos| {
                        resample_channel(Arc::clone(&env), Arc::clone(&schema), pos, rate, method)
                    }))
                })
            }),
        }))
    }
}

/// One block of output points: segment `(first sample, end sample, onset)`, grid points
/// `k0..k1` of that segment, and the grid index of the segment's first point.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    first: u64,
    end: u64,
    onset: f64,
    k0: u64,
    k1: u64,
    base: u64,
}

/// The grid blocks of a channel at `rate`.
fn blocks(ch: &ChannelInfo, rate: f64) -> Vec<Block> {
    let mut out = Vec::new();
    let mut base = 0u64;
    for (i, &(first, onset)) in ch.segments.iter().enumerate() {
        let end = ch
            .segments
            .get(i + 1)
            .map_or(ch.samples, |(next, _)| *next)
            .min(ch.samples);
        if end <= first || ch.rate <= 0.0 {
            continue;
        }
        let duration = (end - first) as f64 / ch.rate;
        // Points k with k / rate < duration.
        let points = ((duration * rate) - 1e-9).ceil().max(0.0) as u64;
        let mut k0 = 0;
        while k0 < points {
            let k1 = (k0 + BLOCK).min(points);
            out.push(Block {
                first,
                end,
                onset,
                k0,
                k1,
                base,
            });
            k0 = k1;
        }
        base += points;
    }
    out
}

fn resample_channel(
    env: Arc<FunctionEnv>,
    schema: SchemaRef,
    pos: usize,
    rate: f64,
    method: Method,
) -> BoxStream<'static, Result<RecordBatch>> {
    let ch = env.view.channels[pos].clone();
    futures::stream::iter(blocks(&ch, rate))
        .then(move |b| {
            let (env, ch, schema) = (Arc::clone(&env), ch.clone(), Arc::clone(&schema));
            async move {
                let fs = ch.rate;
                let half = 0.5 / rate;
                // The input samples (relative to the segment) the block reaches.
                let t0 = b.k0 as f64 / rate - half;
                let t1 = (b.k1 - 1) as f64 / rate + half;
                let last = b.end - b.first - 1;
                let lo = ((t0 * fs).floor() - 1.0).max(0.0) as u64;
                let hi = (((t1 * fs).ceil() + 1.0).max(0.0) as u64).min(last);
                let lo = lo.min(hi);
                let digital = read_digital(&env.store, &ch, b.first + lo, b.first + hi).await?;
                let x: Vec<f64> = digital
                    .iter()
                    .map(|d| f64::from(*d) * ch.gain + ch.offset)
                    .collect();
                let values: Vec<f64> = (b.k0..b.k1)
                    .map(|k| value_at(&x, lo, k as f64 / rate, fs, half, method))
                    .collect();
                let n = values.len();
                let t: Vec<f64> = (b.k0..b.k1).map(|k| b.onset + k as f64 / rate).collect();
                let time: ArrayRef = match ch.start_ns {
                    Some(s) => Arc::new(
                        TimestampNanosecondArray::from_iter_values(
                            t.iter().map(|x| s + (x * 1e9).round() as i64),
                        )
                        .with_timezone("UTC"),
                    ),
                    None => Arc::new(TimestampNanosecondArray::new_null(n).with_timezone("UTC")),
                };
                let columns: Vec<ArrayRef> = vec![
                    constant_dictionary(&ch.recording_id, n),
                    constant_dictionary(&ch.label, n),
                    Arc::new(Int32Array::from_value(ch.index as i32, n)),
                    Arc::new(Int64Array::from_iter_values(
                        (b.k0..b.k1).map(|k| (b.base + k) as i64),
                    )),
                    Arc::new(Float64Array::from(t)),
                    time,
                    Arc::new(Float64Array::from(values)),
                ];
                Ok(RecordBatch::try_new(schema, columns)?)
            }
        })
        .boxed()
}

/// The value at `t` seconds into a segment, from samples `x` that start at segment sample `lo`.
fn value_at(x: &[f64], lo: u64, t: f64, fs: f64, half: f64, method: Method) -> f64 {
    let n = x.len();
    if n == 0 {
        return f64::NAN;
    }
    let at = |i: f64| -> usize { ((i - lo as f64).max(0.0) as usize).min(n - 1) };
    let pos = t * fs;
    match method {
        Method::Nearest => x[at(pos.round())],
        Method::Linear => {
            let i = pos.floor();
            let frac = pos - i;
            let (a, b) = (x[at(i)], x[at(i + 1.0)]);
            a + (b - a) * frac
        }
        Method::Mean => {
            let a = at(((t - half) * fs).ceil());
            let z = at(((t + half) * fs).ceil() - 1.0).max(a);
            x[a..=z].iter().sum::<f64>() / (z + 1 - a) as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(rate: f64, samples: u64, segments: Vec<(u64, f64)>) -> ChannelInfo {
        ChannelInfo {
            recording: 0,
            recording_id: Arc::from("r"),
            index: 0,
            label: Arc::from("C3"),
            channel_type: "EEG".into(),
            unit: "uV".into(),
            rate,
            samples_per_record: rate as u64,
            gain: 1.0,
            offset: 0.0,
            samples,
            start_ns: None,
            segments: segments.into(),
            files: Vec::new(),
        }
    }

    #[test]
    fn channels_of_different_rates_share_one_grid() {
        // 2 s at 256 Hz and at 100 Hz, with a gap: both give 2 s of 50 Hz points per segment.
        let a = blocks(&channel(256.0, 1024, vec![(0, 0.0), (512, 5.0)]), 50.0);
        let b = blocks(&channel(100.0, 400, vec![(0, 0.0), (200, 5.0)]), 50.0);
        let grid = |v: &[Block]| -> Vec<(f64, u64, u64, u64)> {
            v.iter().map(|x| (x.onset, x.k0, x.k1, x.base)).collect()
        };
        assert_eq!(grid(&a), vec![(0.0, 0, 100, 0), (5.0, 0, 100, 100)]);
        assert_eq!(grid(&a), grid(&b));
    }

    #[test]
    fn interpolates_and_averages() {
        // A ramp x[i] = i at 10 Hz, starting at sample 4 of the segment.
        let x: Vec<f64> = (4..20).map(f64::from).collect();
        let lin = value_at(&x, 4, 1.05, 10.0, 0.05, Method::Linear);
        assert!((lin - 10.5).abs() < 1e-9, "{lin}");
        assert_eq!(value_at(&x, 4, 1.04, 10.0, 0.05, Method::Nearest), 10.0);
        // Mean over [0.8, 1.2): samples 8, 9, 10, 11.
        let mean = value_at(&x, 4, 1.0, 10.0, 0.2, Method::Mean);
        assert!((mean - 9.5).abs() < 1e-9, "{mean}");
    }
}
