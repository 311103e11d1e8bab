//! A synthetic motor-imagery subject. **Synthetic data, not a recording of a person**: no
//! labelled motor-imagery EEG is reachable from here, so the loop's tests, demo and benchmark
//! run on this model, seeded so that every run is the same.
//!
//! The signal, per channel, in µV:
//! - **Background**: 1/f ("pink") noise of each channel plus a pink component common to every
//!   channel (which a common-average reference removes).
//! - **Sensorimotor rhythms**: a mu (about 10 Hz) and a beta (about 21 Hz) source over each
//!   hemisphere's motor cortex, narrowband noise from a two-pole resonator, projected most
//!   strongly onto C3 (left) and C4 (right), less onto their neighbours, faintly elsewhere.
//! - **Motor imagery**: trials alternate rest (2-3 s) and imagery (4 s) of the left or the
//!   right hand, classes balanced in random order. Imagining one hand desynchronises the
//!   rhythms over the opposite hemisphere (event-related desynchronisation, ERD): their
//!   amplitude falls by `erd_depth`, ramped over half a second.
//! - **Noise**: white sensor noise on every channel.
//! - **Drift**: a slow change of gain of the left hemisphere's electrodes (as an electrode's
//!   impedance changes), `drift` per minute, and a slow wander of each channel's offset. The
//!   gain drift moves the features of both classes alike, which is what an unsupervised
//!   adaptation of a decoder's bias can follow and a fixed decoder cannot.
//!
//! Class 0 is the left hand, class 1 the right hand.

use crate::rng::Rng;
use crate::{Error, Result};

/// The BioSemi 32-channel montage (10-20 positions).
pub const MONTAGE_32: [&str; 32] = [
    "Fp1", "AF3", "F7", "F3", "FC1", "FC5", "T7", "C3", "CP1", "CP5", "P7", "P3", "Pz", "PO3",
    "O1", "Oz", "O2", "PO4", "P4", "P8", "CP6", "CP2", "C4", "T8", "FC6", "FC2", "F4", "F8", "AF4",
    "Fp2", "Fz", "Cz",
];

/// How strongly a hemisphere's motor sources reach a channel: (left, right).
fn projection(label: &str) -> (f64, f64) {
    match label {
        "C3" => (1.0, 0.05),
        "C4" => (0.05, 1.0),
        "FC1" | "FC5" | "CP1" | "CP5" => (0.5, 0.05),
        "FC2" | "FC6" | "CP2" | "CP6" => (0.05, 0.5),
        "T7" | "F3" | "P3" => (0.25, 0.02),
        "T8" | "F4" | "P4" => (0.02, 0.25),
        "Cz" => (0.3, 0.3),
        _ => (0.05, 0.05),
    }
}

/// Whether a channel lies over the left hemisphere (odd 10-20 numbers), whose gain drifts.
fn left_hemisphere(label: &str) -> bool {
    label
        .chars()
        .last()
        .and_then(|c| c.to_digit(10))
        .is_some_and(|d| d % 2 == 1)
}

#[derive(Clone, Debug)]
pub struct SubjectConfig {
    /// Channel labels; those of [`MONTAGE_32`] get the rhythms' projections.
    pub channels: Vec<String>,
    pub sample_rate: f64,
    pub seed: u64,
    pub mu_hz: f64,
    pub beta_hz: f64,
    /// Rhythm amplitudes at full projection, µV rms.
    pub mu_uv: f64,
    pub beta_uv: f64,
    /// Pink background per channel and common to all, µV rms (about).
    pub background_uv: f64,
    pub common_uv: f64,
    /// White sensor noise, µV rms.
    pub noise_uv: f64,
    /// The fraction by which imagery lowers the opposite hemisphere's rhythms.
    pub erd_depth: f64,
    /// The left hemisphere's gain grows by this fraction per minute (0: no drift).
    pub drift: f64,
    pub imagery_s: f64,
    /// Rest before each imagery period, uniformly between these, seconds.
    pub rest_s: (f64, f64),
}

impl Default for SubjectConfig {
    fn default() -> Self {
        Self {
            channels: MONTAGE_32.iter().map(|s| s.to_string()).collect(),
            sample_rate: 250.0,
            seed: 1,
            mu_hz: 10.5,
            beta_hz: 21.0,
            mu_uv: 6.0,
            beta_uv: 3.0,
            background_uv: 6.0,
            common_uv: 4.0,
            noise_uv: 1.5,
            erd_depth: 0.5,
            drift: 0.0,
            imagery_s: 4.0,
            rest_s: (2.0, 3.0),
        }
    }
}

/// One imagery period: samples `[start, end)` of class `class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    pub index: u64,
    pub start: u64,
    pub end: u64,
    pub class: u8,
}

/// Pink noise: white noise through Paul Kellet's three-pole approximation of 1/f.
#[derive(Clone, Debug, Default)]
struct Pink {
    b: [f64; 3],
}

impl Pink {
    /// Scales the filter's output to about unit variance for unit white input.
    const GAIN: f64 = 0.28;

    fn next(&mut self, white: f64) -> f64 {
        self.b[0] = 0.99765 * self.b[0] + white * 0.099_046;
        self.b[1] = 0.963 * self.b[1] + white * 0.296_516_4;
        self.b[2] = 0.57 * self.b[2] + white * 1.052_691_3;
        (self.b[0] + self.b[1] + self.b[2] + white * 0.1848) * Self::GAIN
    }
}

/// Narrowband noise at `hz`: a two-pole resonator driven by white noise, unit variance.
#[derive(Clone, Debug)]
struct Resonator {
    a1: f64,
    a2: f64,
    g: f64,
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn new(hz: f64, rate: f64) -> Self {
        let r: f64 = 0.985;
        let w = std::f64::consts::TAU * hz / rate;
        let a1 = 2.0 * r * w.cos();
        let a2 = -r * r;
        // Variance of the AR(2) output for unit input, to scale it to 1.
        let var = (1.0 + r * r)
            / ((1.0 - r * r) * ((1.0 + r * r).powi(2) - 4.0 * r * r * w.cos().powi(2)));
        Self {
            a1,
            a2,
            g: 1.0 / var.sqrt(),
            y1: 0.0,
            y2: 0.0,
        }
    }

    fn next(&mut self, white: f64) -> f64 {
        let y = self.a1 * self.y1 + self.a2 * self.y2 + self.g * white;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// The subject: call [`Subject::generate`] for the next samples.
#[derive(Clone, Debug)]
pub struct Subject {
    config: SubjectConfig,
    rng_trials: Rng,
    rng_noise: Rng,
    position: u64,
    pink: Vec<Pink>,
    common: Pink,
    /// mu left, mu right, beta left, beta right.
    sources: [Resonator; 4],
    projections: Vec<(f64, f64)>,
    left: Vec<bool>,
    wander: Vec<f64>,
    trials: Vec<Trial>,
    /// Where the next trial's rest begins.
    next_rest: u64,
    /// Classes still to come in the current block of two.
    block: Vec<u8>,
}

impl Subject {
    pub fn new(config: SubjectConfig) -> Result<Self> {
        if config.channels.is_empty() {
            return Err(Error::invalid("channels", "a subject needs a channel"));
        }
        if !(config.sample_rate.is_finite() && config.sample_rate >= 2.5 * config.beta_hz) {
            return Err(Error::invalid(
                "sample_rate",
                format!(
                    "{} Hz cannot carry a {} Hz beta rhythm",
                    config.sample_rate, config.beta_hz
                ),
            ));
        }
        let mut root = Rng::new(config.seed);
        let rng_trials = root.fork();
        let rng_noise = root.fork();
        let rate = config.sample_rate;
        let n = config.channels.len();
        Ok(Self {
            sources: [
                Resonator::new(config.mu_hz, rate),
                Resonator::new(config.mu_hz, rate),
                Resonator::new(config.beta_hz, rate),
                Resonator::new(config.beta_hz, rate),
            ],
            projections: config.channels.iter().map(|c| projection(c)).collect(),
            left: config.channels.iter().map(|c| left_hemisphere(c)).collect(),
            pink: vec![Pink::default(); n],
            common: Pink::default(),
            wander: vec![0.0; n],
            rng_trials,
            rng_noise,
            position: 0,
            trials: Vec::new(),
            next_rest: 0,
            block: Vec::new(),
            config,
        })
    }

    pub fn channels(&self) -> &[String] {
        &self.config.channels
    }

    pub fn sample_rate(&self) -> f64 {
        self.config.sample_rate
    }

    /// Samples per channel generated so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The trials whose imagery has begun.
    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    /// The class imagined at sample `s`, if any.
    pub fn label_at(&self, s: u64) -> Option<u8> {
        let i = self.trials.partition_point(|t| t.end <= s);
        self.trials
            .get(i)
            .filter(|t| t.start <= s && s < t.end)
            .map(|t| t.class)
    }

    /// Schedules the next trial once its rest begins.
    fn schedule(&mut self) {
        if self.position < self.next_rest {
            return;
        }
        let rate = self.config.sample_rate;
        let (lo, hi) = self.config.rest_s;
        let rest = lo + (hi - lo) * self.rng_trials.uniform();
        if self.block.is_empty() {
            self.block = if self.rng_trials.uniform() < 0.5 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
        }
        let class = self.block.pop().unwrap_or(0);
        let start = self.next_rest + (rest * rate).round() as u64;
        let end = start + (self.config.imagery_s * rate).round() as u64;
        self.trials.push(Trial {
            index: self.trials.len() as u64,
            start,
            end,
            class,
        });
        self.next_rest = end;
    }

    /// How much imagery lowers (left, right) hemisphere rhythms at sample `s`.
    fn erd(&self, s: u64) -> (f64, f64) {
        let Some(t) = self.trials.last().filter(|t| t.start <= s && s < t.end) else {
            return (1.0, 1.0);
        };
        let ramp = 0.5 * self.config.sample_rate;
        let into = (s - t.start) as f64;
        let left_of_end = (t.end - s) as f64;
        let env = (into / ramp).min(left_of_end / ramp).min(1.0);
        let env = 0.5 - 0.5 * (std::f64::consts::PI * env).cos();
        let down = 1.0 - self.config.erd_depth * env;
        // Left-hand imagery (0) desynchronises the right hemisphere, and the other way.
        if t.class == 0 {
            (1.0, down)
        } else {
            (down, 1.0)
        }
    }

    /// The next `samples` samples of every channel, sample-major, in µV.
    pub fn generate(&mut self, samples: usize) -> Vec<f32> {
        let width = self.config.channels.len();
        let mut out = Vec::with_capacity(samples * width);
        let c = &self.config;
        let (bg, common_uv, noise) = (c.background_uv, c.common_uv, c.noise_uv);
        let (mu, beta) = (c.mu_uv, c.beta_uv);
        let per_sample_drift = c.drift / (60.0 * c.sample_rate);
        let wander_step = 0.05 / c.sample_rate.sqrt();
        for _ in 0..samples {
            self.schedule();
            let s = self.position;
            let (erd_l, erd_r) = self.erd(s);
            let w: [f64; 5] = std::array::from_fn(|_| self.rng_noise.normal());
            let mu_l = self.sources[0].next(w[0]) * mu * erd_l;
            let mu_r = self.sources[1].next(w[1]) * mu * erd_r;
            let beta_l = self.sources[2].next(w[2]) * beta * erd_l;
            let beta_r = self.sources[3].next(w[3]) * beta * erd_r;
            let common = self.common.next(w[4]) * common_uv;
            let gain_left = 1.0 + per_sample_drift * s as f64;
            for ch in 0..width {
                let (pl, pr) = self.projections[ch];
                let background = self.pink[ch].next(self.rng_noise.normal()) * bg;
                self.wander[ch] += self.rng_noise.normal() * wander_step;
                let mut x = background
                    + common
                    + pl * (mu_l + beta_l)
                    + pr * (mu_r + beta_r)
                    + self.wander[ch];
                if self.left[ch] {
                    x *= gain_left;
                }
                x += self.rng_noise.normal() * noise;
                out.push(x as f32);
            }
            self.position += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::band_power;

    fn channel(data: &[f32], width: usize, c: usize, from: usize, to: usize) -> Vec<f64> {
        (from..to).map(|s| f64::from(data[s * width + c])).collect()
    }

    #[test]
    fn is_seeded_and_schedules_balanced_trials() {
        let config = SubjectConfig::default();
        let mut a = Subject::new(config.clone()).unwrap();
        let mut b = Subject::new(config).unwrap();
        assert_eq!(a.generate(1000), b.generate(1000));
        a.generate(250 * 120);
        let trials = a.trials();
        assert!(trials.len() >= 18, "{}", trials.len());
        let right = trials.iter().filter(|t| t.class == 1).count();
        assert!((right as i64 - (trials.len() - right) as i64).abs() <= 1);
        let t = trials[3];
        assert_eq!(a.label_at(t.start), Some(t.class));
        assert_eq!(a.label_at(t.start - 1), None);
    }

    #[test]
    fn imagery_desynchronises_the_opposite_hemisphere() {
        let mut s = Subject::new(SubjectConfig::default()).unwrap();
        let width = s.channels().len();
        let data = s.generate(250 * 240);
        let c3 = s.channels().iter().position(|c| c == "C3").unwrap();
        let c4 = s.channels().iter().position(|c| c == "C4").unwrap();
        // Mean log mu power (C3 minus C4) during each class's imagery.
        let mut by_class = [Vec::new(), Vec::new()];
        for t in s
            .trials()
            .iter()
            .filter(|t| t.end as usize <= data.len() / width)
        {
            let (a, b) = (t.start as usize + 125, t.end as usize);
            let p3 = band_power(&channel(&data, width, c3, a, b), 250.0, 8.0, 13.0);
            let p4 = band_power(&channel(&data, width, c4, a, b), 250.0, 8.0, 13.0);
            by_class[t.class as usize].push(p3.ln() - p4.ln());
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (left, right) = (mean(&by_class[0]), mean(&by_class[1]));
        // Left-hand imagery lowers C4, right-hand imagery lowers C3.
        assert!(left > 0.3 && right < -0.3, "left {left}, right {right}");
    }

    #[test]
    fn drift_raises_the_left_hemisphere() {
        let config = SubjectConfig {
            drift: 0.1,
            ..SubjectConfig::default()
        };
        let mut s = Subject::new(config).unwrap();
        let width = s.channels().len();
        let minutes = 5;
        let data = s.generate(250 * 60 * minutes);
        // O1 drifts, O2 (its mirror, the same signal model) does not.
        let o1 = s.channels().iter().position(|c| c == "O1").unwrap();
        let o2 = s.channels().iter().position(|c| c == "O2").unwrap();
        let n = data.len() / width;
        let ratio = |from: usize, to: usize| {
            band_power(&channel(&data, width, o1, from, to), 250.0, 2.0, 40.0)
                / band_power(&channel(&data, width, o2, from, to), 250.0, 2.0, 40.0)
        };
        let (early, late) = (ratio(0, 250 * 60), ratio(n - 250 * 60, n));
        // Gain 1 + 0.1 * 4.5 = 1.45 over the last minute: power about twice, less what a
        // minute of 1/f noise varies.
        assert!(late / early > 1.4, "{early} -> {late}");
    }
}
