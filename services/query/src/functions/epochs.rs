//! Epoching: samples time-locked to events, as rows (`epochs`) or averaged (`erp`).
//!
//! An epoch is laid out as MNE does: the event's sample is the channel's sample nearest its
//! onset, and the epoch holds that sample's neighbours `round(tmin·fs)..=round(tmax·fs)`, at
//! `t_rel = k / fs`. Each channel uses its own rate, so mixed-rate recordings epoch correctly.
//! Epochs that would reach past the recording or across a gap are left out for that channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    StringDictionaryBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::plan_err;
use datafusion::error::Result;
use futures::StreamExt;
use futures::stream::BoxStream;
use gbrain_storage::events::EventRow;

use super::args::{Args, allowed};
use super::exec::{FunctionTable, spread};
use super::signal::{FunctionEnv, read_digital, read_events, recordings};
use crate::view::ChannelInfo;

/// Samples read at once for a run of neighbouring epochs.
const RUN_SAMPLES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One row per epoch, channel and sample.
    Rows,
    /// The mean over epochs per event type, channel and `t_rel`.
    Average,
}

/// Which events, and the window around them.
#[derive(Clone, Debug)]
pub struct Window {
    pub types: Option<HashSet<String>>,
    pub tmin: f64,
    pub tmax: f64,
}

impl Window {
    pub fn parse(a: &Args<'_>, name: &str) -> Result<Self> {
        let types = a.set(0, "event types")?;
        let tmin = a.f64(1, "tmin")?;
        let tmax = a.f64(2, "tmax")?;
        if tmin > tmax {
            return plan_err!("{name}: tmin ({tmin}) is after tmax ({tmax})");
        }
        if tmax - tmin > 3600.0 {
            return plan_err!("{name}: the window is longer than an hour ({tmin}..{tmax} s)");
        }
        Ok(Self { types, tmin, tmax })
    }
}

/// One epoch of one channel.
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    /// Position of the event in its recording's events, sorted by onset.
    pub event: usize,
    /// The channel sample nearest the event.
    pub sample: u64,
    /// Sample offsets `k0..=k1` around it.
    pub k0: i64,
    pub k1: i64,
}

impl Epoch {
    pub fn first(&self) -> u64 {
        (self.sample as i64 + self.k0) as u64
    }

    pub fn last(&self) -> u64 {
        (self.sample as i64 + self.k1) as u64
    }

    pub fn len(&self) -> usize {
        (self.k1 - self.k0 + 1) as usize
    }
}

/// The epochs of `events` that fit in channel `ch`, sorted by first sample.
pub fn epochs_of(events: &[EventRow], ch: &ChannelInfo, w: &Window) -> Vec<Epoch> {
    let mut out = Vec::new();
    if ch.rate <= 0.0 || ch.samples == 0 {
        return out;
    }
    let k0 = (w.tmin * ch.rate).round() as i64;
    let k1 = (w.tmax * ch.rate).round() as i64;
    for (i, e) in events.iter().enumerate() {
        let Some(onset) = e.onset else { continue };
        if !allowed(&w.types, &e.event_type) {
            continue;
        }
        // The segment the onset falls in, and its sample range.
        let seg = ch.segments.partition_point(|(_, o)| *o <= onset);
        if seg == 0 {
            continue;
        }
        let (first, seg_onset) = ch.segments[seg - 1];
        let end = ch
            .segments
            .get(seg)
            .map_or(ch.samples, |(next, _)| *next)
            .min(ch.samples);
        let offset = ((onset - seg_onset) * ch.rate).round();
        if !offset.is_finite() || offset < 0.0 {
            continue;
        }
        let sample = first as i64 + offset as i64;
        if sample + k0 < first as i64 || sample + k1 >= end as i64 {
            continue;
        }
        out.push(Epoch {
            event: i,
            sample: sample as u64,
            k0,
            k1,
        });
    }
    out.sort_by_key(Epoch::first);
    out
}

/// Groups epochs into runs read with one call, each spanning at most [`RUN_SAMPLES`].
pub fn runs(epochs: &[Epoch]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < epochs.len() {
        let lo = epochs[start].first();
        let mut end = start + 1;
        while end < epochs.len() && epochs[end].last() + 1 - lo <= RUN_SAMPLES {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Physical values of each epoch of one run, in the run's order.
pub async fn read_run(
    env: &FunctionEnv,
    ch: &ChannelInfo,
    epochs: &[Epoch],
) -> Result<Vec<Vec<f64>>> {
    let lo = epochs.iter().map(Epoch::first).min().unwrap_or(0);
    let hi = epochs.iter().map(Epoch::last).max().unwrap_or(0);
    let digital = read_digital(&env.store, ch, lo, hi).await?;
    let mut out = Vec::with_capacity(epochs.len());
    for e in epochs {
        let a = (e.first() - lo) as usize;
        let z = a + e.len();
        let Some(values) = digital.get(a..z) else {
            return Err(datafusion::error::DataFusionError::Execution(format!(
                "recording {} channel {}: samples {}..={} are missing from storage",
                ch.recording_id,
                ch.label,
                e.first(),
                e.last()
            )));
        };
        out.push(
            values
                .iter()
                .map(|d| f64::from(*d) * ch.gain + ch.offset)
                .collect(),
        );
    }
    Ok(out)
}

/// Events of every recording a call covers, read once when the call is planned.
pub async fn events_by_recording(
    env: &FunctionEnv,
    recs: &[usize],
) -> Result<HashMap<usize, Arc<Vec<EventRow>>>> {
    let mut out = HashMap::new();
    for &r in recs {
        out.insert(r, Arc::new(read_events(env, r).await?));
    }
    Ok(out)
}

pub fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn rows_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("recording_id", dictionary_type(), false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("event_value", DataType::Utf8, true),
        Field::new("onset", DataType::Float64, false),
        Field::new("response_time", DataType::Float64, true),
        Field::new("channel", dictionary_type(), false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("t_rel", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn average_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_type", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("t_rel", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("epochs", DataType::Int64, false),
    ]))
}

#[derive(Debug)]
pub struct EpochsFunction {
    env: Arc<FunctionEnv>,
    mode: Mode,
}

impl EpochsFunction {
    pub fn new(env: Arc<FunctionEnv>, mode: Mode) -> Self {
        Self { env, mode }
    }
}

impl TableFunctionImpl for EpochsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = match self.mode {
            Mode::Rows => "epochs",
            Mode::Average => "erp",
        };
        let schema = match self.mode {
            Mode::Rows => rows_schema,
            Mode::Average => average_schema,
        };
        if let Some(t) = super::exec::unbound(name, args.exprs(), schema) {
            return Ok(t);
        }
        let a = Args::new(name, args.exprs(), 3, 5)?;
        let window = Window::parse(&a, name)?;
        let channels = a.set(3, "channels")?;
        let only = a.set(4, "recording")?;
        let env = Arc::clone(&self.env);
        let mode = self.mode;
        let schema = match mode {
            Mode::Rows => rows_schema(),
            Mode::Average => average_schema(),
        };
        let out_schema = Arc::clone(&schema);
        Ok(Arc::new(FunctionTable {
            name,
            call: None,
            schema,
            plan: Arc::new(move |partitions| {
                let env = Arc::clone(&env);
                let window = window.clone();
                let channels = channels.clone();
                let only = only.clone();
                let schema = Arc::clone(&out_schema);
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
                    let window = Arc::new(window);
                    Ok(match mode {
                        Mode::Rows => spread(chosen, partitions, move |pos| {
                            rows_of_channel(
                                Arc::clone(&env),
                                Arc::clone(&events),
                                Arc::clone(&window),
                                Arc::clone(&schema),
                                pos,
                            )
                        }),
                        Mode::Average => {
                            // All channels of one label average together, in one partition.
                            let mut by_label: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
                            for pos in chosen {
                                by_label
                                    .entry(Arc::clone(&env.view.channels[pos].label))
                                    .or_default()
                                    .push(pos);
                            }
                            let mut groups: Vec<Vec<usize>> = by_label.into_values().collect();
                            groups.sort();
                            spread(groups, partitions, move |group| {
                                average_of_label(
                                    Arc::clone(&env),
                                    Arc::clone(&events),
                                    Arc::clone(&window),
                                    Arc::clone(&schema),
                                    group,
                                )
                            })
                        }
                    })
                })
            }),
        }))
    }
}

/// The epoch rows of one channel, a batch per run.
fn rows_of_channel(
    env: Arc<FunctionEnv>,
    events: Arc<HashMap<usize, Arc<Vec<EventRow>>>>,
    window: Arc<Window>,
    schema: SchemaRef,
    pos: usize,
) -> BoxStream<'static, Result<RecordBatch>> {
    let ch = env.view.channels[pos].clone();
    let evs = events.get(&ch.recording).cloned().unwrap_or_default();
    let epochs = epochs_of(&evs, &ch, &window);
    let runs = runs(&epochs);
    let state = (env, ch, evs, epochs, schema);
    futures::stream::iter(runs)
        .then(move |run| {
            let (env, ch, evs, epochs, schema) = (
                Arc::clone(&state.0),
                state.1.clone(),
                Arc::clone(&state.2),
                state.3[run].to_vec(),
                Arc::clone(&state.4),
            );
            async move {
                let values = read_run(&env, &ch, &epochs).await?;
                rows_batch(&schema, &ch, &evs, &epochs, &values)
            }
        })
        .boxed()
}

fn rows_batch(
    schema: &SchemaRef,
    ch: &ChannelInfo,
    events: &[EventRow],
    epochs: &[Epoch],
    values: &[Vec<f64>],
) -> Result<RecordBatch> {
    let n: usize = epochs.iter().map(Epoch::len).sum();
    let mut epoch = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut event_value: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut onset = Vec::with_capacity(n);
    let mut rt = Vec::with_capacity(n);
    let mut sample = Vec::with_capacity(n);
    let mut t_rel = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    for (e, v) in epochs.iter().zip(values) {
        let ev = &events[e.event];
        for (j, x) in v.iter().enumerate() {
            let k = e.k0 + j as i64;
            epoch.push(e.event as i64);
            event_type.push(ev.event_type.as_str());
            event_value.push(ev.value.as_deref());
            onset.push(ev.onset.unwrap_or(f64::NAN));
            rt.push(ev.response_time);
            sample.push(e.sample as i64 + k);
            t_rel.push(k as f64 / ch.rate);
            value.push(*x);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(constant_dictionary(&ch.recording_id, n)),
        Arc::new(Int64Array::from(epoch)),
        Arc::new(StringArray::from(event_type)),
        Arc::new(StringArray::from(event_value)),
        Arc::new(Float64Array::from(onset)),
        Arc::new(Float64Array::from(rt)),
        Arc::new(constant_dictionary(&ch.label, n)),
        Arc::new(Int32Array::from_value(ch.index as i32, n)),
        Arc::new(Int64Array::from(sample)),
        Arc::new(Float64Array::from(t_rel)),
        Arc::new(Float64Array::from(value)),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

pub fn constant_dictionary(v: &str, n: usize) -> ArrayRef {
    let mut b = StringDictionaryBuilder::<Int32Type>::with_capacity(1, 1, v.len());
    b.append_values(v, n);
    Arc::new(b.finish())
}

/// Per (event type, rate): the first offset and the running sums and counts of each offset.
type Sums = HashMap<(String, u64), (i64, Vec<f64>, Vec<i64>)>;

/// The average epoch of every channel with one label, across recordings.
fn average_of_label(
    env: Arc<FunctionEnv>,
    events: Arc<HashMap<usize, Arc<Vec<EventRow>>>>,
    window: Arc<Window>,
    schema: SchemaRef,
    group: Vec<usize>,
) -> BoxStream<'static, Result<RecordBatch>> {
    futures::stream::once(async move {
        let mut sums: Sums = HashMap::new();
        let label = env.view.channels[group[0]].label.to_string();
        for pos in group {
            let ch = &env.view.channels[pos];
            let evs = events.get(&ch.recording).cloned().unwrap_or_default();
            let epochs = epochs_of(&evs, ch, &window);
            for run in runs(&epochs) {
                let run = &epochs[run];
                let values = read_run(&env, ch, run).await?;
                for (e, v) in run.iter().zip(&values) {
                    let ty = &evs[e.event].event_type;
                    add_epoch(&mut sums, ty, ch.rate, e.k0, v);
                }
            }
        }
        average_batch(&schema, &label, sums)
    })
    .boxed()
}

fn add_epoch(sums: &mut Sums, ty: &str, rate: f64, k0: i64, values: &[f64]) {
    let key = (ty.to_string(), rate.to_bits());
    let (_, sum, count) = sums
        .entry(key)
        .or_insert_with(|| (k0, vec![0.0; values.len()], vec![0; values.len()]));
    for ((s, c), x) in sum.iter_mut().zip(count.iter_mut()).zip(values) {
        *s += x;
        *c += 1;
    }
}

fn average_batch(schema: &SchemaRef, label: &str, sums: Sums) -> Result<RecordBatch> {
    let mut keys: Vec<&(String, u64)> = sums.keys().collect();
    keys.sort();
    let (mut ty, mut t_rel, mut value, mut epochs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for key in keys {
        let (k0, sum, count) = &sums[key];
        let rate = f64::from_bits(key.1);
        for (j, (s, c)) in sum.iter().zip(count).enumerate() {
            ty.push(key.0.as_str());
            t_rel.push((k0 + j as i64) as f64 / rate);
            value.push(s / *c as f64);
            epochs.push(*c);
        }
    }
    let n = ty.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ty)),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(label, n))),
        Arc::new(Float64Array::from(t_rel)),
        Arc::new(Float64Array::from(value)),
        Arc::new(Int64Array::from(epochs)),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
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

    fn event(onset: f64, ty: &str) -> EventRow {
        EventRow {
            onset: Some(onset),
            duration: None,
            event_type: ty.into(),
            value: None,
            source: "test".into(),
            sample: None,
            response_time: None,
            extra: None,
        }
    }

    #[test]
    fn lays_out_epochs_per_channel_rate_and_drops_those_that_do_not_fit() {
        let events = vec![
            event(0.1, "left"),
            event(5.0, "left"),
            event(6.0, "right"),
            event(9.9, "left"),
        ];
        let w = Window {
            types: Some(["left".to_string()].into()),
            tmin: -0.2,
            tmax: 0.8,
        };
        // 100 Hz, 10 s: the first (starts before 0) and last (ends past 10 s) don't fit.
        let e = epochs_of(&events, &channel(100.0, 1000, vec![(0, 0.0)]), &w);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].event, e[0].sample, e[0].k0, e[0].k1),
            (1, 500, -20, 80)
        );
        assert_eq!((e[0].first(), e[0].last(), e[0].len()), (480, 580, 101));
        // 256 Hz: offsets round like MNE's.
        let e = epochs_of(&events, &channel(256.0, 2560, vec![(0, 0.0)]), &w);
        assert_eq!((e[0].sample, e[0].k0, e[0].k1), (1280, -51, 205));
        // A gap at 5.5..7 s: the epoch at 5.0 reaches into it and is dropped.
        let gap = channel(100.0, 850, vec![(0, 0.0), (550, 7.0)]);
        assert!(epochs_of(&events, &gap, &w).is_empty());
    }

    #[test]
    fn groups_neighbouring_epochs_into_bounded_runs() {
        let e = |s: u64| Epoch {
            event: 0,
            sample: s,
            k0: 0,
            k1: 9,
        };
        let epochs = vec![e(0), e(100), e(RUN_SAMPLES - 5), e(RUN_SAMPLES + 100)];
        assert_eq!(runs(&epochs), vec![0..2, 2..4]);
        assert!(runs(&[]).is_empty());
    }
}
