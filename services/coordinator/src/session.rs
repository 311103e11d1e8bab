//! A loop session: a live stream's samples, cut into windows, preprocessed, decoded on the
//! inference nodes, adapted, and sent back as feedback.
//!
//! Samples arrive as the ingest node acknowledges them. Each is converted to physical units,
//! re-referenced and band-passed over the stream; the chosen channels go into a ring of one
//! window. Every hop a window's features go to the inference nodes; up to
//! [`MAX_IN_FLIGHT`] windows are decoded at once, and their results are taken in window order,
//! so the adaptation sees windows in the order they happened. A window with no answer by its
//! deadline gets feedback carrying the error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use gbrain_common::clock::Clock;
use gbrain_ingest::live::{LiveChunk, Subscription};
use gbrain_proto::coordinator::v1 as pb;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::decoder::{Adapter, score_of};
use crate::dsp::{BandPass, Features, Reference, ZScore};
use crate::kserve::{Inferred, Pool};
use crate::{Error, Result};

/// Windows a session decodes at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Windows whose scores a session keeps for outcomes reported late: an hour at a 100 ms hop.
pub const RECENT_WINDOWS: usize = 36_000;
/// Feedback messages a slow feedback reader may fall behind by.
pub const FEEDBACK_BUFFER: usize = 4096;

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

struct State {
    adapter: Adapter,
    stats: Stats,
    /// (window, raw score, decided class), oldest first.
    recent: VecDeque<(u64, f64, u8)>,
    running: bool,
}

/// One loop session.
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub recording_id: String,
    pub spec: Spec,
    /// The owner's credentials, for the inference nodes; never logged.
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    feedback: broadcast::Sender<pb::FeedbackMessage>,
    state: Mutex<State>,
    metrics: crate::CoordinatorMetrics,
    pub stop: CancellationToken,
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

impl Session {
    pub fn new(
        id: String,
        tenant: String,
        recording_id: String,
        spec: Spec,
        authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        metrics: crate::CoordinatorMetrics,
    ) -> Self {
        Self {
            metrics,
            id,
            tenant,
            recording_id,
            state: Mutex::new(State {
                adapter: Adapter::new(spec.rate, 0.0),
                stats: Stats::default(),
                recent: VecDeque::new(),
                running: true,
            }),
            spec,
            authorization,
            feedback: broadcast::channel(FEEDBACK_BUFFER).0,
            stop: CancellationToken::new(),
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
            windows: st.stats.windows,
            errors: st.stats.errors,
            outcomes: st.stats.outcomes,
            accuracy: if st.stats.outcomes == 0 {
                0.0
            } else {
                st.stats.correct as f64 / st.stats.outcomes as f64
            },
            bias: st.adapter.bias(),
        }
    }

    /// The true class of windows `[first, last]`: counts them against their predictions, and
    /// in supervised mode moves the class means.
    pub fn report(&self, first: u64, last: u64, label: u8) -> (u64, u64) {
        let mut st = self.state();
        let start = st.recent.partition_point(|(w, _, _)| *w < first);
        let mut hits = Vec::new();
        for &(w, score, class) in st.recent.iter().skip(start) {
            if w > last {
                break;
            }
            hits.push((score, class == label));
        }
        let (n, correct) = (
            hits.len() as u64,
            hits.iter().filter(|(_, c)| *c).count() as u64,
        );
        st.stats.outcomes += n;
        st.stats.correct += correct;
        self.metrics.outcomes.inc_by(n);
        if self.spec.mode == Mode::Supervised {
            for (score, _) in hits {
                st.adapter.learn(score, label);
            }
        }
        (n, correct)
    }

    /// Takes a decoded window: adapts, keeps its score, and sends its feedback.
    fn finish(&self, p: Pending, result: Result<Inferred>, inferred_ns: i64, clock: &dyn Clock) {
        let result = match result {
            Ok(inferred) if inferred.probabilities.len() == 2 => {
                let probs = [inferred.probabilities[0], inferred.probabilities[1]];
                let raw = score_of(probs);
                let mut st = self.state();
                let (class, adjusted) = st.adapter.decide(raw);
                if self.spec.mode != Mode::Off {
                    st.adapter.observe(raw);
                }
                st.stats.windows += 1;
                self.metrics.windows.inc();
                st.recent.push_back((p.window, raw, class));
                if st.recent.len() > RECENT_WINDOWS {
                    st.recent.pop_front();
                }
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
                pb::feedback_message::Result::Error(format!(
                    "the decoder gave {} probabilities; a two-class decoder gives 2",
                    inferred.probabilities.len()
                ))
            }
            Err(e) => {
                self.state().stats.errors += 1;
                self.metrics.window_errors.inc();
                pb::feedback_message::Result::Error(e.to_string())
            }
        };
        let sent_ns = clock.now_ns();
        self.metrics
            .window_seconds
            .observe((sent_ns - p.received_ns).max(0) as f64 / 1e9);
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
    fn new(spec: &Spec, feed: &Subscription) -> Result<Self> {
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
pub fn check(spec: &Spec, feed: &Subscription) -> Result<()> {
    Signal::new(spec, feed).map(|_| ())
}

/// Runs a session until it is stopped or its stream ends.
pub async fn run(
    session: Arc<Session>,
    mut feed: Subscription,
    pool: Arc<Pool>,
    clock: Arc<dyn Clock>,
) {
    let mut signal = match Signal::new(&session.spec, &feed) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "loop session cannot start");
            session.state().running = false;
            return;
        }
    };
    session.metrics.sessions_active.inc();
    let mut in_flight = FuturesOrdered::new();
    let mut window = 0u64;
    let mut ended = false;
    while !(ended && in_flight.is_empty()) {
        tokio::select! {
            () = session.stop.cancelled(), if !ended => ended = true,
            next = feed.chunks.recv(), if !ended && in_flight.len() < MAX_IN_FLIGHT => {
                match next {
                    Ok(chunk) => {
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
                            in_flight.push_back(async move {
                                let r = pool
                                    .infer(
                                        &session2.spec.model,
                                        &session2.spec.version,
                                        &x,
                                        &session2.authorization,
                                        deadline,
                                    )
                                    .await;
                                (pending, r, clock2.now_ns())
                            });
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            session = %session.id, missed,
                            "loop session fell behind its stream; windows restart after the gap"
                        );
                        signal.reset();
                    }
                    Err(broadcast::error::RecvError::Closed) => ended = true,
                }
            }
            Some((pending, result, inferred_ns)) = in_flight.next(), if !in_flight.is_empty() => {
                session.finish(pending, result, inferred_ns, clock.as_ref());
            }
        }
    }
    session.state().running = false;
    // Ended: the coordinator forgets it when the next session starts.
    session.stop.cancel();
    session.metrics.sessions_active.dec();
    tracing::info!(session = %session.id, "loop session ended");
}
