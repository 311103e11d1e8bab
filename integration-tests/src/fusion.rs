//! A small fused dataset for query tests: two recordings of tenant `demo` (one with channels at
//! two rates) and one of tenant `other`, each with task events and responses.

use std::path::Path;

use gbrain_proto::ingest::v1::{AppendEventsRequest, Event};

use crate::files::Spec;
use crate::{ADMIN_TOKEN, OTHER_TENANT_TOKEN, Sandbox};

/// An uploaded recording and what it holds.
#[derive(Clone, Debug)]
pub struct Recording {
    pub id: String,
    pub spec: Spec,
    /// (onset, type, response_time).
    pub events: Vec<(f64, String, Option<f64>)>,
}

impl Recording {
    /// The rate of signal `s`.
    pub fn rate(&self, s: usize) -> f64 {
        self.spec.signals[s].samples_per_record as f64
    }

    /// Physical values of signal `s`, as the file's header scales them.
    pub fn physical(&self, s: usize) -> Vec<f64> {
        let sig = &self.spec.signals[s];
        let (pmin, pmax): (f64, f64) = (
            sig.physical_min.parse().unwrap(),
            sig.physical_max.parse().unwrap(),
        );
        let (dmin, dmax) = (f64::from(sig.digital_min), f64::from(sig.digital_max));
        let gain = (pmax - pmin) / (dmax - dmin);
        let offset = pmax - gain * dmax;
        self.spec
            .samples(s)
            .into_iter()
            .map(|d| f64::from(d) * gain + offset)
            .collect()
    }

    pub fn onsets(&self, ty: &str) -> Vec<f64> {
        self.events
            .iter()
            .filter(|e| e.1 == ty)
            .map(|e| e.0)
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Fixture {
    /// demo: C0 and C1 at 128 Hz, C2 at 64 Hz, 20 s; left and right trials with responses.
    pub a: Recording,
    /// demo: C0 and C1 at 256 Hz, 10 s.
    pub b: Recording,
    /// other: C0 and C1 at 128 Hz, 10 s.
    pub other: Recording,
}

async fn put(
    sb: &Sandbox,
    dir: &Path,
    token: &str,
    name: &str,
    spec: Spec,
    events: Vec<(f64, String, Option<f64>)>,
) -> Recording {
    let path = dir.join(name);
    std::fs::write(&path, spec.bytes()).expect("write file");
    let mut client = sb.client_with(Some(token)).await;
    let id = crate::upload(&mut client, &path)
        .await
        .expect("upload")
        .recording_id;
    let req = AppendEventsRequest {
        recording_id: id.clone(),
        events: events
            .iter()
            .map(|(onset, ty, rt)| Event {
                onset: Some(*onset),
                duration: Some(0.0),
                r#type: ty.clone(),
                value: String::new(),
                sample: None,
                response_time: *rt,
                extra: Default::default(),
            })
            .collect(),
        source: "task".into(),
        idempotency_key: String::new(),
        events_tsv: None,
    };
    client.append_events(req).await.expect("append events");
    Recording { id, spec, events }
}

fn trials(lefts: &[f64], rights: &[f64]) -> Vec<(f64, String, Option<f64>)> {
    let mut out = Vec::new();
    for (onsets, ty) in [(lefts, "left"), (rights, "right")] {
        for &o in onsets {
            out.push((o, ty.to_string(), Some(0.4)));
            out.push((o + 0.4, "button".to_string(), None));
        }
    }
    out
}

/// Uploads the fixture.
pub async fn load(sb: &Sandbox) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spec_a = Spec::eeg(3, 128, 20);
    spec_a.signals[2].samples_per_record = 64;
    let a = put(
        sb,
        dir.path(),
        ADMIN_TOKEN,
        "a.edf",
        spec_a,
        trials(&[2.0, 6.0, 10.0, 14.0], &[4.0, 8.0, 12.0, 16.0]),
    )
    .await;
    let mut spec_b = Spec::eeg(2, 256, 10);
    spec_b.seed = 2;
    let b = put(
        sb,
        dir.path(),
        ADMIN_TOKEN,
        "b.edf",
        spec_b,
        trials(&[3.0, 7.0], &[5.0]),
    )
    .await;
    let mut spec_o = Spec::eeg(2, 128, 10);
    spec_o.seed = 3;
    let other = put(
        sb,
        dir.path(),
        OTHER_TENANT_TOKEN,
        "o.edf",
        spec_o,
        trials(&[2.0, 5.0], &[7.0]),
    )
    .await;
    Fixture { a, b, other }
}
