//! A loop session: a live stream's samples, cut into windows, preprocessed, decoded on the
//! inference nodes, adapted, and sent back as feedback.
//!
//! Samples arrive as the ingest node receives them (before its log's sync). Each is converted to physical units,
//! re-referenced and band-passed over the stream; the chosen channels go into a ring of one
//! window. Every hop a window's features go to the inference nodes; up to
//! [`MAX_IN_FLIGHT`] windows are decoded at once, and their results are taken in window order,
//! so the adaptation sees windows in the order they happened. A window with no answer by its
//! deadline gets feedback carrying the error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use gbrain_catalog::FileKind;
use gbrain_common::clock::Clock;
use gbrain_ingest::live::LiveChunk;
use gbrain_proto::coordinator::v1 as pb;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::decoder::{Adapter, score_of};
use crate::dsp::{BandPass, Features, Reference, ZScore};
use crate::evolution::{Decided, Evolution, Labelled};
use crate::feed::Feed;
use crate::kserve::{Inferred, Pool};
use crate::records::{self, OutcomeRow, PredictionRow, Records};
use crate::{Error, Result};

/// Windows a session decodes at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Windows whose scores a session keeps for outcomes reported late: an hour at a 100 ms hop.
pub const RECENT_WINDOWS: usize = 36_000;
/// Feedback messages a slow feedback reader may fall behind by.
pub const FEEDBACK_BUFFER: usize = 4096;
/// Predictions a session holds while its rows cannot be stored; past it the oldest are
/// dropped (outcomes never are).
pub const MAX_HELD_ROWS: usize = 16 * records::FLUSH_ROWS;
/// Tries to store a session's last rows after it ends.
pub const WRITE_TRIES_AFTER_END: u32 = 30;
/// How long `ReportOutcome` waits for its row to be stored before it says it is only held.
pub const OUTCOME_STORE_WAIT: Duration = Duration::from_secs(20);

/// How a session adapts its decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Unsupervised,
    Supervised,
}

/// What a session was asked for, checked.
#[derive(Clone, Debug)]
pub struct Spec {
    pub stream_id: String,
    pub model: String,
    /// Empty: the newest version.
    pub version: String,
    pub window_s: f64,
    pub hop_s: f64,
    pub channels: Vec<String>,
    pub reference: Reference,
    pub bandpass: Option<(f64, f64)>,
    pub bands: Vec<(f64, f64)>,
    pub log: bool,
    pub zscore: bool,
    pub mode: Mode,
    pub rate: f64,
    pub deadline: Duration,
}

impl Spec {
    /// Checks a request, naming the field at fault.
    pub fn from_request(r: &pb::StartSessionRequest) -> Result<Self> {
        if r.stream_id.is_empty() {
            return Err(Error::invalid("stream_id", "is required"));
        }
        let decoder = r.decoder.clone().unwrap_or_default();
        if decoder.model.is_empty() {
            return Err(Error::invalid("decoder.model", "is required"));
        }
        let w = r.windowing.clone().unwrap_or_default();
        if !(w.window_s > 0.0 && w.window_s <= 60.0) {
            return Err(Error::invalid(
                "windowing.window_s",
                format!("{} s is not within (0, 60] s", w.window_s),
            ));
        }
        if !(w.hop_s > 0.0 && w.hop_s <= w.window_s) {
            return Err(Error::invalid(
                "windowing.hop_s",
                format!("{} s is not within (0, window_s]", w.hop_s),
            ));
        }
        if w.channels.is_empty() {
            return Err(Error::invalid("windowing.channels", "name at least one"));
        }
        let p = w.preprocessing.unwrap_or_default();
        let band = |b: &pb::Band, field: &str| {
            if b.lo_hz >= 0.0 && b.lo_hz < b.hi_hz {
                Ok((b.lo_hz, b.hi_hz))
            } else {
                Err(Error::invalid(
                    field,
                    format!("{}-{} Hz is not a band", b.lo_hz, b.hi_hz),
                ))
            }
        };
        let bands = p
            .bands
            .iter()
            .enumerate()
            .map(|(i, b)| band(b, &format!("windowing.preprocessing.bands[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        if bands.is_empty() {
            return Err(Error::invalid(
                "windowing.preprocessing.bands",
                "name at least one feature band",
            ));
        }
        let bandpass = p
            .bandpass
            .as_ref()
            .map(|b| band(b, "windowing.preprocessing.bandpass"))
            .transpose()?;
        let reference = match pb::preprocessing::Reference::try_from(p.reference) {
            Ok(pb::preprocessing::Reference::None) => Reference::None,
            Ok(pb::preprocessing::Reference::CommonAverage) => Reference::CommonAverage,
            Err(_) => {
                return Err(Error::invalid(
                    "windowing.preprocessing.reference",
                    "unknown reference",
                ));
            }
        };
        let a = r.adaptation.unwrap_or_default();
        let mode = match pb::adaptation::Mode::try_from(a.mode) {
            Ok(pb::adaptation::Mode::Off) => Mode::Off,
            Ok(pb::adaptation::Mode::Unsupervised) => Mode::Unsupervised,
            Ok(pb::adaptation::Mode::Supervised) => Mode::Supervised,
            Err(_) => return Err(Error::invalid("adaptation.mode", "unknown mode")),
        };
        if !(a.rate >= 0.0 && a.rate <= Adapter::MAX_RATE) {
            return Err(Error::invalid(
                "adaptation.rate",
                format!("{} is not within [0, {}]", a.rate, Adapter::MAX_RATE),
            ));
        }
        let deadline_ms = if r.deadline_ms == 0.0 {
            100.0
        } else {
            r.deadline_ms
        };
        if !(deadline_ms > 0.0 && deadline_ms <= 60_000.0) {
            return Err(Error::invalid(
                "deadline_ms",
                format!("{deadline_ms} is not within (0, 60000]"),
            ));
        }
        Ok(Self {
            stream_id: r.stream_id.clone(),
            model: decoder.model,
            version: if decoder.version == 0 {
                String::new()
            } else {
                decoder.version.to_string()
            },
            window_s: w.window_s,
            hop_s: w.hop_s,
            channels: w.channels,
            reference,
            bandpass,
            bands,
            log: p.log,
            zscore: p.zscore,
            mode,
            rate: if mode == Mode::Off { 0.0 } else { a.rate },
            deadline: Duration::from_secs_f64(deadline_ms / 1000.0),
        })
    }
}

#[derive(Debug, Default)]
struct Stats {
    windows: u64,
    errors: u64,
    outcomes: u64,
    correct: u64,
}

/// A decoded window, kept for outcomes reported later.
struct Recent {
    window: u64,
    first_sample: u64,
    end_sample: u64,
    features: Vec<f32>,
    /// The live version's decision first, then the shadow's.
    decided: Vec<Decided>,
}

struct State {
    /// One adaptive layer per version the session decodes with (0: the newest).
    adapters: HashMap<u64, Adapter>,
    /// The version whose predictions went back last.
    live: u64,
    stats: Stats,
    recent: VecDeque<Recent>,
    running: bool,
}

impl State {
    fn adapter(&mut self, version: u64, rate: f64) -> &mut Adapter {
        self.adapters
            .entry(version)
            .or_insert_with(|| Adapter::new(rate, 0.0))
    }
}

/// Rows not yet stored, and which generation of them is being collected.
#[derive(Default)]
struct Held {
    rows: records::Pending,
    generation: u64,
    /// The writer has taken its last rows: the session has ended.
    closed: bool,
}

/// One loop session.
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub recording_id: String,
    pub spec: Spec,
    /// The stream's sample rate.
    rate: f64,
    /// The model's evolution, when the session follows one, and whether it is a canary.
    evolution: Option<Arc<Evolution>>,
    canary: bool,
    records: Records,
    held: Mutex<Held>,
    /// Wakes the writer early (an outcome waits, or many rows are held).
    wake: Notify,
    /// The last generation of rows stored.
    stored: watch::Sender<u64>,
    /// The owner's credentials, for the inference nodes; never logged.
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    feedback: broadcast::Sender<pb::FeedbackMessage>,
    state: Mutex<State>,
    metrics: crate::CoordinatorMetrics,
    /// Asks the session to stop.
    pub stop: CancellationToken,
    /// The session has stopped: its last windows are decided and sent.
    pub done: CancellationToken,
    /// The writer gave up with rows unstored (the store stayed down after the end).
    writer_gone: CancellationToken,
    /// The writer has ended: every row is stored, or given up on.
    pub written: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// A window on its way to the inference nodes.
struct Pending {
    window: u64,
    first_sample: u64,
    end_sample: u64,
    received_ns: i64,
    source_ns: Option<i64>,
}

/// What a session is made of, besides its spec.
pub struct Parts {
    pub id: String,
    pub tenant: String,
    pub recording_id: String,
    pub rate: f64,
    pub evolution: Option<Arc<Evolution>>,
    pub records: Records,
    pub authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    pub metrics: crate::CoordinatorMetrics,
}

fn version_str(v: u64) -> String {
    if v == 0 { String::new() } else { v.to_string() }
}

impl Session {
    pub fn new(spec: Spec, parts: Parts) -> Self {
        let canary = parts.evolution.as_ref().is_some_and(|e| e.join());
        let live = spec.version.parse().unwrap_or(0);
        Self {
            metrics: parts.metrics,
            id: parts.id,
            tenant: parts.tenant,
            recording_id: parts.recording_id,
            rate: parts.rate,
            evolution: parts.evolution,
            canary,
            records: parts.records,
            held: Mutex::new(Held {
                generation: 1,
                ..Held::default()
            }),
            wake: Notify::new(),
            stored: watch::channel(0).0,
            state: Mutex::new(State {
                adapters: HashMap::new(),
                live,
                stats: Stats::default(),
                recent: VecDeque::new(),
                running: true,
            }),
            spec,
            authorization: parts.authorization,
            feedback: broadcast::channel(FEEDBACK_BUFFER).0,
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
            writer_gone: CancellationToken::new(),
            written: CancellationToken::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version whose predictions go back as feedback, and the one decoded in shadow
    /// (0: the newest the nodes serve).
    fn versions(&self) -> (u64, Option<u64>) {
        match &self.evolution {
            Some(e) => e.versions(self.canary),
            None => (self.spec.version.parse().unwrap_or(0), None),
        }
    }

    /// Holds rows for the writer.
    fn hold(&self, predictions: impl IntoIterator<Item = PredictionRow>) {
        let mut held = self.held();
        held.rows.predictions.extend(predictions);
        if held.rows.predictions.len() >= records::FLUSH_ROWS {
            self.wake.notify_one();
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feedback from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::FeedbackMessage> {
        self.feedback.subscribe()
    }

    pub fn describe(&self) -> pb::LoopSession {
        let st = self.state();
        pb::LoopSession {
            session_id: self.id.clone(),
            stream_id: self.spec.stream_id.clone(),
            recording_id: self.recording_id.clone(),
            model: self.spec.model.clone(),
            running: st.running,
            model_version: version_str(st.live),
            canary: self.canary,
            windows: st.stats.windows,
            errors: st.stats.errors,
            outcomes: st.stats.outcomes,
            accuracy: if st.stats.outcomes == 0 {
                0.0
            } else {
                st.stats.correct as f64 / st.stats.outcomes as f64
            },
            bias: st.adapters.get(&st.live).map_or(0.0, Adapter::bias),
        }
    }

    /// The true class of windows `[first, last]`: counts them against their live predictions,
    /// in supervised mode moves each version's class means, and stores the outcome; returns
    /// once the outcome is stored. An evolving model's versions are then judged on them.
    pub async fn report(&self, first: u64, last: u64, label: u8) -> Result<(u64, u64)> {
        let (n, correct, generation, labelled) = {
            let mut st = self.state();
            let start = st.recent.partition_point(|r| r.window < first);
            let mut hits = Vec::new();
            let mut labelled = Vec::new();
            let mut span: Option<(u64, u64)> = None;
            // Each version's score on each window, for the supervised layers.
            let mut scores: Vec<(u64, f64)> = Vec::new();
            for r in st.recent.iter().skip(start) {
                if r.window > last {
                    break;
                }
                scores.extend(r.decided.iter().map(|d| (d.version, d.raw)));
                let Some(live) = r.decided.first() else {
                    continue;
                };
                hits.push(live.class == label);
                span = Some(span.map_or((r.first_sample, r.end_sample), |(a, b)| {
                    (a.min(r.first_sample), b.max(r.end_sample))
                }));
                if self.evolution.is_some() {
                    labelled.push(Labelled {
                        session: Arc::from(self.id.as_str()),
                        recording: Arc::from(self.recording_id.as_str()),
                        window: r.window,
                        features: r.features.clone(),
                        label,
                        decided: r.decided.clone(),
                    });
                }
            }
            let n = hits.len() as u64;
            let correct = hits.iter().filter(|c| **c).count() as u64;
            // Taken (and counted) only while the writer takes rows.
            let generation = {
                let mut held = self.held();
                if held.closed {
                    return Err(Error::precondition(
                        "session_id",
                        "the session has ended; outcomes are taken while it runs",
                    ));
                }
                held.rows.outcomes.push(OutcomeRow {
                    first_window: first,
                    last_window: last,
                    label,
                    windows: n,
                    correct,
                    samples: span,
                    reported_ns: self.records.now_ns(),
                });
                held.generation
            };
            st.stats.outcomes += n;
            st.stats.correct += correct;
            if self.spec.mode == Mode::Supervised {
                let rate = self.spec.rate;
                for (version, raw) in scores {
                    st.adapter(version, rate).learn(raw, label);
                }
            }
            (n, correct, generation, labelled)
        };
        self.metrics.outcomes.inc_by(n);
        self.wake.notify_one();
        let mut stored = self.stored.subscribe();
        tokio::select! {
            r = stored.wait_for(|g| *g >= generation) => {
                r.map_err(|_| Error::Records("the session's writer ended".into()))?;
            }
            () = self.writer_gone.cancelled() => {
                return Err(Error::Records(
                    "the outcome was counted but not stored: the store stayed down after the \
                     session ended"
                        .into(),
                ));
            }
            () = tokio::time::sleep(OUTCOME_STORE_WAIT) => {
                return Err(Error::Records(
                    "the outcome is counted and held but not stored yet: the store does not \
                     answer; it is stored once it does (do not report it again)"
                        .into(),
                ));
            }
        }
        if let Some(e) = &self.evolution
            && !labelled.is_empty()
        {
            e.trial(self.canary, labelled).await;
        }
        Ok((n, correct))
    }

    /// Writes held rows until the session is done, then once more. Rows that cannot be
    /// stored are kept and tried again; after the end, for at most [`WRITE_TRIES_AFTER_END`]
    /// more tries.
    pub async fn write_rows(self: Arc<Self>) {
        self.write_until_done().await;
        self.written.cancel();
    }

    async fn write_until_done(&self) {
        let mut tick = tokio::time::interval(records::FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut ending, mut tries_after_end) = (false, 0);
        loop {
            if ending {
                tokio::time::sleep(records::FLUSH_EVERY).await;
            } else {
                ending = tokio::select! {
                    _ = tick.tick() => false,
                    () = self.wake.notified() => false,
                    () = self.done.cancelled() => true,
                };
            }
            let (mut rows, generation) = {
                let mut held = self.held();
                held.closed |= ending;
                let g = held.generation;
                held.generation += 1;
                (std::mem::take(&mut held.rows), g)
            };
            if !rows.is_empty()
                && let Err(e) = self.write(&mut rows, self.rate).await
            {
                tracing::warn!(session = %self.id, error = %e, "loop rows not stored yet; retrying");
                let mut held = self.held();
                let later = std::mem::take(&mut held.rows);
                held.rows = rows;
                held.rows.predictions.extend(later.predictions);
                held.rows.outcomes.extend(later.outcomes);
                let over = held.rows.predictions.len().saturating_sub(MAX_HELD_ROWS);
                if over > 0 {
                    tracing::warn!(session = %self.id, dropped = over, "predictions dropped: the store is down too long");
                    held.rows.predictions.drain(..over);
                }
                if ending {
                    tries_after_end += 1;
                    if tries_after_end >= WRITE_TRIES_AFTER_END {
                        tracing::error!(
                            session = %self.id,
                            predictions = held.rows.predictions.len(),
                            outcomes = held.rows.outcomes.len(),
                            "loop rows not stored: the session ended and the store stayed down"
                        );
                        self.writer_gone.cancel();
                        return;
                    }
                }
                continue;
            }
            self.stored.send_replace(generation);
            if ending {
                return;
            }
        }
    }

    /// Stores `rows`, a table at a time; what is stored leaves `rows`, so a retry writes
    /// only the rest.
    async fn write(&self, rows: &mut records::Pending, rate: f64) -> Result<()> {
        if !rows.predictions.is_empty() {
            let batch =
                records::predictions_batch(&self.id, &self.spec.model, rate, &rows.predictions)?;
            self.records
                .append(
                    &self.tenant,
                    &self.recording_id,
                    FileKind::Predictions,
                    batch,
                )
                .await?;
            rows.predictions.clear();
        }
        if !rows.outcomes.is_empty() {
            let batch = records::outcomes_batch(&self.id, rate, &rows.outcomes)?;
            self.records
                .append(&self.tenant, &self.recording_id, FileKind::Outcomes, batch)
                .await?;
            rows.outcomes.clear();
        }
        Ok(())
    }

    /// Tells the feedback reader that samples `[from, to)` had no windows (window 0 is no
    /// window): the session fell behind its stream and starts its windows again after it.
    fn gap(&self, from: u64, to: u64, missed: u64, clock: &dyn Clock) {
        let now = clock.now_ns();
        let _ = self.feedback.send(pb::FeedbackMessage {
            session_id: self.id.clone(),
            window: 0,
            first_sample: from,
            end_sample: to,
            result: Some(pb::feedback_message::Result::Error(format!(
                "no windows over samples {from}..{to}: the session fell {missed} chunks behind \
                 its stream; windows start again after the gap"
            ))),
            stamps: Some(pb::Stamps {
                source_ns: None,
                received_ns: now,
                inferred_ns: now,
                sent_ns: now,
            }),
        });
    }

    /// Takes a decoded window: adapts each version's layer, keeps its decisions, sends the
    /// live version's feedback, and holds the rows.
    fn finish(&self, p: Pending, decoded: Decoded, clock: &dyn Clock) {
        let Decoded {
            live,
            result,
            shadow,
            inferred_ns,
            features,
        } = decoded;
        let rate = self.spec.rate;
        let adapt = self.spec.mode != Mode::Off;
        let row = |shadow: bool| PredictionRow {
            window: p.window,
            first_sample: p.first_sample,
            end_sample: p.end_sample,
            model_version: None,
            shadow,
            class: None,
            probability: None,
            raw_score: None,
            score: None,
            error: None,
            source_ns: p.source_ns,
            received_ns: p.received_ns,
            inferred_ns,
            sent_ns: None,
        };
        let mut decided = Vec::with_capacity(2);
        let mut live_row = row(false);
        let result = match result {
            Ok(inferred) if inferred.probabilities.len() == 2 => {
                let probs = [inferred.probabilities[0], inferred.probabilities[1]];
                let raw = score_of(probs);
                let mut st = self.state();
                st.live = live;
                let adapter = st.adapter(live, rate);
                let (class, adjusted) = adapter.decide(raw);
                if adapt {
                    adapter.observe(raw);
                }
                st.stats.windows += 1;
                drop(st);
                self.metrics.windows.inc();
                // The adapter's key: the version asked for (0 for the newest).
                decided.push(Decided {
                    version: live,
                    raw,
                    class,
                });
                live_row.model_version = Some(inferred.model_version.clone());
                live_row.class = Some(class);
                live_row.probability = Some(f64::from(probs[1]));
                live_row.raw_score = Some(raw);
                live_row.score = Some(adjusted);
                pb::feedback_message::Result::Prediction(pb::Prediction {
                    probabilities: inferred.probabilities,
                    class: u32::from(class),
                    score: adjusted,
                    model: self.spec.model.clone(),
                    model_version: inferred.model_version,
                })
            }
            Ok(inferred) => {
                self.state().stats.errors += 1;
                self.metrics.window_errors.inc();
                let e = format!(
                    "the decoder gave {} probabilities; a two-class decoder gives 2",
                    inferred.probabilities.len()
                );
                live_row.error = Some(e.clone());
                pb::feedback_message::Result::Error(e)
            }
            Err(e) => {
                self.state().stats.errors += 1;
                self.metrics.window_errors.inc();
                live_row.error = Some(e.to_string());
                pb::feedback_message::Result::Error(e.to_string())
            }
        };
        let live_failed = live_row.error.is_some();
        let mut rows = Vec::with_capacity(2);
        if let Some((version, r)) = shadow {
            let mut shadow_row = row(true);
            shadow_row.model_version = Some(version_str(version));
            match r {
                Ok(inferred) if inferred.probabilities.len() == 2 => {
                    let probs = [inferred.probabilities[0], inferred.probabilities[1]];
                    let raw = score_of(probs);
                    let mut st = self.state();
                    let adapter = st.adapter(version, rate);
                    let (class, adjusted) = adapter.decide(raw);
                    if adapt {
                        adapter.observe(raw);
                    }
                    drop(st);
                    decided.push(Decided {
                        version,
                        raw,
                        class,
                    });
                    shadow_row.class = Some(class);
                    shadow_row.probability = Some(f64::from(probs[1]));
                    shadow_row.raw_score = Some(raw);
                    shadow_row.score = Some(adjusted);
                }
                Ok(inferred) => {
                    shadow_row.error = Some(format!(
                        "the decoder gave {} probabilities",
                        inferred.probabilities.len()
                    ));
                }
                Err(e) => shadow_row.error = Some(e.to_string()),
            }
            rows.push(shadow_row);
        }
        let sent_ns = clock.now_ns();
        self.metrics
            .window_seconds
            .observe((sent_ns - p.received_ns).max(0) as f64 / 1e9);
        // Held before an outcome can name the window (it is in `recent` below), so an outcome
        // is stored with, or after, the predictions it names.
        live_row.sent_ns = Some(sent_ns);
        rows.insert(0, live_row);
        self.hold(rows);
        if !decided.is_empty() && !live_failed {
            let mut st = self.state();
            st.recent.push_back(Recent {
                window: p.window,
                first_sample: p.first_sample,
                end_sample: p.end_sample,
                features,
                decided,
            });
            if st.recent.len() > RECENT_WINDOWS {
                st.recent.pop_front();
            }
        }
        let _ = self.feedback.send(pb::FeedbackMessage {
            session_id: self.id.clone(),
            window: p.window,
            first_sample: p.first_sample,
            end_sample: p.end_sample,
            result: Some(result),
            stamps: Some(pb::Stamps {
                source_ns: p.source_ns,
                received_ns: p.received_ns,
                inferred_ns,
                sent_ns,
            }),
        });
    }
}

/// A session's next message, in order.
enum Step {
    Window(Pending, Box<Decoded>),
    /// Samples `[from, to)` had no windows: the session fell `missed` chunks behind.
    Gap {
        from: u64,
        to: u64,
        missed: u64,
    },
}

/// What the inference nodes made of a window.
struct Decoded {
    live: u64,
    result: Result<Inferred>,
    shadow: Option<(u64, Result<Inferred>)>,
    inferred_ns: i64,
    features: Vec<f32>,
}

/// The signal path of a session, sample by sample.
struct Signal {
    width: usize,
    resolution: Vec<f64>,
    chosen: Vec<usize>,
    reference: Reference,
    bandpass: Option<BandPass>,
    features: Features,
    zscore: Option<ZScore>,
    rate: f64,
    len: usize,
    hop: usize,
    ring: VecDeque<f64>,
    seen: u64,
    sample: Vec<f64>,
}

impl Signal {
    fn new(spec: &Spec, feed: &Feed) -> Result<Self> {
        let layout = &feed.layout;
        let rate = layout.sample_rate;
        let width = layout.channels.len();
        let chosen = spec
            .channels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                layout
                    .channels
                    .iter()
                    .position(|c| &c.label == label)
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("windowing.channels[{i}]"),
                            format!("the stream has no channel '{label}'"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let len = (spec.window_s * rate).round() as usize;
        let hop = ((spec.hop_s * rate).round() as usize).max(1);
        if len < 8 {
            return Err(Error::invalid(
                "windowing.window_s",
                format!("{} s at {rate} Hz is fewer than 8 samples", spec.window_s),
            ));
        }
        let bandpass = spec
            .bandpass
            .map(|(lo, hi)| BandPass::new(width, lo, hi, rate))
            .transpose()?;
        for (i, (_, hi)) in spec.bands.iter().enumerate() {
            if *hi > rate / 2.0 {
                return Err(Error::invalid(
                    format!("windowing.preprocessing.bands[{i}]"),
                    format!("{hi} Hz is above half of the stream's {rate} Hz"),
                ));
            }
        }
        let features = Features {
            channels: (0..chosen.len()).collect(),
            bands: spec.bands.clone(),
            log: spec.log,
        };
        Ok(Self {
            width,
            resolution: layout.channels.iter().map(|c| c.resolution).collect(),
            zscore: spec.zscore.then(|| ZScore::new(features.len(), 0.01)),
            features,
            reference: spec.reference,
            bandpass,
            rate,
            len,
            hop,
            ring: VecDeque::with_capacity(len * chosen.len()),
            chosen,
            seen: 0,
            sample: vec![0.0; width],
        })
    }

    /// Takes sample `s` of `chunk`; returns the window's features when one ends here.
    fn push(&mut self, chunk: &LiveChunk, s: usize) -> Option<Vec<f64>> {
        let row = &chunk.values[s * self.width..(s + 1) * self.width];
        for ((d, v), r) in self.sample.iter_mut().zip(row).zip(&self.resolution) {
            *d = f64::from(*v) * r;
        }
        self.reference.apply(&mut self.sample);
        if let Some(f) = &mut self.bandpass {
            f.apply(&mut self.sample);
        }
        let k = self.chosen.len();
        if self.ring.len() == self.len * k {
            self.ring.drain(..k);
        }
        for &c in &self.chosen {
            self.ring.push_back(self.sample[c]);
        }
        self.seen += 1;
        let len = self.len as u64;
        if self.seen < len || !(self.seen - len).is_multiple_of(self.hop as u64) {
            return None;
        }
        let window = self.ring.make_contiguous();
        let mut features = self.features.extract(window, k, self.rate);
        if let Some(z) = &mut self.zscore {
            features = z.apply(&features);
        }
        Some(features)
    }

    /// Starts over after missed samples: no window spans a gap.
    fn reset(&mut self) {
        self.ring.clear();
        self.seen = 0;
    }
}

/// Checks that a session can run on this feed before it starts.
pub fn check(spec: &Spec, feed: &Feed) -> Result<()> {
    Signal::new(spec, feed).map(|_| ())
}

/// Runs a session until it is stopped or its stream ends.
pub async fn run(session: Arc<Session>, mut feed: Feed, pool: Arc<Pool>, clock: Arc<dyn Clock>) {
    let mut signal = match Signal::new(&session.spec, &feed) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "loop session cannot start");
            session.state().running = false;
            session.stop.cancel();
            session.done.cancel();
            return;
        }
    };
    session.metrics.sessions_active.inc();
    let mut in_flight: FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = Step> + Send>>> =
        FuturesOrdered::new();
    let mut window = 0u64;
    let mut ended = false;
    // The end of the last chunk taken, and a gap the session fell into: (from, chunks missed).
    let mut seen_to = 0u64;
    let mut gap: Option<(u64, u64)> = None;
    while !(ended && in_flight.is_empty()) {
        tokio::select! {
            () = session.stop.cancelled(), if !ended => ended = true,
            next = feed.recv(), if !ended && in_flight.len() < MAX_IN_FLIGHT => {
                match next {
                    Ok(chunk) => {
                        if let Some((from, missed)) = gap.take() {
                            let to = chunk.first_sample;
                            in_flight.push_back(Box::pin(async move {
                                Step::Gap { from, to, missed }
                            }));
                        }
                        seen_to = chunk.first_sample + chunk.samples as u64;
                        for s in 0..chunk.samples {
                            let Some(features) = signal.push(&chunk, s) else { continue };
                            window += 1;
                            let end_sample = chunk.first_sample + s as u64 + 1;
                            let pending = Pending {
                                window,
                                first_sample: end_sample - signal.len as u64,
                                end_sample,
                                received_ns: chunk.received_ns,
                                source_ns: chunk.source_time_ns.map(|t| {
                                    t + (s as f64 / signal.rate * 1e9).round() as i64
                                }),
                            };
                            let deadline = Instant::now() + session.spec.deadline;
                            let (pool, session2, clock2) =
                                (Arc::clone(&pool), Arc::clone(&session), Arc::clone(&clock));
                            let x: Vec<f32> = features.iter().map(|v| *v as f32).collect();
                            let (live, shadow) = session.versions();
                            in_flight.push_back(Box::pin(async move {
                                let s = &session2;
                                let infer = |v: u64| {
                                    let (pool, x) = (&pool, &x);
                                    async move {
                                        pool.infer(
                                            &s.spec.model,
                                            &version_str(v),
                                            x,
                                            &s.authorization,
                                            deadline,
                                        )
                                        .await
                                    }
                                };
                                let (result, shadow) = tokio::join!(infer(live), async {
                                    match shadow {
                                        Some(v) => Some((v, infer(v).await)),
                                        None => None,
                                    }
                                });
                                let inferred_ns = clock2.now_ns();
                                Step::Window(
                                    pending,
                                    Box::new(Decoded {
                                        live,
                                        result,
                                        shadow,
                                        inferred_ns,
                                        features: x,
                                    }),
                                )
                            }));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            session = %session.id, missed,
                            "loop session fell behind its stream; windows restart after the gap"
                        );
                        signal.reset();
                        gap = Some((seen_to, gap.map_or(0, |(_, m)| m) + missed));
                    }
                    Err(broadcast::error::RecvError::Closed) => ended = true,
                }
            }
            Some(step) = in_flight.next(), if !in_flight.is_empty() => match step {
                Step::Window(pending, decoded) => session.finish(pending, *decoded, clock.as_ref()),
                Step::Gap { from, to, missed } => session.gap(from, to, missed, clock.as_ref()),
            },
        }
    }
    session.state().running = false;
    // Ended: the coordinator forgets it when the next session starts.
    session.stop.cancel();
    session.done.cancel();
    session.metrics.sessions_active.dec();
    tracing::info!(session = %session.id, "loop session ended");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gbrain_common::clock::SystemClock;
    use gbrain_ingest::live::{ChannelSpec, Layout, LiveChunk};

    use super::*;

    fn request() -> pb::StartSessionRequest {
        pb::StartSessionRequest {
            stream_id: "s".into(),
            decoder: Some(pb::Decoder {
                model: "m".into(),
                version: 0,
            }),
            windowing: Some(pb::Windowing {
                window_s: 1.0,
                hop_s: 0.1,
                channels: vec!["C3".into()],
                preprocessing: Some(pb::Preprocessing {
                    bands: vec![pb::Band {
                        lo_hz: 8.0,
                        hi_hz: 13.0,
                    }],
                    ..Default::default()
                }),
            }),
            adaptation: None,
            deadline_ms: 200.0,
        }
    }

    fn chunk(seq: u64, first_sample: u64, samples: usize) -> Arc<LiveChunk> {
        Arc::new(LiveChunk {
            seq,
            first_sample,
            samples,
            values: (0..samples * 2).map(|i| (i % 97) as i32).collect(),
            received_ns: 1,
            source_time_ns: None,
        })
    }

    /// A session that falls behind its stream says so in its feedback, in order, and its
    /// windows start again after the gap.
    #[tokio::test]
    async fn a_gap_in_the_stream_is_told_in_order() {
        let catalog = gbrain_catalog::Catalog::connect("sqlite::memory:")
            .await
            .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let records = Records::new(
            catalog,
            Arc::new(object_store::memory::InMemory::new()),
            Arc::clone(&clock),
        );
        let layout = Layout {
            sample_rate: 250.0,
            channels: ["C3", "C4"]
                .iter()
                .map(|l| ChannelSpec {
                    label: l.to_string(),
                    kind: "EEG".into(),
                    unit: "uV".into(),
                    resolution: 1e-3,
                })
                .collect(),
        };
        let (tx, feed) = Feed::channel("r".into(), layout);
        let session = Arc::new(Session::new(
            Spec::from_request(&request()).unwrap(),
            Parts {
                id: "session".into(),
                tenant: "t".into(),
                recording_id: "r".into(),
                rate: 250.0,
                evolution: None,
                records,
                authorization: "Bearer x".parse().unwrap(),
                metrics: crate::CoordinatorMetrics::register(&mut Default::default()),
            },
        ));
        let mut feedback = session.subscribe();
        // No inference node answers: every window gets its error, which is enough here.
        let pool = Arc::new(
            Pool::new(
                &["http://127.0.0.1:1".to_string()],
                gbrain_common::tls::ClientTls::default(),
            )
            .unwrap(),
        );
        let running = tokio::spawn(run(Arc::clone(&session), feed, pool, clock));
        tx.send(Ok(chunk(1, 0, 300))).await.unwrap();
        tx.send(Err(5)).await.unwrap();
        tx.send(Ok(chunk(7, 1000, 300))).await.unwrap();
        drop(tx);
        running.await.unwrap();
        let mut got = Vec::new();
        while let Ok(m) = feedback.try_recv() {
            got.push((m.window, m.first_sample, m.end_sample));
        }
        // Windows end every 25 samples once 250 are in: at 250, 275 and 300 of each run.
        assert_eq!(
            got,
            vec![
                (1, 0, 250),
                (2, 25, 275),
                (3, 50, 300),
                (0, 300, 1000),
                (4, 1000, 1250),
                (5, 1025, 1275),
                (6, 1050, 1300),
            ]
        );
    }
}
