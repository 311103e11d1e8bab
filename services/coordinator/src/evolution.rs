//! Model evolution: refits of a decoder from the loop's labelled windows, pushed as new model
//! versions with their lineage, then shadow, canary and promotion or rollback on outcomes.
//!
//! An evolution belongs to one model of one tenant and to the sessions started on it after
//! `Evolve` with no pinned version. It holds the most recent labelled windows (features, the
//! true class, and each version's decision). Every [`Policy::refit_every`] labelled windows
//! with no candidate, it fits an LDA on the last [`Policy::fit_windows`] (the last fifth held
//! out, to report the fit's accuracy beside its parent's on windows neither was fitted on),
//! writes it as ONNX, pushes it as the next version, names a catalog snapshot of the data it
//! was fitted on, and records the `fit` decision with that lineage. The candidate then goes
//! through:
//! 1. **Shadow**: every session decodes each window with both versions and sends only the
//!    current version's prediction. After [`Policy::shadow_trials`] trials the candidate goes
//!    to canary if its accuracy on those windows beats the current version's by
//!    [`Policy::margin`], and is rejected otherwise.
//! 2. **Canary**: a share of sessions ([`Policy::canary_share`], assigned as they start)
//!    gets the candidate's predictions as feedback, and still decodes with the current
//!    version in shadow, so both are compared on the same windows. Over the last
//!    [`Policy::canary_trials`] canary trials the candidate is promoted if it beats the
//!    current version by the margin, and rolled back if it falls behind; after four times
//!    that many trials without either, it is rolled back as inconclusive.
//!
//! Each version keeps its own adaptive layer in each session, so a version is judged with
//! its adaptation, as its feedback would be. Every decision is stored with its evidence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use gbrain_catalog::ModelDecision;
use gbrain_proto::coordinator::v1 as pb;
use gbrain_proto::models::v1::model_repository_service_client::ModelRepositoryServiceClient;
use gbrain_proto::models::v1::push_model_request::Part;
use gbrain_proto::models::v1::{ListModelsRequest, PushModelHeader, PushModelRequest};
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};

use crate::decoder::Lda;
use crate::kserve::Pool;
use crate::records::Records;
use crate::{Error, Result};

/// LDA shrinkage of refits.
pub const SHRINKAGE: f64 = 0.1;

/// When and how a model evolves.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub refit_every: usize,
    pub fit_windows: usize,
    pub shadow_trials: usize,
    pub canary_share: f64,
    pub canary_trials: usize,
    pub margin: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            refit_every: 600,
            fit_windows: 1200,
            shadow_trials: 20,
            canary_share: 0.5,
            canary_trials: 20,
            margin: 0.02,
        }
    }
}

impl Policy {
    /// Zero fields take the defaults; the rest are checked.
    pub fn from_request(p: Option<&pb::EvolutionPolicy>) -> Result<Self> {
        let d = Self::default();
        let Some(p) = p else { return Ok(d) };
        let or = |v: u32, d: usize| if v == 0 { d } else { v as usize };
        let policy = Self {
            refit_every: or(p.refit_every, d.refit_every),
            fit_windows: or(p.fit_windows, d.fit_windows),
            shadow_trials: or(p.shadow_trials, d.shadow_trials),
            canary_share: if p.canary_share == 0.0 {
                d.canary_share
            } else {
                p.canary_share
            },
            canary_trials: or(p.canary_trials, d.canary_trials),
            margin: if p.margin == 0.0 { d.margin } else { p.margin },
        };
        if policy.fit_windows < 20 {
            return Err(Error::invalid(
                "policy.fit_windows",
                format!(
                    "{} windows are too few to fit and hold out",
                    policy.fit_windows
                ),
            ));
        }
        if !(policy.canary_share > 0.0 && policy.canary_share <= 1.0) {
            return Err(Error::invalid(
                "policy.canary_share",
                format!("{} is not within (0, 1]", policy.canary_share),
            ));
        }
        if !(policy.margin >= 0.0 && policy.margin < 1.0) {
            return Err(Error::invalid(
                "policy.margin",
                format!("{} is not within [0, 1)", policy.margin),
            ));
        }
        Ok(policy)
    }
}

/// A version's decision on a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decided {
    pub version: u64,
    /// `ln(p1 / p0)`.
    pub raw: f64,
    /// The class after the session's adaptive layer for that version.
    pub class: u8,
}

/// A window whose true class an outcome gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub session: Arc<str>,
    pub recording: Arc<str>,
    pub window: u64,
    pub features: Vec<f32>,
    pub label: u8,
    /// The decisions of the versions that decoded it (live first).
    pub decided: Vec<Decided>,
}

impl Labelled {
    fn by(&self, version: u64) -> Option<&Decided> {
        self.decided.iter().find(|d| d.version == version)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Shadow,
    Canary,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Canary => "canary",
        }
    }
}

/// Windows both versions decoded, and how many each got right.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    windows: u64,
    current: u64,
    candidate: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.windows += o.windows;
        self.current += o.current;
        self.candidate += o.candidate;
    }

    fn accuracy(&self) -> (f64, f64) {
        let n = self.windows.max(1) as f64;
        (self.current as f64 / n, self.candidate as f64 / n)
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    version: u64,
    stage: Stage,
    /// Shadow: everything so far.
    shadow: Tally,
    shadow_trials: usize,
    /// Canary: the last trials of canary sessions.
    canary: VecDeque<Tally>,
    canary_trials: usize,
}

/// The state of an evolution, without IO: what the tests drive.
#[derive(Clone, Debug)]
pub struct State {
    pub current: u64,
    candidate: Option<Candidate>,
    labelled: VecDeque<Labelled>,
    since_fit: usize,
    fitting: bool,
    sessions: usize,
}

impl State {
    pub fn new(current: u64) -> Self {
        Self {
            current,
            candidate: None,
            labelled: VecDeque::new(),
            since_fit: 0,
            fitting: false,
            sessions: 0,
        }
    }

    /// Assigns the next session to canary or not: `share` of them, spread evenly.
    pub fn join(&mut self, share: f64) -> bool {
        let k = self.sessions as f64;
        self.sessions += 1;
        ((k + 1.0) * share).floor() > (k * share).floor()
    }

    /// The version a session sends as feedback, and the one it decodes in shadow.
    pub fn versions(&self, canary: bool) -> (u64, Option<u64>) {
        match &self.candidate {
            None => (self.current, None),
            Some(c) if canary && c.stage == Stage::Canary => (c.version, Some(self.current)),
            Some(c) => (self.current, Some(c.version)),
        }
    }

    pub fn candidate(&self) -> Option<(u64, Stage)> {
        self.candidate.as_ref().map(|c| (c.version, c.stage))
    }

    pub fn labelled(&self) -> usize {
        self.labelled.len()
    }

    /// Takes a trial's labelled windows from one session; returns the decisions it led to, and
    /// whether a refit is due (the caller then runs one and calls [`State::fitted`]).
    pub fn trial(
        &mut self,
        policy: &Policy,
        canary: bool,
        windows: Vec<Labelled>,
        model: &str,
        now_ns: i64,
    ) -> (Vec<ModelDecision>, bool) {
        let mut decisions = Vec::new();
        let current = self.current;
        if let Some(c) = &mut self.candidate {
            let mut t = Tally::default();
            for w in &windows {
                if let (Some(a), Some(b)) = (w.by(current), w.by(c.version)) {
                    t.windows += 1;
                    t.current += u64::from(a.class == w.label);
                    t.candidate += u64::from(b.class == w.label);
                }
            }
            let decision =
                |action: &str, version: u64, evidence: serde_json::Value| ModelDecision {
                    model: model.to_string(),
                    version: version as i64,
                    parent_version: Some(current as i64),
                    action: action.to_string(),
                    evidence_json: evidence.to_string(),
                    decided_ns: now_ns,
                };
            let evidence = |stage: &str, trials: usize, t: &Tally| {
                let (cur, cand) = t.accuracy();
                json!({
                    "stage": stage,
                    "trials": trials,
                    "windows": t.windows,
                    "current_version": current,
                    "current_accuracy": cur,
                    "candidate_accuracy": cand,
                    "margin": policy.margin,
                })
            };
            match c.stage {
                Stage::Shadow if t.windows > 0 => {
                    c.shadow.add(t);
                    c.shadow_trials += 1;
                    if c.shadow_trials >= policy.shadow_trials {
                        let (cur, cand) = c.shadow.accuracy();
                        let e = evidence("shadow", c.shadow_trials, &c.shadow);
                        if cand >= cur + policy.margin {
                            c.stage = Stage::Canary;
                            decisions.push(decision("canary", c.version, e));
                        } else {
                            decisions.push(decision("reject", c.version, e));
                            self.candidate = None;
                        }
                    }
                }
                Stage::Canary if canary && t.windows > 0 => {
                    c.canary.push_back(t);
                    c.canary_trials += 1;
                    if c.canary.len() > policy.canary_trials {
                        c.canary.pop_front();
                    }
                    if c.canary.len() == policy.canary_trials {
                        let mut sum = Tally::default();
                        for x in &c.canary {
                            sum.add(*x);
                        }
                        let (cur, cand) = sum.accuracy();
                        let e = evidence("canary", c.canary.len(), &sum);
                        if cand >= cur + policy.margin {
                            let v = c.version;
                            decisions.push(decision("promote", v, e));
                            self.current = v;
                            self.candidate = None;
                        } else if cand < cur || c.canary_trials >= 4 * policy.canary_trials {
                            decisions.push(decision("rollback", c.version, e));
                            self.candidate = None;
                        }
                    }
                }
                _ => {}
            }
        }
        self.since_fit += windows.len();
        for w in windows {
            self.labelled.push_back(w);
        }
        while self.labelled.len() > policy.fit_windows {
            self.labelled.pop_front();
        }
        let due = self.candidate.is_none()
            && !self.fitting
            && self.since_fit >= policy.refit_every
            && self.labelled.len() >= policy.fit_windows.min(policy.refit_every);
        if due {
            self.fitting = true;
        }
        (decisions, due)
    }

    /// The windows a refit uses: the most recent `fit_windows`.
    pub fn fit_data(&self, policy: &Policy) -> Vec<Labelled> {
        let skip = self.labelled.len().saturating_sub(policy.fit_windows);
        self.labelled.iter().skip(skip).cloned().collect()
    }

    /// A refit ended: `version` is the new candidate, in shadow, or None when it failed.
    pub fn fitted(&mut self, version: Option<u64>) {
        self.fitting = false;
        self.since_fit = 0;
        if let Some(version) = version {
            self.candidate = Some(Candidate {
                version,
                stage: Stage::Shadow,
                shadow: Tally::default(),
                shadow_trials: 0,
                canary: VecDeque::new(),
                canary_trials: 0,
            });
        }
    }
}

/// The snapshot a refit's data is pinned under (queryable as schema `snapshot_<name>`):
/// `loop_<model>_v<version>`, the model's name folded to a-z, 0-9 and _.
pub fn snapshot_name(model: &str, version: u64) -> String {
    let folded: String = model
        .chars()
        .take(24)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("loop_{folded}_v{version}")
}

/// A refit and how it did on held-out windows.
#[derive(Clone, Debug)]
pub struct Refit {
    pub lda: Lda,
    pub evidence: serde_json::Value,
}

/// Fits on the first four fifths of `data` and reports accuracies on the last fifth, beside
/// the parent's (its raw decision, without adaptation, like the fit's).
pub fn refit(data: &[Labelled], parent: u64) -> Result<Refit> {
    let split = data.len() * 4 / 5;
    let (train, held) = data.split_at(split);
    let x: Vec<Vec<f64>> = train
        .iter()
        .map(|w| w.features.iter().map(|v| f64::from(*v)).collect())
        .collect();
    let y: Vec<u8> = train.iter().map(|w| w.label).collect();
    let lda = Lda::fit(&x, &y, SHRINKAGE)?;
    let hits = |ws: &[Labelled]| -> f64 {
        let n = ws.len().max(1) as f64;
        ws.iter()
            .filter(|w| {
                let x: Vec<f64> = w.features.iter().map(|v| f64::from(*v)).collect();
                u8::from(lda.score(&x) > 0.0) == w.label
            })
            .count() as f64
            / n
    };
    let parent_hits: Vec<bool> = held
        .iter()
        .filter_map(|w| w.by(parent).map(|d| u8::from(d.raw > 0.0) == w.label))
        .collect();
    // The data, as (session, recording) with their window ranges.
    let mut ranges: BTreeMap<(&str, &str), (u64, u64, u64)> = BTreeMap::new();
    for w in train {
        let e = ranges
            .entry((&w.session, &w.recording))
            .or_insert((w.window, w.window, 0));
        e.0 = e.0.min(w.window);
        e.1 = e.1.max(w.window);
        e.2 += 1;
    }
    let evidence = json!({
        "parent_version": parent,
        "train_windows": train.len(),
        "heldout_windows": held.len(),
        "train_accuracy": hits(train),
        "heldout_accuracy": hits(held),
        "parent_heldout_accuracy": parent_hits.iter().filter(|h| **h).count() as f64
            / parent_hits.len().max(1) as f64,
        "features": lda.w.len(),
        "shrinkage": SHRINKAGE,
        "data": ranges.iter().map(|((s, r), (a, b, n))| json!({
            "session_id": s, "recording_id": r, "first_window": a, "last_window": b, "windows": n,
        })).collect::<Vec<_>>(),
    });
    Ok(Refit { lda, evidence })
}

/// An evolving model of one tenant.
pub struct Evolution {
    pub tenant: String,
    pub model: String,
    pub policy: Policy,
    /// The operator's credentials that pushes use; never logged.
    authorization: MetadataValue<Ascii>,
    state: Mutex<State>,
    decisions: Mutex<Vec<ModelDecision>>,
    records: Records,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Evolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evolution")
            .field("tenant", &self.tenant)
            .field("model", &self.model)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Evolution {
    pub fn new(
        tenant: String,
        model: String,
        current: u64,
        policy: Policy,
        authorization: MetadataValue<Ascii>,
        records: Records,
        pool: Arc<Pool>,
    ) -> Self {
        Self {
            tenant,
            model,
            policy,
            authorization,
            state: Mutex::new(State::new(current)),
            decisions: Mutex::new(Vec::new()),
            records,
            pool,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session joins; true when it is a canary session.
    pub fn join(&self) -> bool {
        self.state().join(self.policy.canary_share)
    }

    pub fn versions(&self, canary: bool) -> (u64, Option<u64>) {
        self.state().versions(canary)
    }

    /// The current version, and the candidate with its stage.
    pub fn describe(&self) -> pb::Evolution {
        let st = self.state();
        let (candidate, stage) = st.candidate().map_or((0, ""), |(v, s)| (v, s.as_str()));
        pb::Evolution {
            model: self.model.clone(),
            current_version: st.current,
            candidate_version: candidate,
            stage: stage.to_string(),
            labelled_windows: st.labelled() as u64,
            decisions: self
                .decisions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|d| pb::Decision {
                    model: d.model.clone(),
                    version: d.version as u64,
                    parent_version: d.parent_version.unwrap_or(0) as u64,
                    action: d.action.clone(),
                    evidence_json: d.evidence_json.clone(),
                    decided_ns: d.decided_ns,
                })
                .collect(),
        }
    }

    async fn decide(&self, d: ModelDecision) {
        tracing::info!(
            tenant = %self.tenant, model = %d.model, version = d.version, action = %d.action,
            evidence = %d.evidence_json, "model decision"
        );
        // A few tries: the catalog may be briefly away.
        for attempt in 1..=3 {
            match self.records.decide(&self.tenant, &d).await {
                Ok(()) => break,
                Err(e) if attempt == 3 => {
                    tracing::error!(model = %d.model, error = %e, "model decision not stored");
                }
                Err(e) => {
                    tracing::warn!(model = %d.model, error = %e, "model decision not stored yet");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d);
    }

    /// A trial's labelled windows from a session: decides, and refits when one is due.
    pub async fn trial(self: &Arc<Self>, canary: bool, windows: Vec<Labelled>) {
        let now = self.records.now_ns();
        let (decisions, due) = self
            .state()
            .trial(&self.policy, canary, windows, &self.model, now);
        for d in decisions {
            self.decide(d).await;
        }
        if due {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                // Run apart, so that even a panic ends the refit and a later one can start.
                let fit = tokio::spawn({
                    let me = Arc::clone(&me);
                    async move { me.refit().await }
                });
                let version = match fit.await {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        tracing::warn!(model = %me.model, error = %e, "refit failed");
                        None
                    }
                    Err(e) => {
                        tracing::error!(model = %me.model, error = %e, "refit panicked");
                        None
                    }
                };
                me.state().fitted(version);
            });
        }
    }

    /// Fits, pushes and records a new version; returns it.
    async fn refit(&self) -> Result<u64> {
        let (data, parent) = {
            let st = self.state();
            (st.fit_data(&self.policy), st.current)
        };
        let fit = tokio::task::spawn_blocking(move || refit(&data, parent))
            .await
            .map_err(|e| Error::NotEnoughData(e.to_string()))??;
        let version = self.push(&fit.lda.to_onnx(), parent).await?;
        let mut name = snapshot_name(&self.model, version);
        let seq = match self.records.snapshot(&self.tenant, &name).await {
            Err(Error::Catalog(gbrain_catalog::Error::SnapshotExists(_))) => {
                name = format!("{name}_{}", self.records.now_ns() % 1_000_000_000);
                self.records.snapshot(&self.tenant, &name).await?
            }
            other => other?,
        };
        let mut evidence = fit.evidence;
        evidence["snapshot"] = json!(name);
        evidence["snapshot_seq"] = json!(seq);
        self.decide(ModelDecision {
            model: self.model.clone(),
            version: version as i64,
            parent_version: Some(parent as i64),
            action: "fit".into(),
            evidence_json: evidence.to_string(),
            decided_ns: self.records.now_ns(),
        })
        .await;
        Ok(version)
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert("authorization", self.authorization.clone());
        r
    }

    /// Pushes `onnx` as the model's next version, served beside `parent`.
    async fn push(&self, onnx: &[u8], parent: u64) -> Result<u64> {
        let mut last = Error::Models("no inference node to push to".into());
        for channel in self.pool.channels() {
            let mut client = ModelRepositoryServiceClient::new(channel);
            let listed = match client.list_models(self.authed(ListModelsRequest {})).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    last = Error::Models(format!("{}: {}", s.code(), s.message()));
                    continue;
                }
            };
            let version = listed
                .versions
                .iter()
                .filter(|v| v.name == self.model)
                .map(|v| v.version)
                .max()
                .unwrap_or(0)
                + 1;
            // The model's settings stay; it serves the parent and the candidate.
            let mut messages = vec![PushModelRequest {
                part: Some(Part::Header(PushModelHeader {
                    name: self.model.clone(),
                    version,
                    config_json: String::new(),
                    size_bytes: onnx.len() as u64,
                    serve_versions: vec![parent, version],
                })),
            }];
            messages.push(PushModelRequest {
                part: Some(Part::Chunk(bytes::Bytes::copy_from_slice(onnx))),
            });
            match client
                .push_model(self.authed(futures::stream::iter(messages)))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.state == "READY" {
                        return Ok(version);
                    }
                    return Err(Error::Models(format!(
                        "version {version} is {}: {}",
                        r.state, r.reason
                    )));
                }
                Err(s) => last = Error::Models(format!("{}: {}", s.code(), s.message())),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(label: u8, current: (u64, u8), candidate: Option<(u64, u8)>) -> Labelled {
        let mut decided = vec![Decided {
            version: current.0,
            raw: 0.0,
            class: current.1,
        }];
        if let Some((v, c)) = candidate {
            decided.push(Decided {
                version: v,
                raw: 0.0,
                class: c,
            });
        }
        Labelled {
            session: "s".into(),
            recording: "r".into(),
            window: 1,
            features: vec![0.0],
            label,
            decided,
        }
    }

    /// A trial of `n` windows where the live version (`versions.0`) is right `live` times and
    /// the shadow version `shadow` times.
    fn trial(n: usize, live: usize, shadow: usize, versions: (u64, Option<u64>)) -> Vec<Labelled> {
        (0..n)
            .map(|i| {
                window(
                    1,
                    (versions.0, u8::from(i < live)),
                    versions.1.map(|v| (v, u8::from(i < shadow))),
                )
            })
            .collect()
    }

    fn policy() -> Policy {
        Policy {
            refit_every: 40,
            fit_windows: 40,
            shadow_trials: 3,
            canary_share: 0.5,
            canary_trials: 2,
            margin: 0.05,
        }
    }

    #[test]
    fn a_better_candidate_goes_through_shadow_and_canary_to_promotion() {
        let p = policy();
        let mut st = State::new(1);
        assert!(!st.join(p.canary_share));
        assert!(st.join(p.canary_share));
        // Labels accumulate until a refit is due.
        let (d, due) = st.trial(&p, false, trial(20, 15, 0, (1, None)), "m", 1);
        assert!(d.is_empty() && !due);
        let (_, due) = st.trial(&p, false, trial(20, 15, 0, (1, None)), "m", 2);
        assert!(due);
        // No second refit while one runs.
        assert!(!st.trial(&p, false, trial(20, 15, 0, (1, None)), "m", 3).1);
        st.fitted(Some(2));
        assert_eq!(st.versions(false), (1, Some(2)));
        assert_eq!(st.versions(true), (1, Some(2)), "canary only in canary");
        for k in 0..3 {
            let (d, _) = st.trial(&p, false, trial(10, 6, 9, st.versions(false)), "m", 10 + k);
            if k < 2 {
                assert!(d.is_empty());
            } else {
                assert_eq!(d.len(), 1);
                assert_eq!(d[0].action, "canary");
                let e: serde_json::Value = serde_json::from_str(&d[0].evidence_json).unwrap();
                assert_eq!(e["windows"], 30);
                assert!((e["candidate_accuracy"].as_f64().unwrap() - 0.9).abs() < 1e-9);
            }
        }
        assert_eq!(st.candidate(), Some((2, Stage::Canary)));
        assert_eq!(st.versions(true), (2, Some(1)));
        assert_eq!(st.versions(false), (1, Some(2)));
        // Non-canary trials do not decide the canary.
        assert!(
            st.trial(&p, false, trial(10, 6, 9, (1, Some(2))), "m", 20)
                .0
                .is_empty()
        );
        assert!(
            st.trial(&p, true, trial(10, 9, 6, (2, Some(1))), "m", 21)
                .0
                .is_empty()
        );
        let (d, _) = st.trial(&p, true, trial(10, 9, 6, (2, Some(1))), "m", 22);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].action.as_str(), d[0].version), ("promote", 2));
        assert_eq!(d[0].parent_version, Some(1));
        assert_eq!(st.current, 2);
        assert_eq!(st.versions(true), (2, None));
    }

    #[test]
    fn a_worse_candidate_is_rejected_in_shadow_or_rolled_back_in_canary() {
        let p = policy();
        let mut st = State::new(1);
        st.fitted(Some(2));
        for k in 0..3 {
            let (d, _) = st.trial(&p, false, trial(10, 8, 8, (1, Some(2))), "m", k);
            if k == 2 {
                assert_eq!(d[0].action, "reject", "equal is not better by the margin");
            }
        }
        assert_eq!(st.candidate(), None);
        assert_eq!(st.current, 1);

        st.fitted(Some(3));
        for k in 0..3 {
            st.trial(&p, false, trial(10, 5, 9, (1, Some(3))), "m", k);
        }
        assert_eq!(st.candidate(), Some((3, Stage::Canary)));
        st.trial(&p, true, trial(10, 6, 8, (3, Some(1))), "m", 5);
        let (d, _) = st.trial(&p, true, trial(10, 6, 8, (3, Some(1))), "m", 6);
        assert_eq!((d[0].action.as_str(), d[0].version), ("rollback", 3));
        assert_eq!(st.current, 1);
        assert_eq!(st.versions(true), (1, None));
    }

    #[test]
    fn snapshot_names_are_valid_snapshot_names() {
        assert_eq!(snapshot_name("MI-lda.2", 3), "loop_mi_lda_2_v3");
        // With the suffix a name taken already gets, it still fits the 64 characters.
        assert!(snapshot_name(&"x".repeat(128), u64::MAX).len() + 10 <= 64);
    }

    #[test]
    fn a_refit_reports_its_lineage_and_held_out_accuracy() {
        let mut rng = crate::rng::Rng::new(7);
        let data: Vec<Labelled> = (0..200)
            .map(|i| {
                let label = (i % 2) as u8;
                let x = f64::from(label) * 2.0 - 1.0 + rng.normal() * 0.7;
                Labelled {
                    session: if i < 100 { "a" } else { "b" }.into(),
                    recording: "r".into(),
                    window: i as u64 + 1,
                    features: vec![x as f32, rng.normal() as f32],
                    label,
                    // A parent that always says 1.
                    decided: vec![Decided {
                        version: 1,
                        raw: 1.0,
                        class: 1,
                    }],
                }
            })
            .collect();
        let fit = refit(&data, 1).unwrap();
        let e = &fit.evidence;
        assert_eq!(e["train_windows"], 160);
        assert_eq!(e["heldout_windows"], 40);
        assert!(e["heldout_accuracy"].as_f64().unwrap() > 0.8, "{e}");
        assert!((e["parent_heldout_accuracy"].as_f64().unwrap() - 0.5).abs() < 1e-9);
        let ranges = e["data"].as_array().unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0]["first_window"], 1);
        assert_eq!(ranges[1]["last_window"], 160);
        assert_eq!(ranges[1]["windows"], 60);
    }
}
