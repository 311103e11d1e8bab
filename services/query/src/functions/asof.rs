//! As-of alignment: each row paired with the nearest-in-time (or last-before, or
//! first-after) event, by binary search and merge over onset-sorted events. No nested loop:
//! `asof_events` costs O(n log m) per recording, `samples_asof` one pass over each channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::plan_err;
use datafusion::error::Result;
use futures::StreamExt;
use futures::stream::BoxStream;
use gbrain_storage::events::EventRow;

use super::args::{Args, allowed};
use super::epochs::{constant_dictionary, dictionary_type, events_by_recording};
use super::exec::{FunctionTable, spread};
use super::signal::{FunctionEnv, read_digital, recordings};
use crate::view::ChannelInfo;

/// Samples read at once when walking a channel.
pub const CHUNK_SAMPLES: u64 = 1 << 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The last event at or before.
    Backward,
    /// The first event at or after.
    Forward,
    /// The closest; ties go backward.
    Nearest,
}

impl Direction {
    pub fn parse(s: Option<&str>) -> std::result::Result<Self, String> {
        match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("backward") | Some("before") => Ok(Self::Backward),
            Some("forward") | Some("after") => Ok(Self::Forward),
            Some("nearest") => Ok(Self::Nearest),
            Some(other) => Err(format!(
                "direction {other:?} is not backward, forward or nearest"
            )),
        }
    }
}

/// Onsets of candidate events, ascending, with their positions among the recording's events.
pub struct Targets {
    onsets: Vec<f64>,
    events: Vec<usize>,
}

impl Targets {
    pub fn new(events: &[EventRow], types: &Option<HashSet<String>>) -> Self {
        let mut onsets = Vec::new();
        let mut positions = Vec::new();
        // Events come sorted by onset.
        for (i, e) in events.iter().enumerate() {
            if let Some(o) = e.onset
                && allowed(types, &e.event_type)
            {
                onsets.push(o);
                positions.push(i);
            }
        }
        Self {
            onsets,
            events: positions,
        }
    }

    /// The match for time `t`, skipping event `skip`: (event position, target index).
    pub fn find(
        &self,
        t: f64,
        dir: Direction,
        tolerance: Option<f64>,
        skip: Option<usize>,
    ) -> Option<usize> {
        let after = self.onsets.partition_point(|o| *o <= t);
        // Candidates: the last at or before t, the first at or after t (skipping `skip`).
        let mut back = after;
        let backward = loop {
            if back == 0 {
                break None;
            }
            back -= 1;
            if Some(self.events[back]) != skip {
                break Some(back);
            }
        };
        let mut fwd = self.onsets.partition_point(|o| *o < t);
        let forward = loop {
            if fwd >= self.onsets.len() {
                break None;
            }
            if Some(self.events[fwd]) != skip {
                break Some(fwd);
            }
            fwd += 1;
        };
        let pick = match dir {
            Direction::Backward => backward,
            Direction::Forward => forward,
            Direction::Nearest => match (backward, forward) {
                (Some(b), Some(f)) => {
                    if t - self.onsets[b] <= self.onsets[f] - t {
                        Some(b)
                    } else {
                        Some(f)
                    }
                }
                (b, f) => b.or(f),
            },
        }?;
        if let Some(tol) = tolerance
            && (self.onsets[pick] - t).abs() > tol
        {
            return None;
        }
        Some(self.events[pick])
    }

    /// A cursor for ascending times from `from` on: amortised O(1) per lookup.
    pub fn cursor(&self, from: f64) -> Cursor<'_> {
        Cursor {
            targets: self,
            next: self.onsets.partition_point(|o| *o < from),
        }
    }
}

/// Walks ascending times over the targets.
pub struct Cursor<'a> {
    targets: &'a Targets,
    /// Index of the first target after the last time looked up.
    next: usize,
}

impl Cursor<'_> {
    pub fn find(&mut self, t: f64, dir: Direction, tolerance: Option<f64>) -> Option<usize> {
        let on = &self.targets.onsets;
        while self.next < on.len() && on[self.next] <= t {
            self.next += 1;
        }
        let backward = self.next.checked_sub(1);
        // The first at or after t: an exact match sits just before `next`.
        let forward = match backward {
            Some(b) if on[b] == t => Some(b),
            _ => (self.next < on.len()).then_some(self.next),
        };
        let pick = match dir {
            Direction::Backward => backward,
            Direction::Forward => forward,
            Direction::Nearest => match (backward, forward) {
                (Some(b), Some(f)) => Some(if t - on[b] <= on[f] - t { b } else { f }),
                (b, f) => b.or(f),
            },
        }?;
        if let Some(tol) = tolerance
            && (on[pick] - t).abs() > tol
        {
            return None;
        }
        Some(self.targets.events[pick])
    }
}

fn parse_common(a: &Args<'_>, name: &str, dir_at: usize) -> Result<(Direction, Option<f64>)> {
    let dir = match Direction::parse(a.opt_str(dir_at, "direction")?.as_deref()) {
        Ok(d) => d,
        Err(e) => return plan_err!("{name}: argument {} (direction): {e}", dir_at + 1),
    };
    let tolerance = a.opt_f64(dir_at + 1, "tolerance_s")?;
    if let Some(t) = tolerance
        && t < 0.0
    {
        return plan_err!("{name}: argument {} (tolerance_s) is negative", dir_at + 2);
    }
    Ok((dir, tolerance))
}

fn asof_events_schema() -> SchemaRef {
    let mut fields = vec![Field::new("recording_id", DataType::Utf8, false)];
    for prefix in ["", "matched_"] {
        let nullable = !prefix.is_empty();
        fields.extend([
            Field::new(format!("{prefix}onset"), DataType::Float64, nullable),
            Field::new(format!("{prefix}duration"), DataType::Float64, true),
            Field::new(format!("{prefix}type"), DataType::Utf8, nullable),
            Field::new(format!("{prefix}value"), DataType::Utf8, true),
            Field::new(format!("{prefix}response_time"), DataType::Float64, true),
            Field::new(format!("{prefix}extra"), DataType::Utf8, true),
        ]);
    }
    fields.push(Field::new("lag_s", DataType::Float64, true));
    Arc::new(Schema::new(fields))
}

/// `asof_events(left_types, right_types [, direction [, tolerance_s [, recording]]])`: every
/// left event with its matching right event in the same recording (nulls when none matches).
#[derive(Debug)]
pub struct AsofEventsFunction {
    env: Arc<FunctionEnv>,
}

impl AsofEventsFunction {
    pub fn new(env: Arc<FunctionEnv>) -> Self {
        Self { env }
    }
}

impl TableFunctionImpl for AsofEventsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = "asof_events";
        if let Some(t) = super::exec::unbound(name, args.exprs(), asof_events_schema) {
            return Ok(t);
        }
        let a = Args::new(name, args.exprs(), 2, 5)?;
        let left = a.set(0, "left event types")?;
        let right = a.set(1, "right event types")?;
        let (dir, tolerance) = parse_common(&a, name, 2)?;
        let only = a.set(4, "recording")?;
        let env = Arc::clone(&self.env);
        let schema = asof_events_schema();
        let out = Arc::clone(&schema);
        Ok(Arc::new(FunctionTable {
            name,
            call: None,
            schema,
            plan: Arc::new(move |partitions| {
                let (env, left, right, only, schema) = (
                    Arc::clone(&env),
                    left.clone(),
                    right.clone(),
                    only.clone(),
                    Arc::clone(&out),
                );
                Box::pin(async move {
                    let recs = recordings(&env, &only);
                    let events = events_by_recording(&env, &recs).await?;
                    let items: Vec<(usize, Arc<Vec<EventRow>>)> = recs
                        .iter()
                        .filter_map(|r| events.get(r).map(|e| (*r, Arc::clone(e))))
                        .collect();
                    let (left, right) = (Arc::new(left), Arc::new(right));
                    Ok(spread(items, partitions, move |(r, evs)| {
                        let id = env.view.recording(r).recording_id.clone();
                        let batch = match_events(&schema, &id, &evs, &left, &right, dir, tolerance);
                        futures::stream::once(async move { batch }).boxed()
                    }))
                })
            }),
        }))
    }
}

fn match_events(
    schema: &SchemaRef,
    recording: &str,
    events: &[EventRow],
    left: &Option<HashSet<String>>,
    right: &Option<HashSet<String>>,
    dir: Direction,
    tolerance: Option<f64>,
) -> Result<RecordBatch> {
    let targets = Targets::new(events, right);
    let mut l: Vec<&EventRow> = Vec::new();
    let mut m: Vec<Option<&EventRow>> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let Some(onset) = e.onset else { continue };
        if !allowed(left, &e.event_type) {
            continue;
        }
        l.push(e);
        m.push(
            targets
                .find(onset, dir, tolerance, Some(i))
                .map(|j| &events[j]),
        );
    }
    let n = l.len();
    let side = |rows: Vec<Option<&EventRow>>| -> Vec<ArrayRef> {
        vec![
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|e| e.and_then(|e| e.onset)),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|e| e.and_then(|e| e.duration)),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|e| e.map(|e| e.event_type.as_str())),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|e| e.and_then(|e| e.value.as_deref())),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|e| e.and_then(|e| e.response_time)),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|e| e.and_then(|e| e.extra.as_deref())),
            )),
        ]
    };
    let lag: Float64Array = l
        .iter()
        .zip(&m)
        .map(|(a, b)| Some(b.as_ref()?.onset? - a.onset?))
        .collect();
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(recording, n),
    ))];
    columns.extend(side(l.into_iter().map(Some).collect()));
    columns.extend(side(m));
    columns.push(Arc::new(lag));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn samples_asof_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("recording_id", dictionary_type(), false),
        Field::new("channel", dictionary_type(), false),
        Field::new("channel_index", DataType::Int32, false),
        Field::new("sample_index", DataType::Int64, false),
        Field::new("t", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("event_onset", DataType::Float64, true),
        Field::new("event_type", DataType::Utf8, true),
        Field::new("event_value", DataType::Utf8, true),
        Field::new("event_response_time", DataType::Float64, true),
        Field::new("since_event_s", DataType::Float64, true),
    ]))
}

/// `samples_asof(types [, direction [, tolerance_s [, channels [, recording]]]])`: every
/// sample of the chosen channels with the event in force at its time.
#[derive(Debug)]
pub struct SamplesAsofFunction {
    env: Arc<FunctionEnv>,
}

impl SamplesAsofFunction {
    pub fn new(env: Arc<FunctionEnv>) -> Self {
        Self { env }
    }
}

impl TableFunctionImpl for SamplesAsofFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = "samples_asof";
        if let Some(t) = super::exec::unbound(name, args.exprs(), samples_asof_schema) {
            return Ok(t);
        }
        let a = Args::new(name, args.exprs(), 1, 5)?;
        let types = a.set(0, "event types")?;
        let (dir, tolerance) = parse_common(&a, name, 1)?;
        let channels = a.set(3, "channels")?;
        let only = a.set(4, "recording")?;
        let env = Arc::clone(&self.env);
        let schema = samples_asof_schema();
        let out = Arc::clone(&schema);
        Ok(Arc::new(FunctionTable {
            name,
            call: None,
            schema,
            plan: Arc::new(move |partitions| {
                let (env, types, channels, only, schema) = (
                    Arc::clone(&env),
                    types.clone(),
                    channels.clone(),
                    only.clone(),
                    Arc::clone(&out),
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
                    let types = Arc::new(types);
                    Ok(spread(chosen, partitions, move |pos| {
                        channel_asof(
                            Arc::clone(&env),
                            Arc::clone(&events),
                            Arc::clone(&types),
                            dir,
                            tolerance,
                            Arc::clone(&schema),
                            pos,
                        )
                    }))
                })
            }),
        }))
    }
}

fn channel_asof(
    env: Arc<FunctionEnv>,
    events: Arc<HashMap<usize, Arc<Vec<EventRow>>>>,
    types: Arc<Option<HashSet<String>>>,
    dir: Direction,
    tolerance: Option<f64>,
    schema: SchemaRef,
    pos: usize,
) -> BoxStream<'static, Result<RecordBatch>> {
    let ch = env.view.channels[pos].clone();
    let evs = events.get(&ch.recording).cloned().unwrap_or_default();
    let targets = Arc::new(Targets::new(&evs, &types));
    let chunks: Vec<(u64, u64)> = (0..ch.samples)
        .step_by(CHUNK_SAMPLES as usize)
        .map(|lo| (lo, (lo + CHUNK_SAMPLES - 1).min(ch.samples - 1)))
        .collect();
    // Samples come in ascending time: each chunk's cursor starts by binary search, then walks.
    futures::stream::iter(chunks)
        .then(move |(lo, hi)| {
            let (env, ch, evs, targets, schema) = (
                Arc::clone(&env),
                ch.clone(),
                Arc::clone(&evs),
                Arc::clone(&targets),
                Arc::clone(&schema),
            );
            async move {
                let digital = read_digital(&env.store, &ch, lo, hi).await?;
                asof_batch(&schema, &ch, &evs, &targets, dir, tolerance, lo, &digital)
            }
        })
        .boxed()
}

#[allow(clippy::too_many_arguments)]
fn asof_batch(
    schema: &SchemaRef,
    ch: &ChannelInfo,
    events: &[EventRow],
    targets: &Targets,
    dir: Direction,
    tolerance: Option<f64>,
    first: u64,
    digital: &[i32],
) -> Result<RecordBatch> {
    let n = digital.len();
    let mut t = Vec::with_capacity(n);
    let mut matched: Vec<Option<&EventRow>> = Vec::with_capacity(n);
    let mut cursor = targets.cursor(ch.t_of(first));
    for i in 0..n as u64 {
        let ti = ch.t_of(first + i);
        t.push(ti);
        matched.push(cursor.find(ti, dir, tolerance).map(|j| &events[j]));
    }
    let since: Float64Array = t
        .iter()
        .zip(&matched)
        .map(|(ti, e)| Some(ti - e.as_ref()?.onset?))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        constant_dictionary(&ch.recording_id, n),
        constant_dictionary(&ch.label, n),
        Arc::new(Int32Array::from_value(ch.index as i32, n)),
        Arc::new(Int64Array::from_iter_values(
            (0..n as i64).map(|i| first as i64 + i),
        )),
        Arc::new(Float64Array::from(t)),
        Arc::new(Float64Array::from_iter_values(
            digital.iter().map(|d| f64::from(*d) * ch.gain + ch.offset),
        )),
        Arc::new(Float64Array::from_iter(
            matched.iter().map(|e| e.and_then(|e| e.onset)),
        )),
        Arc::new(StringArray::from_iter(
            matched.iter().map(|e| e.map(|e| e.event_type.as_str())),
        )),
        Arc::new(StringArray::from_iter(
            matched.iter().map(|e| e.and_then(|e| e.value.as_deref())),
        )),
        Arc::new(Float64Array::from_iter(
            matched.iter().map(|e| e.and_then(|e| e.response_time)),
        )),
        Arc::new(since),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    fn ev(onset: f64, ty: &str) -> EventRow {
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
    fn finds_backward_forward_and_nearest_matches() {
        let events = vec![
            ev(1.0, "stim"),
            ev(1.4, "resp"),
            ev(3.0, "stim"),
            ev(3.2, "resp"),
        ];
        let resp = Targets::new(&events, &Some(["resp".to_string()].into()));
        assert_eq!(resp.find(1.0, Direction::Forward, None, Some(0)), Some(1));
        assert_eq!(resp.find(1.0, Direction::Backward, None, Some(0)), None);
        assert_eq!(resp.find(3.0, Direction::Backward, None, Some(2)), Some(1));
        assert_eq!(resp.find(3.0, Direction::Nearest, None, Some(2)), Some(3));
        assert_eq!(resp.find(3.0, Direction::Nearest, Some(0.1), Some(2)), None);
        // An event never matches itself, even when the types overlap.
        let all = Targets::new(&events, &None);
        assert_eq!(all.find(1.4, Direction::Backward, None, Some(1)), Some(0));
        assert_eq!(all.find(1.4, Direction::Backward, None, None), Some(1));
    }

    #[test]
    fn cursor_agrees_with_binary_search() {
        let events: Vec<EventRow> = [0.5, 0.5, 1.0, 2.25, 2.5, 7.0]
            .iter()
            .map(|o| ev(*o, "x"))
            .collect();
        let targets = Targets::new(&events, &None);
        for dir in [Direction::Backward, Direction::Forward, Direction::Nearest] {
            for tol in [None, Some(0.3)] {
                let mut c = targets.cursor(0.0);
                for i in 0..100 {
                    let t = i as f64 * 0.1;
                    let a = c.find(t, dir, tol).map(|j| events[j].onset);
                    let b = targets.find(t, dir, tol, None).map(|j| events[j].onset);
                    assert_eq!(a, b, "t={t} {dir:?} {tol:?}");
                }
            }
        }
    }

    #[test]
    fn matches_every_left_event_and_keeps_unmatched_ones() {
        let events = vec![ev(1.0, "stim"), ev(1.4, "resp"), ev(3.0, "stim")];
        let batch = match_events(
            &asof_events_schema(),
            "r1",
            &events,
            &Some(["stim".to_string()].into()),
            &Some(["resp".to_string()].into()),
            Direction::Forward,
            Some(1.0),
        )
        .unwrap();
        assert_eq!(batch.num_rows(), 2);
        let lag = batch
            .column_by_name("lag_s")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert!((lag.value(0) - 0.4).abs() < 1e-12);
        assert!(lag.is_null(1), "nothing follows the second stimulus");
    }
}
