//! The loop's signal path without the services: a synthetic subject's stream cut into
//! windows, preprocessed, decoded and adapted, window by window as a loop session does. The
//! seeded co-adaptation test and `gbrain loop simulate --offline` run on it.

use crate::decoder::{Adapter, Lda};
use crate::dsp::{Features, Reference};
use crate::synthetic::Subject;
use crate::{Error, Result};

/// How a session cuts and turns windows into features.
#[derive(Clone, Debug)]
pub struct Windowing {
    pub window_s: f64,
    pub hop_s: f64,
    pub reference: Reference,
    pub features: Features,
}

impl Windowing {
    /// The motor-imagery default: 1 s windows every 100 ms, common average reference, log
    /// mu (8-13 Hz) and beta (18-25 Hz) power of C3 and C4.
    pub fn motor_imagery(channels: &[String]) -> Result<Self> {
        let find = |l: &str| {
            channels
                .iter()
                .position(|c| c == l)
                .ok_or_else(|| Error::invalid("window.channels", format!("no channel {l}")))
        };
        Ok(Self {
            window_s: 1.0,
            hop_s: 0.1,
            reference: Reference::CommonAverage,
            features: Features {
                channels: vec![find("C3")?, find("C4")?],
                bands: vec![(8.0, 13.0), (18.0, 25.0)],
                log: true,
            },
        })
    }
}

/// One decoded window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The sample after the window's last.
    pub end: u64,
    pub features: Vec<f64>,
    /// The class imagined over the whole window, if one was.
    pub label: Option<u8>,
}

/// Cuts a subject's next `seconds` into windows every hop, with their features and labels.
pub fn windows(subject: &mut Subject, w: &Windowing, seconds: f64) -> Vec<Window> {
    let rate = subject.sample_rate();
    let width = subject.channels().len();
    let len = (w.window_s * rate).round() as usize;
    let hop = ((w.hop_s * rate).round() as usize).max(1);
    let total = (seconds * rate).round() as usize;
    let mut ring: Vec<f64> = Vec::with_capacity(len * width);
    let mut out = Vec::new();
    let mut sample = vec![0.0; width];
    let mut done = 0;
    while done + hop <= total {
        let chunk = subject.generate(hop);
        for s in chunk.chunks_exact(width) {
            for (d, v) in sample.iter_mut().zip(s) {
                *d = f64::from(*v);
            }
            w.reference.apply(&mut sample);
            ring.extend_from_slice(&sample);
        }
        if ring.len() > len * width {
            ring.drain(..ring.len() - len * width);
        }
        done += hop;
        if ring.len() == len * width {
            let end = subject.position();
            let first = end - len as u64;
            let label = subject
                .label_at(first)
                .filter(|l| subject.label_at(end - 1) == Some(*l));
            out.push(Window {
                end,
                features: w.features.extract(&ring, width, rate),
                label,
            });
        }
    }
    out
}

/// Accuracy over labelled windows of a decoder with an adapter, the adapter seeing every
/// window (labelled or not) in order, unsupervised.
pub fn adaptive_accuracy(lda: &Lda, adapter: &mut Adapter, windows: &[Window]) -> f64 {
    let (mut hits, mut total) = (0usize, 0usize);
    for w in windows {
        let s = lda.score(&w.features);
        if let Some(l) = w.label {
            total += 1;
            hits += usize::from(adapter.decide(s).0 == l);
        }
        adapter.observe(s);
    }
    hits as f64 / total.max(1) as f64
}

/// Fits an LDA on the labelled windows.
pub fn fit(windows: &[Window], shrinkage: f64) -> Result<Lda> {
    let (x, y): (Vec<Vec<f64>>, Vec<u8>) = windows
        .iter()
        .filter_map(|w| w.label.map(|l| (w.features.clone(), l)))
        .unzip();
    Lda::fit(&x, &y, shrinkage)
}
