//! Band power: Welch's power spectral density, integrated over a frequency band.
//!
//! Welch as scipy and MNE compute it: Hann-windowed segments overlapping by half, each with
//! its mean removed, one-sided density (units²/Hz) averaged over segments. A segment is
//! `min(n, 2^ceil(log2 fs))` samples, about a second, so bins are about 1 Hz apart. Band power
//! is the sum of the density over the bins in `[fmin, fmax]` times the bin width (units²).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use futures::StreamExt;
use futures::stream::BoxStream;
use gbrain_storage::events::EventRow;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::args::{Args, allowed};
use super::epochs::{
    Epoch, Window, constant_dictionary, dictionary_type, epochs_of, events_by_recording, read_run,
    runs,
};
use super::exec::{FunctionTable, spread};
use super::signal::{FunctionEnv, recordings};
use crate::view::ChannelInfo;

/// The segment length Welch uses for `n` samples at `fs`.
pub fn segment_length(n: usize, fs: f64) -> usize {
    let target = if fs >= 1.0 {
        (fs.ceil() as usize).next_power_of_two()
    } else {
        1
    };
    n.min(target.max(8))
}

/// A Welch estimator for one segment length, reusable across signals.
pub struct Welch {
    nperseg: usize,
    step: usize,
    window: Vec<f64>,
    /// 1 / (fs · Σw²), without fs.
    scale: f64,
    fft: Arc<dyn Fft<f64>>,
    buffer: Vec<Complex<f64>>,
}

impl Welch {
    pub fn new(planner: &mut FftPlanner<f64>, nperseg: usize) -> Self {
        let nperseg = nperseg.max(1);
        // Periodic Hann, as scipy.signal.get_window('hann', n).
        let window: Vec<f64> = if nperseg == 1 {
            vec![1.0]
        } else {
            (0..nperseg)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / nperseg as f64).cos())
                .collect()
        };
        let power: f64 = window.iter().map(|w| w * w).sum();
        Self {
            nperseg,
            step: (nperseg - nperseg / 2).max(1),
            scale: if power > 0.0 { 1.0 / power } else { 0.0 },
            window,
            fft: planner.plan_fft_forward(nperseg),
            buffer: vec![Complex::new(0.0, 0.0); nperseg],
        }
    }

    /// One-sided PSD of `x` at `fs` into `psd` (resized to nperseg/2 + 1); returns the bin
    /// width, or `None` when `x` is shorter than a segment.
    pub fn psd(&mut self, x: &[f64], fs: f64, psd: &mut Vec<f64>) -> Option<f64> {
        let n = self.nperseg;
        if x.len() < n || fs <= 0.0 {
            return None;
        }
        let bins = n / 2 + 1;
        psd.clear();
        psd.resize(bins, 0.0);
        let mut segments = 0usize;
        let mut start = 0;
        while start + n <= x.len() {
            let seg = &x[start..start + n];
            let mean = seg.iter().sum::<f64>() / n as f64;
            for ((b, v), w) in self.buffer.iter_mut().zip(seg).zip(&self.window) {
                *b = Complex::new((v - mean) * w, 0.0);
            }
            self.fft.process(&mut self.buffer);
            for (p, b) in psd.iter_mut().zip(&self.buffer) {
                *p += b.norm_sqr();
            }
            segments += 1;
            start += self.step;
        }
        let scale = self.scale / fs / segments as f64;
        for (i, p) in psd.iter_mut().enumerate() {
            // One-sided: every bin but DC and (for even n) Nyquist counts twice.
            let twice = i != 0 && !(n.is_multiple_of(2) && i == n / 2);
            *p *= if twice { 2.0 * scale } else { scale };
        }
        Some(fs / n as f64)
    }
}

/// Power in `[fmin, fmax]` from a PSD with bin width `df`.
pub fn integrate(psd: &[f64], df: f64, fmin: f64, fmax: f64) -> Option<f64> {
    let mut any = false;
    let mut sum = 0.0;
    for (i, p) in psd.iter().enumerate() {
        let f = i as f64 * df;
        if f >= fmin - 1e-9 && f <= fmax + 1e-9 {
            sum += p;
            any = true;
        }
    }
    any.then_some(sum * df)
}

/// Welch band power of `x` sampled at `fs`, or `None` when there are too few samples.
pub fn welch_band_power(x: &[f64], fs: f64, fmin: f64, fmax: f64) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let mut planner = FftPlanner::new();
    let mut welch = Welch::new(&mut planner, segment_length(x.len(), fs));
    let mut psd = Vec::new();
    let df = welch.psd(x, fs, &mut psd)?;
    integrate(&psd, df, fmin, fmax)
}

/// `band_power(value, t, fs, fmin, fmax)`: the Welch band power of a group's samples, taken
/// in order of `t`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BandPower {
    signature: Signature,
}

impl Default for BandPower {
    fn default() -> Self {
        Self::new()
    }
}

impl BandPower {
    pub fn new() -> Self {
        Self {
            signature: Signature::uniform(5, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for BandPower {
    fn name(&self) -> &str {
        "band_power"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::<BandPowerAccumulator>::default())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
        let name = |s: &str| format!("{}[{s}]", args.name);
        Ok(vec![
            Arc::new(Field::new(name("t"), list.clone(), true)),
            Arc::new(Field::new(name("value"), list, true)),
            Arc::new(Field::new(name("fs"), DataType::Float64, true)),
            Arc::new(Field::new(name("fmin"), DataType::Float64, true)),
            Arc::new(Field::new(name("fmax"), DataType::Float64, true)),
        ])
    }
}

#[derive(Debug, Default)]
struct BandPowerAccumulator {
    samples: Vec<(f64, f64)>,
    params: Option<[f64; 3]>,
}

impl BandPowerAccumulator {
    fn set_params(&mut self, p: [f64; 3]) -> Result<()> {
        match self.params {
            None => {
                if p[0] <= 0.0 || !p.iter().all(|x| x.is_finite()) || p[1] > p[2] {
                    return exec_err!(
                        "band_power: fs must be positive and fmin <= fmax, got fs={}, fmin={}, fmax={}",
                        p[0],
                        p[1],
                        p[2]
                    );
                }
                self.params = Some(p);
                Ok(())
            }
            Some(q) if q == p => Ok(()),
            Some(q) => exec_err!(
                "band_power: fs, fmin and fmax must be the same for every row of a group, got {q:?} and {p:?}"
            ),
        }
    }
}

fn f64s(a: &ArrayRef, what: &str) -> Result<Float64Array> {
    match a.as_primitive_opt::<Float64Type>() {
        Some(x) => Ok(x.clone()),
        None => exec_err!(
            "band_power: {what} must be a number, found {}",
            a.data_type()
        ),
    }
}

impl Accumulator for BandPowerAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [v, t, fs, lo, hi] = values else {
            return exec_err!("band_power takes 5 arguments");
        };
        let (v, t) = (f64s(v, "value")?, f64s(t, "t")?);
        let (fs, lo, hi) = (f64s(fs, "fs")?, f64s(lo, "fmin")?, f64s(hi, "fmax")?);
        for i in 0..v.len() {
            if v.is_null(i) || t.is_null(i) || fs.is_null(i) || lo.is_null(i) || hi.is_null(i) {
                continue;
            }
            self.set_params([fs.value(i), lo.value(i), hi.value(i)])?;
            self.samples.push((t.value(i), v.value(i)));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let Some([fs, lo, hi]) = self.params else {
            return Ok(ScalarValue::Float64(None));
        };
        self.samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let x: Vec<f64> = self.samples.iter().map(|s| s.1).collect();
        Ok(ScalarValue::Float64(welch_band_power(&x, fs, lo, hi)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.samples.capacity() * 16
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = |f: fn(&(f64, f64)) -> f64, s: &[(f64, f64)]| {
            ScalarValue::List(Arc::new(
                ListArray::from_iter_primitive::<Float64Type, _, _>([Some(
                    s.iter().map(|x| Some(f(x))),
                )]),
            ))
        };
        let p = self.params.map(|p| p.map(Some)).unwrap_or([None; 3]);
        Ok(vec![
            list(|x| x.0, &self.samples),
            list(|x| x.1, &self.samples),
            ScalarValue::Float64(p[0]),
            ScalarValue::Float64(p[1]),
            ScalarValue::Float64(p[2]),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [t, v, fs, lo, hi] = states else {
            return exec_err!("band_power: state has {} columns", states.len());
        };
        let (Some(t), Some(v)) = (t.as_list_opt::<i32>(), v.as_list_opt::<i32>()) else {
            return exec_err!("band_power: state is not a list");
        };
        let (fs, lo, hi) = (f64s(fs, "fs")?, f64s(lo, "fmin")?, f64s(hi, "fmax")?);
        for i in 0..t.len() {
            if fs.is_null(i) || t.is_null(i) {
                continue;
            }
            self.set_params([fs.value(i), lo.value(i), hi.value(i)])?;
            let (ti, vi) = (t.value(i), v.value(i));
            let (ti, vi) = (f64s(&ti, "t")?, f64s(&vi, "value")?);
            self.samples
                .extend(ti.values().iter().copied().zip(vi.values().iter().copied()));
        }
        Ok(())
    }
}

/// A named frequency band.
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub name: String,
    pub fmin: f64,
    pub fmax: f64,
}

const PRESETS: &[(&str, f64, f64)] = &[
    ("delta", 1.0, 4.0),
    ("theta", 4.0, 8.0),
    ("alpha", 8.0, 13.0),
    ("beta", 13.0, 30.0),
    ("gamma", 30.0, 45.0),
];

/// Parses `alpha, beta` (presets), `mu:8-12` or `8-12`.
pub fn parse_bands(text: &str) -> std::result::Result<Vec<Band>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, range) = match item.split_once(':') {
            Some((n, r)) => (n.trim().to_string(), Some(r.trim())),
            None if item.contains('-') => (item.to_string(), Some(item)),
            None => (item.to_string(), None),
        };
        let band = match range {
            None => match PRESETS.iter().find(|p| p.0.eq_ignore_ascii_case(&name)) {
                Some(&(n, lo, hi)) => Band {
                    name: n.to_string(),
                    fmin: lo,
                    fmax: hi,
                },
                None => {
                    return Err(format!(
                        "unknown band {name:?}: use one of delta, theta, alpha, beta, gamma or \
                         name:fmin-fmax"
                    ));
                }
            },
            Some(r) => {
                let parsed = r.split_once('-').and_then(|(a, b)| {
                    Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?))
                });
                match parsed {
                    Some((lo, hi)) if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi => {
                        Band {
                            name,
                            fmin: lo,
                            fmax: hi,
                        }
                    }
                    _ => return Err(format!("band {item:?} is not name:fmin-fmax in Hz")),
                }
            }
        };
        out.push(band);
    }
    if out.is_empty() {
        return Err("no bands given".into());
    }
    Ok(out)
}

fn epoch_power_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("recording_id", dictionary_type(), false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_value", DataType::Utf8, true),
        Field::new("onset", DataType::Float64, false),
        Field::new("response_time", DataType::Float64, true),
        Field::new("channel", dictionary_type(), false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("band", DataType::Utf8, false),
        Field::new("fmin", DataType::Float64, false),
        Field::new("fmax", DataType::Float64, false),
        Field::new("power", DataType::Float64, true),
    ]))
}

/// `epoch_band_power(types, tmin, tmax, bands [, channels [, recording]])`.
#[derive(Debug)]
pub struct EpochBandPowerFunction {
    env: Arc<FunctionEnv>,
}

impl EpochBandPowerFunction {
    pub fn new(env: Arc<FunctionEnv>) -> Self {
        Self { env }
    }
}

impl TableFunctionImpl for EpochBandPowerFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = "epoch_band_power";
        if let Some(t) = super::exec::unbound(name, args.exprs(), epoch_power_schema) {
            return Ok(t);
        }
        let a = Args::new(name, args.exprs(), 4, 6)?;
        let window = Arc::new(Window::parse(&a, name)?);
        let bands = match a.opt_str(3, "bands")? {
            Some(b) => match parse_bands(&b) {
                Ok(b) => Arc::new(b),
                Err(e) => return plan_err!("{name}: argument 4 (bands): {e}"),
            },
            None => return plan_err!("{name}: argument 4 (bands) is required"),
        };
        let channels = a.set(4, "channels")?;
        let only = a.set(5, "recording")?;
        let env = Arc::clone(&self.env);
        let schema = epoch_power_schema();
        let out_schema = Arc::clone(&schema);
        Ok(Arc::new(FunctionTable {
            name,
            call: None,
            schema,
            plan: Arc::new(move |partitions| {
                let (env, window, bands, channels, only, schema) = (
                    Arc::clone(&env),
                    Arc::clone(&window),
                    Arc::clone(&bands),
                    channels.clone(),
                    only.clone(),
                    Arc::clone(&out_schema),
                );
                Box::pin(async move {
                    let recs = recordings(&env, &only);
                    let events = Arc::new(events_by_recording(&env, &recs).await?);
                    let chosen: Vec<usize> = env
                        .view
                        .channels
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| {
                            events.contains_key(&c.recording) && allowed(&channels, &c.label)
                        })
                        .map(|(i, _)| i)
                        .collect();
                    Ok(spread(chosen, partitions, move |pos| {
                        power_of_channel(
                            Arc::clone(&env),
                            Arc::clone(&events),
                            Arc::clone(&window),
                            Arc::clone(&bands),
                            Arc::clone(&schema),
                            pos,
                        )
                    }))
                })
            }),
        }))
    }
}

fn power_of_channel(
    env: Arc<FunctionEnv>,
    events: Arc<HashMap<usize, Arc<Vec<EventRow>>>>,
    window: Arc<Window>,
    bands: Arc<Vec<Band>>,
    schema: SchemaRef,
    pos: usize,
) -> BoxStream<'static, Result<RecordBatch>> {
    futures::stream::once(async move {
        let ch = &env.view.channels[pos];
        let evs = events.get(&ch.recording).cloned().unwrap_or_default();
        let epochs = epochs_of(&evs, ch, &window);
        let mut rows = PowerRows::default();
        let mut planner = FftPlanner::new();
        let mut welch: Option<Welch> = None;
        let mut psd = Vec::new();
        for run in runs(&epochs) {
            let run = &epochs[run];
            let values = read_run(&env, ch, run).await?;
            for (e, v) in run.iter().zip(&values) {
                let n = segment_length(v.len(), ch.rate);
                if welch.as_ref().is_none_or(|w| w.nperseg != n) {
                    welch = Some(Welch::new(&mut planner, n));
                }
                let df = welch.as_mut().and_then(|w| w.psd(v, ch.rate, &mut psd));
                for b in bands.iter() {
                    let power = df.and_then(|df| integrate(&psd, df, b.fmin, b.fmax));
                    rows.push(&evs[e.event], e, b, power);
                }
            }
        }
        rows.finish(&schema, ch)
    })
    .boxed()
}

#[derive(Default)]
struct PowerRows {
    epoch: Vec<i64>,
    event_type: Vec<String>,
    event_value: Vec<Option<String>>,
    onset: Vec<f64>,
    rt: Vec<Option<f64>>,
    band: Vec<String>,
    fmin: Vec<f64>,
    fmax: Vec<f64>,
    power: Vec<Option<f64>>,
}

impl PowerRows {
    fn push(&mut self, ev: &EventRow, e: &Epoch, b: &Band, power: Option<f64>) {
        self.epoch.push(e.event as i64);
        self.event_type.push(ev.event_type.clone());
        self.event_value.push(ev.value.clone());
        self.onset.push(ev.onset.unwrap_or(f64::NAN));
        self.rt.push(ev.response_time);
        self.band.push(b.name.clone());
        self.fmin.push(b.fmin);
        self.fmax.push(b.fmax);
        self.power.push(power);
    }

    fn finish(self, schema: &SchemaRef, ch: &ChannelInfo) -> Result<RecordBatch> {
        let n = self.epoch.len();
        let columns: Vec<ArrayRef> = vec![
            constant_dictionary(&ch.recording_id, n),
            Arc::new(Int64Array::from(self.epoch)),
            Arc::new(StringArray::from(self.event_type)),
            Arc::new(StringArray::from(self.event_value)),
            Arc::new(Float64Array::from(self.onset)),
            Arc::new(Float64Array::from(self.rt)),
            constant_dictionary(&ch.label, n),
            Arc::new(Int32Array::from_value(ch.index as i32, n)),
            Arc::new(StringArray::from(self.band)),
            Arc::new(Float64Array::from(self.fmin)),
            Arc::new(Float64Array::from(self.fmax)),
            Arc::new(Float64Array::from(self.power)),
        ];
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(fs: f64, f: f64, amp: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| amp * (2.0 * std::f64::consts::PI * f * i as f64 / fs).sin())
            .collect()
    }

    #[test]
    fn finds_a_sine_in_its_band_and_not_elsewhere() {
        // A 10 Hz sine of amplitude 2 has power 2²/2 = 2.
        let x = sine(256.0, 10.0, 2.0, 256 * 4);
        let alpha = welch_band_power(&x, 256.0, 8.0, 13.0).unwrap();
        assert!((alpha - 2.0).abs() < 0.05, "alpha power {alpha}");
        let beta = welch_band_power(&x, 256.0, 13.0, 30.0).unwrap();
        assert!(beta < 1e-3, "beta power {beta}");
    }

    #[test]
    fn total_power_of_noise_is_its_variance() {
        // A deterministic pseudo-random sequence, uniform on [-1, 1): variance 1/3.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let x: Vec<f64> = (0..256 * 64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect();
        let total = welch_band_power(&x, 256.0, 0.0, 128.0).unwrap();
        assert!((total - 1.0 / 3.0).abs() < 0.02, "total power {total}");
    }

    #[test]
    fn too_short_or_out_of_range_is_null() {
        assert_eq!(welch_band_power(&[1.0], 256.0, 8.0, 13.0), None);
        let x = sine(100.0, 10.0, 1.0, 100);
        assert_eq!(
            welch_band_power(&x, 100.0, 60.0, 70.0),
            None,
            "above Nyquist"
        );
    }

    #[test]
    fn parses_bands() {
        let b = parse_bands("alpha, mu:8-12,13-30").unwrap();
        assert_eq!(
            b,
            vec![
                Band {
                    name: "alpha".into(),
                    fmin: 8.0,
                    fmax: 13.0
                },
                Band {
                    name: "mu".into(),
                    fmin: 8.0,
                    fmax: 12.0
                },
                Band {
                    name: "13-30".into(),
                    fmin: 13.0,
                    fmax: 30.0
                },
            ]
        );
        assert!(parse_bands("kappa").is_err());
        assert!(parse_bands("x:9-3").is_err());
        assert!(parse_bands("").is_err());
    }

    #[test]
    fn aggregate_merges_partial_states_in_time_order() {
        let x = sine(256.0, 10.0, 2.0, 512);
        let all: Vec<(f64, f64)> = x
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64 / 256.0, *v))
            .collect();
        let batch = |rows: &[(f64, f64)]| -> Vec<ArrayRef> {
            let n = rows.len();
            vec![
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_value(256.0, n)),
                Arc::new(Float64Array::from_value(8.0, n)),
                Arc::new(Float64Array::from_value(13.0, n)),
            ]
        };
        // Two partial aggregates over interleaved halves, merged.
        let (even, odd): (Vec<_>, Vec<_>) =
            all.iter().partition(|r| ((r.0 * 256.0) as i64) % 2 == 0);
        let mut a = BandPowerAccumulator::default();
        a.update_batch(&batch(&odd)).unwrap();
        let mut b = BandPowerAccumulator::default();
        b.update_batch(&batch(&even)).unwrap();
        let state: Vec<ArrayRef> = b
            .state()
            .unwrap()
            .into_iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        a.merge_batch(&state).unwrap();
        let ScalarValue::Float64(Some(p)) = a.evaluate().unwrap() else {
            panic!("no power");
        };
        assert_eq!(Some(p), welch_band_power(&x, 256.0, 8.0, 13.0));
    }
}
