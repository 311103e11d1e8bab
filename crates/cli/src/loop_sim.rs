//! `gbrain loop simulate`: synthetic subjects through the closed loop of a running cluster.
//!
//! Each simulated session streams a synthetic motor-imagery subject (`gbrain_coordinator::
//! synthetic`, seeded, documented as synthetic) live to the ingest service, starts a loop
//! session on it, reads the feedback, and reports each trial's true class as its outcome once
//! the trial's windows are decoded. It measures accuracy over time and latency: end to end (a
//! window's last sample sent to its feedback received, on this client) and in the
//! coordinator (acknowledged to sent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gbrain_common::clap_blocks::ClientArgs;
use gbrain_coordinator::offline::{Windowing, fit, windows};
use gbrain_coordinator::synthetic::{Subject, SubjectConfig, Trial};
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::coordinator::v1::loop_service_client::LoopServiceClient;
use gbrain_proto::ingest::v1::{
    PackedSamples, StreamChannel, StreamChunk, StreamClose, StreamLayout, StreamOpen,
    StreamRequest, StreamResponse, stream_chunk, stream_request, stream_response,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Bearer, connect_channel};

/// The model `simulate` fits and pushes when none is named.
pub const DEFAULT_MODEL: &str = "synthetic-mi-lda";
/// Samples per chunk: one hop (100 ms at 250 Hz).
const HOP: usize = 25;
const WINDOW: usize = 250;

/// A stream layout for a subject: every channel EEG in µV at the default resolution.
pub fn stream_layout(subject: &Subject) -> StreamLayout {
    StreamLayout {
        sample_rate: subject.sample_rate(),
        channels: subject
            .channels()
            .iter()
            .map(|l| StreamChannel {
                label: l.clone(),
                r#type: "EEG".into(),
                unit: "uV".into(),
                resolution: 0.0,
            })
            .collect(),
    }
}

/// Opens (or resumes) a live stream on `client`: the sender for its chunks, the responses
/// after `Opened`, and `Opened` itself.
pub async fn open_stream(
    client: &mut crate::client::Ingest,
    stream_id: &str,
    layout: Option<StreamLayout>,
    metadata: Option<gbrain_proto::ingest::v1::RecordingMetadata>,
) -> anyhow::Result<(
    mpsc::Sender<StreamRequest>,
    tonic::Streaming<StreamResponse>,
    gbrain_proto::ingest::v1::StreamOpened,
)> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(StreamRequest {
        kind: Some(stream_request::Kind::Open(StreamOpen {
            stream_id: stream_id.to_string(),
            layout,
            metadata,
        })),
    })
    .await?;
    let mut responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    match responses.message().await? {
        Some(StreamResponse {
            kind: Some(stream_response::Kind::Opened(opened)),
        }) => Ok((tx, responses, opened)),
        other => bail!("the stream did not open: {other:?}"),
    }
}

/// The motor-imagery loop session: 1 s windows every 100 ms, common average reference, log
/// mu (8-13 Hz) and beta (18-25 Hz) power of C3 and C4, decoded by `model`'s newest version.
pub fn motor_imagery_session(
    stream_id: &str,
    model: &str,
    mode: pb::adaptation::Mode,
    rate: f64,
    deadline_ms: f64,
) -> pb::StartSessionRequest {
    let band = |lo_hz, hi_hz| pb::Band { lo_hz, hi_hz };
    pb::StartSessionRequest {
        stream_id: stream_id.to_string(),
        decoder: Some(pb::Decoder {
            model: model.to_string(),
            version: 0,
        }),
        windowing: Some(pb::Windowing {
            window_s: 1.0,
            hop_s: 0.1,
            channels: vec!["C3".into(), "C4".into()],
            preprocessing: Some(pb::Preprocessing {
                reference: pb::preprocessing::Reference::CommonAverage as i32,
                bandpass: None,
                bands: vec![band(8.0, 13.0), band(18.0, 25.0)],
                log: true,
                zscore: false,
            }),
        }),
        adaptation: Some(pb::Adaptation {
            mode: mode as i32,
            rate,
        }),
        deadline_ms,
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub sessions: usize,
    pub seconds: f64,
    /// The left hemisphere's gain change per minute.
    pub drift: f64,
    pub seed: u64,
    /// A model the tenant has; None: fit one on a synthetic calibration and push it.
    pub model: Option<String>,
    pub adaptation: pb::adaptation::Mode,
    pub rate: f64,
    /// Send at the subject's pace (a chunk every 100 ms); otherwise as fast as acks come.
    pub realtime: bool,
    pub deadline_ms: f64,
    /// Let the model evolve (refits, shadow, canary, promotion) under this policy; needs the
    /// operator role. Sessions then follow the model's current version.
    pub evolve: Option<pb::EvolutionPolicy>,
    /// The coordinator, when it is not at the server (`gbrain serve coordinator`).
    pub coordinator: Option<String>,
}

/// The policy `--evolve` uses: refits every 400 labelled windows (about a minute of two
/// subjects), ten trials in shadow and ten canary trials.
pub fn simulation_policy() -> pb::EvolutionPolicy {
    pb::EvolutionPolicy {
        refit_every: 400,
        fit_windows: 800,
        shadow_trials: 10,
        canary_share: 0.5,
        canary_trials: 10,
        margin: 0.02,
    }
}

/// One session's results.
#[derive(Clone, Debug, Default)]
pub struct SessionResult {
    pub session_id: String,
    pub windows: u64,
    pub errors: u64,
    /// (labelled windows, right) per minute of the session.
    pub by_minute: Vec<(u64, u64)>,
    /// The model version whose feedback was sent last in each minute.
    pub version_by_minute: Vec<String>,
    /// Window's last sample sent to its feedback received, ns.
    pub end_to_end_ns: Vec<i64>,
    /// Acknowledged by ingest to feedback sent, ns.
    pub coordinator_ns: Vec<i64>,
    /// Chunk sent to its ack received, ns.
    pub ack_ns: Vec<i64>,
    pub samples: u64,
}

/// Every session's results.
#[derive(Clone, Debug)]
pub struct Report {
    pub sessions: Vec<SessionResult>,
    pub wall: Duration,
    pub model: String,
    /// Whether the subjects were sent at their own pace.
    pub realtime: bool,
    /// The model's evolution at the end, when it evolved.
    pub evolution: Option<pb::Evolution>,
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1e6
}

impl Report {
    fn all(&self, f: impl Fn(&SessionResult) -> &Vec<i64>) -> Vec<i64> {
        let mut v: Vec<i64> = self.sessions.iter().flat_map(|s| f(s).clone()).collect();
        v.sort_unstable();
        v
    }

    /// (labelled, right) per minute over every session.
    pub fn by_minute(&self) -> Vec<(u64, u64)> {
        let minutes = self
            .sessions
            .iter()
            .map(|s| s.by_minute.len())
            .max()
            .unwrap_or(0);
        (0..minutes)
            .map(|m| {
                self.sessions
                    .iter()
                    .filter_map(|s| s.by_minute.get(m))
                    .fold((0, 0), |(a, b), (n, r)| (a + n, b + r))
            })
            .collect()
    }

    /// The live versions seen in each minute over every session (`1`, `1+2`).
    pub fn versions_by_minute(&self) -> Vec<String> {
        let minutes = self
            .sessions
            .iter()
            .map(|s| s.version_by_minute.len())
            .max()
            .unwrap_or(0);
        (0..minutes)
            .map(|m| {
                let mut v: Vec<&str> = self
                    .sessions
                    .iter()
                    .filter_map(|s| s.version_by_minute.get(m).map(String::as_str))
                    .filter(|v| !v.is_empty())
                    .collect();
                v.sort_unstable_by_key(|x| (x.len(), x.to_string()));
                v.dedup();
                v.join("+")
            })
            .collect()
    }

    pub fn accuracy(&self) -> f64 {
        let (n, r) = self
            .by_minute()
            .iter()
            .fold((0, 0), |(a, b), (n, r)| (a + n, b + r));
        r as f64 / n.max(1) as f64
    }

    pub fn json(&self) -> serde_json::Value {
        let e2e = self.all(|s| &s.end_to_end_ns);
        let coord = self.all(|s| &s.coordinator_ns);
        let ack = self.all(|s| &s.ack_ns);
        let samples: u64 = self.sessions.iter().map(|s| s.samples).sum();
        json!({
            "model": self.model,
            "sessions": self.sessions.len(),
            "windows": self.sessions.iter().map(|s| s.windows).sum::<u64>(),
            "errors": self.sessions.iter().map(|s| s.errors).sum::<u64>(),
            "accuracy": self.accuracy(),
            "accuracy_by_minute": self.by_minute().iter()
                .map(|(n, r)| *r as f64 / (*n).max(1) as f64).collect::<Vec<_>>(),
            "end_to_end_ms": {"p50": percentile(&e2e, 0.5), "p99": percentile(&e2e, 0.99),
                "max": percentile(&e2e, 1.0)},
            "coordinator_ms": {"p50": percentile(&coord, 0.5), "p99": percentile(&coord, 0.99),
                "max": percentile(&coord, 1.0)},
            "ack_ms": {"p50": percentile(&ack, 0.5), "p99": percentile(&ack, 0.99),
                "max": percentile(&ack, 1.0)},
            "ingest_samples_per_s": samples as f64 / self.wall.as_secs_f64(),
            "session_ids": self.sessions.iter().map(|s| s.session_id.clone()).collect::<Vec<_>>(),
            "versions_by_minute": self.versions_by_minute(),
            "decisions": self.evolution.iter().flat_map(|e| &e.decisions).map(|d| json!({
                "version": d.version, "parent_version": d.parent_version, "action": d.action,
                "evidence": serde_json::from_str::<serde_json::Value>(&d.evidence_json)
                    .unwrap_or_default(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self) -> String {
        let e2e = self.all(|s| &s.end_to_end_ns);
        let coord = self.all(|s| &s.coordinator_ns);
        let ack = self.all(|s| &s.ack_ns);
        let samples: u64 = self.sessions.iter().map(|s| s.samples).sum();
        let mut out = format!(
            "{} session(s) of synthetic motor imagery, decoder {}: {} windows, {} errors\n",
            self.sessions.len(),
            self.model,
            self.sessions.iter().map(|s| s.windows).sum::<u64>(),
            self.sessions.iter().map(|s| s.errors).sum::<u64>(),
        );
        out.push_str("accuracy by minute (windows within imagery), and the live version:\n");
        let versions = self.versions_by_minute();
        for (m, (n, r)) in self.by_minute().iter().enumerate() {
            out.push_str(&format!(
                "  minute {:>2}: {:>5.1}% of {n:<5} v{}\n",
                m + 1,
                100.0 * *r as f64 / (*n).max(1) as f64,
                versions.get(m).map_or("?", String::as_str)
            ));
        }
        out.push_str(&format!("  overall:   {:>5.1}%\n", 100.0 * self.accuracy()));
        if let Some(e) = &self.evolution {
            out.push_str(&format!(
                "model {}: current version {}{}\n",
                e.model,
                e.current_version,
                if e.candidate_version == 0 {
                    String::new()
                } else {
                    format!(", candidate {} in {}", e.candidate_version, e.stage)
                }
            ));
            for d in &e.decisions {
                out.push_str(&format!("  {}\n", describe_decision(d)));
            }
        }
        if !self.realtime {
            out.push_str(
                "(sent as fast as acknowledged, not at the subjects' pace: latencies include \
                 queueing)\n",
            );
        }
        for (name, v) in [
            ("window to feedback, end to end", &e2e),
            ("in the coordinator (received to sent)", &coord),
            ("ingest ack", &ack),
        ] {
            out.push_str(&format!(
                "{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
                percentile(v, 0.5),
                percentile(v, 0.99),
                percentile(v, 1.0)
            ));
        }
        out.push_str(&format!(
            "live ingest: {:.0} samples/s over {:.1} s\n",
            samples as f64 / self.wall.as_secs_f64(),
            self.wall.as_secs_f64()
        ));
        out
    }
}

/// One line for a model decision, with the numbers it was made on.
pub fn describe_decision(d: &pb::Decision) -> String {
    let e: serde_json::Value = serde_json::from_str(&d.evidence_json).unwrap_or_default();
    let pct = |k: &str| {
        e[k].as_f64()
            .map_or_else(|| "?".to_string(), |v| format!("{:.1}%", 100.0 * v))
    };
    match d.action.as_str() {
        "fit" => format!(
            "v{} fitted from v{} on {} labelled windows (snapshot {}): held-out {} vs parent {}",
            d.version,
            d.parent_version,
            e["train_windows"],
            e["snapshot"].as_str().unwrap_or("?"),
            pct("heldout_accuracy"),
            pct("parent_heldout_accuracy")
        ),
        action => format!(
            "v{} {action} after {} {} trials ({} windows): v{} {} vs v{} {}",
            d.version,
            e["trials"],
            e["stage"].as_str().unwrap_or("?"),
            e["windows"],
            d.version,
            pct("candidate_accuracy"),
            d.parent_version,
            pct("current_accuracy")
        ),
    }
}

/// The newest version of `model` the tenant has.
async fn newest_version(args: &ClientArgs, model: &str) -> anyhow::Result<u64> {
    let mut models = crate::models::connect(args).await?;
    let listed = models
        .list_models(gbrain_proto::models::v1::ListModelsRequest {})
        .await?
        .into_inner();
    listed
        .versions
        .iter()
        .filter(|v| v.name == model)
        .map(|v| v.version)
        .max()
        .with_context(|| format!("the tenant has no model {model}"))
}

/// Fits a decoder on a synthetic calibration session (seed `seed`) and pushes it; returns
/// its name and version.
pub async fn push_calibrated(args: &ClientArgs, seed: u64) -> anyhow::Result<(String, u64)> {
    let mut calibration = Subject::new(SubjectConfig {
        seed,
        ..SubjectConfig::default()
    })?;
    let w = Windowing::motor_imagery(calibration.channels())?;
    let lda = fit(&windows(&mut calibration, &w, 240.0), 0.1)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, lda.to_onnx())?;
    let mut models = crate::models::connect(args).await?;
    let pushed = crate::models::push_file(&mut models, &path, DEFAULT_MODEL, 0, None)
        .await
        .context("pushing the calibrated decoder (needs the operator role)")?;
    Ok((DEFAULT_MODEL.to_string(), pushed.version))
}

/// Runs the simulation.
pub async fn simulate(args: &ClientArgs, opts: &Options) -> anyhow::Result<Report> {
    if opts.sessions == 0 || opts.seconds < 2.0 {
        bail!("simulate at least one session of at least 2 s");
    }
    let (model, version) = match &opts.model {
        Some(m) => (m.clone(), None),
        None => {
            let (m, v) = push_calibrated(args, opts.seed.wrapping_add(1_000_000)).await?;
            (m, Some(v))
        }
    };
    let mut looping = LoopServiceClient::with_interceptor(
        connect_channel(opts.coordinator.as_ref().unwrap_or(&args.server), &args.tls).await?,
        Bearer::new(args.token.as_deref())?,
    );
    if let Some(policy) = &opts.evolve {
        let current = match version {
            Some(v) => v,
            None => newest_version(args, &model).await?,
        };
        looping
            .evolve(pb::EvolveRequest {
                model: model.clone(),
                current_version: current,
                policy: Some(*policy),
            })
            .await
            .context("letting the model evolve (needs the operator role)")?;
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..opts.sessions {
        let (args, opts, model) = (args.clone(), opts.clone(), model.clone());
        let stream_id = format!("sim-{}-{i}", &run[..12]);
        tasks.push(tokio::spawn(async move {
            one_session(&args, &opts, &model, &stream_id, opts.seed + i as u64).await
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await??);
    }
    let evolution = match &opts.evolve {
        Some(_) => Some(
            looping
                .get_evolution(pb::GetEvolutionRequest {
                    model: model.clone(),
                })
                .await?
                .into_inner(),
        ),
        None => None,
    };
    Ok(Report {
        sessions,
        wall: started.elapsed(),
        model,
        realtime: opts.realtime,
        evolution,
    })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Windows `[first, last]` lying wholly within a trial (window k ends at sample
/// WINDOW + (k - 1) * HOP).
fn trial_windows(t: &Trial) -> Option<(u64, u64)> {
    let (hop, len) = (HOP as u64, WINDOW as u64);
    let first = t.start.div_ceil(hop) + 1;
    if t.end < len {
        return None;
    }
    let last = (t.end - len) / hop + 1;
    (first <= last).then_some((first, last))
}

async fn one_session(
    args: &ClientArgs,
    opts: &Options,
    model: &str,
    stream_id: &str,
    seed: u64,
) -> anyhow::Result<SessionResult> {
    let mut subject = Subject::new(SubjectConfig {
        seed,
        drift: opts.drift,
        ..SubjectConfig::default()
    })?;
    let rate = subject.sample_rate();
    let channel = connect_channel(&args.server, &args.tls).await?;
    let bearer = Bearer::new(args.token.as_deref())?;
    let mut ingest =
        gbrain_proto::ingest::v1::ingest_service_client::IngestServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        );
    let looping_channel = match &opts.coordinator {
        Some(c) => connect_channel(c, &args.tls).await?,
        None => channel,
    };
    let mut looping = LoopServiceClient::with_interceptor(looping_channel, bearer);

    let layout = stream_layout(&subject);
    let (tx, mut acks, _) = open_stream(
        &mut ingest,
        stream_id,
        Some(layout),
        Some(gbrain_proto::ingest::v1::RecordingMetadata {
            subject: format!("synthetic-{seed}"),
            task: "motor-imagery".into(),
            ..Default::default()
        }),
    )
    .await?;
    let session = looping
        .start_session(motor_imagery_session(
            stream_id,
            model,
            opts.adaptation,
            opts.rate,
            opts.deadline_ms,
        ))
        .await
        .context("starting the loop session")?
        .into_inner();
    let mut feedback = looping
        .feedback(pb::FeedbackRequest {
            session_id: session.session_id.clone(),
        })
        .await?
        .into_inner();

    let hops = (opts.seconds * rate) as usize / HOP;
    let expected = ((hops * HOP).saturating_sub(WINDOW)) / HOP + 1;
    // When each chunk's last sample was sent, by chunk number.
    let sent_at: Arc<Mutex<HashMap<u64, i64>>> = Arc::default();
    // Feedback messages read: a fast sender stays within a bound of them, so that the session
    // never falls more than its buffer behind the stream.
    let progress: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let trials: Arc<Mutex<Vec<Trial>>> = Arc::default();

    // Acks.
    let ack_times = Arc::clone(&sent_at);
    let ack_reader = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Ok(Some(r)) = acks.message().await {
            if let Some(stream_response::Kind::Ack(a)) = r.kind {
                let t = ack_times
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&a.seq)
                    .copied();
                if let Some(t) = t {
                    lat.push(now_ns() - t);
                }
            }
        }
        lat
    });

    // Feedback, and outcomes once a trial's windows are all decoded.
    let (feedback_sent, feedback_trials) = (Arc::clone(&sent_at), Arc::clone(&trials));
    let read = Arc::clone(&progress);
    let mut outcome_client = looping.clone();
    let session_id = session.session_id.clone();
    let reader = tokio::spawn(async move {
        let mut r = SessionResult {
            session_id: session_id.clone(),
            ..SessionResult::default()
        };
        // Predicted windows, (class, end sample), for trials that end later.
        let mut predicted: HashMap<u64, (u32, u64)> = HashMap::new();
        // Finished trials whose windows are not all decoded yet: (first, last, class).
        let mut pending: Vec<(u64, u64, u8)> = Vec::new();
        let mut taken = 0usize;
        let mut last_window = 0u64;
        while (r.windows + r.errors) < expected as u64 {
            let m = match tokio::time::timeout(Duration::from_secs(30), feedback.message()).await {
                Ok(Ok(Some(m))) => m,
                _ => break,
            };
            let received = now_ns();
            read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stamps = m.stamps.unwrap_or_default();
            r.coordinator_ns.push(stamps.sent_ns - stamps.received_ns);
            // The window's last sample is the chunk's last when windows end on hops.
            let chunk = m.end_sample / HOP as u64;
            if let Some(t) = feedback_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&chunk)
            {
                r.end_to_end_ns.push(received - t);
            }
            match m.result {
                Some(pb::feedback_message::Result::Prediction(p)) => {
                    r.windows += 1;
                    predicted.insert(m.window, (p.class, m.end_sample));
                    let minute = (m.end_sample as f64 / (rate * 60.0)) as usize;
                    if r.version_by_minute.len() <= minute {
                        r.version_by_minute.resize(minute + 1, String::new());
                    }
                    r.version_by_minute[minute] = p.model_version;
                }
                _ => r.errors += 1,
            }
            last_window = last_window.max(m.window);
            {
                let trials = feedback_trials.lock().unwrap_or_else(|p| p.into_inner());
                pending.extend(
                    trials
                        .iter()
                        .skip(taken)
                        .filter_map(|t| trial_windows(t).map(|(a, b)| (a, b, t.class))),
                );
                taken = trials.len();
            }
            // Trials whose windows are all decoded: score them and report their outcome.
            let ready: Vec<(u64, u64, u8)> = pending
                .iter()
                .filter(|(_, b, _)| *b <= last_window)
                .copied()
                .collect();
            pending.retain(|(_, b, _)| *b > last_window);
            for (a, b, label) in ready {
                for k in a..=b {
                    if let Some(&(class, end)) = predicted.get(&k) {
                        let minute = (end as f64 / (rate * 60.0)) as usize;
                        if r.by_minute.len() <= minute {
                            r.by_minute.resize(minute + 1, (0, 0));
                        }
                        r.by_minute[minute].0 += 1;
                        r.by_minute[minute].1 += u64::from(class == u32::from(label));
                    }
                }
                let _ = outcome_client
                    .report_outcome(pb::ReportOutcomeRequest {
                        session_id: session_id.clone(),
                        first_window: a,
                        last_window: b,
                        label: u32::from(label),
                    })
                    .await;
            }
            // A trial is known once it ends, at most its imagery after its windows: keep
            // a margin of windows, not the whole session.
            if m.window.is_multiple_of(100) {
                predicted.retain(|k, _| k + 400 > last_window);
            }
        }
        r
    });

    // The subject, a hop at a time.
    let period = Duration::from_secs_f64(HOP as f64 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1..=hops as u64 {
        if opts.realtime {
            tick.tick().await;
        } else {
            while seq > progress.load(std::sync::atomic::Ordering::Relaxed) + 256 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let values = subject.generate(HOP);
        {
            let mut t = trials.lock().unwrap_or_else(|p| p.into_inner());
            let done: Vec<Trial> = subject
                .trials()
                .iter()
                .filter(|tr| tr.end <= subject.position())
                .copied()
                .collect();
            *t = done;
        }
        let now = now_ns();
        sent_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, now);
        tx.send(StreamRequest {
            kind: Some(stream_request::Kind::Chunk(StreamChunk {
                seq,
                data: Some(stream_chunk::Data::Packed(PackedSamples { values })),
                // The chunk's first sample was taken a hop ago.
                source_time_ns: Some(now - period.as_nanos() as i64),
            })),
        })
        .await
        .context("the stream ended")?;
    }
    let mut result = reader.await?;
    tx.send(StreamRequest {
        kind: Some(stream_request::Kind::Close(StreamClose {})),
    })
    .await
    .ok();
    drop(tx);
    result.ack_ns = ack_reader.await?;
    result.samples = (hops * HOP * subject.channels().len()) as u64;
    looping
        .stop_session(pb::StopSessionRequest {
            session_id: session.session_id.clone(),
        })
        .await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_windows_lie_within_the_trial() {
        let t = Trial {
            index: 0,
            start: 600,
            end: 1600,
            class: 1,
        };
        let (a, b) = trial_windows(&t).unwrap();
        let end = |k: u64| WINDOW as u64 + (k - 1) * HOP as u64;
        assert!(end(a) - WINDOW as u64 >= t.start && end(a - 1) - (WINDOW as u64) < t.start);
        assert!(end(b) <= t.end && end(b + 1) > t.end);
    }
}
