//! Preprocessing for loop sessions. What exists, in the order a window goes through it:
//! 1. **Re-referencing** ([`Reference`]): none, or the common average (each sample minus the
//!    mean of every channel at that instant).
//! 2. **Band-pass** ([`BandPass`]): a 4th-order Butterworth (a 2nd-order high-pass and a
//!    2nd-order low-pass biquad), causal, run over the stream so that windows carry no
//!    start-up transient.
//! 3. **Band-power features** ([`band_power`], [`Features`]): per chosen channel and band, the
//!    mean power of a Hann-windowed periodogram over the band's bins, optionally as its natural
//!    logarithm.
//! 4. **Z-scoring** ([`ZScore`]): each feature minus its running mean, over its running
//!    standard deviation, both exponentially weighted.

use crate::{Error, Result};

/// How a session re-references the signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reference {
    #[default]
    None,
    CommonAverage,
}

impl Reference {
    /// Re-references one sample of every channel in place.
    pub fn apply(self, sample: &mut [f64]) {
        match self {
            Self::None => {}
            Self::CommonAverage => {
                if sample.is_empty() {
                    return;
                }
                let mean = sample.iter().sum::<f64>() / sample.len() as f64;
                for x in sample {
                    *x -= mean;
                }
            }
        }
    }
}

/// One second-order section, transposed direct form II.
#[derive(Clone, Copy, Debug)]
pub struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    z: [f64; 2],
}

impl Biquad {
    /// RBJ cookbook low-pass or high-pass at `hz` with quality `q`.
    fn pass(hz: f64, rate: f64, q: f64, high: bool) -> Self {
        let w = std::f64::consts::TAU * hz / rate;
        let (sin, cos) = w.sin_cos();
        let alpha = sin / (2.0 * q);
        let a0 = 1.0 + alpha;
        let (b0, b1) = if high {
            ((1.0 + cos) / 2.0, -(1.0 + cos))
        } else {
            ((1.0 - cos) / 2.0, 1.0 - cos)
        };
        Self {
            b: [b0 / a0, b1 / a0, b0 / a0],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            z: [0.0; 2],
        }
    }

    pub fn process(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.z[0];
        self.z[0] = self.b[1] * x - self.a[0] * y + self.z[1];
        self.z[1] = self.b[2] * x - self.a[1] * y;
        y
    }
}

/// A band-pass per channel, run sample by sample over a stream.
#[derive(Clone, Debug)]
pub struct BandPass {
    sections: Vec<[Biquad; 2]>,
}

impl BandPass {
    pub fn new(channels: usize, lo_hz: f64, hi_hz: f64, rate: f64) -> Result<Self> {
        if !(lo_hz > 0.0 && lo_hz < hi_hz && hi_hz < rate / 2.0) {
            return Err(Error::invalid(
                "preprocessing.bandpass",
                format!("{lo_hz}-{hi_hz} Hz is not a band below half of {rate} Hz"),
            ));
        }
        let q = std::f64::consts::FRAC_1_SQRT_2;
        let pair = [
            Biquad::pass(lo_hz, rate, q, true),
            Biquad::pass(hi_hz, rate, q, false),
        ];
        Ok(Self {
            sections: vec![pair; channels],
        })
    }

    /// Filters one sample of every channel in place.
    pub fn apply(&mut self, sample: &mut [f64]) {
        for (x, [hp, lp]) in sample.iter_mut().zip(&mut self.sections) {
            *x = lp.process(hp.process(*x));
        }
    }
}

/// Mean power per bin of `x` (Hann-windowed periodogram) over the bins in `[lo, hi]` Hz.
pub fn band_power(x: &[f64], rate: f64, lo: f64, hi: f64) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let hann: Vec<f64> = (0..n)
        .map(|i| {
            let w = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / (n - 1) as f64).cos();
            (x[i] - mean) * w
        })
        .collect();
    let k_lo = (lo * n as f64 / rate).ceil().max(1.0) as usize;
    let k_hi = ((hi * n as f64 / rate).floor() as usize).min(n / 2);
    if k_hi < k_lo {
        return 0.0;
    }
    let mut total = 0.0;
    for k in k_lo..=k_hi {
        // Goertzel for bin k.
        let w = std::f64::consts::TAU * k as f64 / n as f64;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for v in &hann {
            let s = v + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        total += s1 * s1 + s2 * s2 - coeff * s1 * s2;
    }
    total / (k_hi - k_lo + 1) as f64 / n as f64
}

/// Which band powers make a window's features.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Channel positions in the window.
    pub channels: Vec<usize>,
    /// Bands in Hz.
    pub bands: Vec<(f64, f64)>,
    /// Natural logarithm of each power.
    pub log: bool,
}

impl Features {
    /// Features in channel-major order (every band of the first channel, then the next).
    pub fn extract(&self, window: &[f64], width: usize, rate: f64) -> Vec<f64> {
        let samples = window.len() / width.max(1);
        let mut out = Vec::with_capacity(self.channels.len() * self.bands.len());
        let mut column = Vec::with_capacity(samples);
        for &c in &self.channels {
            column.clear();
            column.extend((0..samples).map(|s| window[s * width + c]));
            for &(lo, hi) in &self.bands {
                let p = band_power(&column, rate, lo, hi);
                out.push(if self.log { p.max(1e-12).ln() } else { p });
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.channels.len() * self.bands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Running z-scores of a feature vector, exponentially weighted with `rate` per update.
#[derive(Clone, Debug)]
pub struct ZScore {
    mean: Vec<f64>,
    var: Vec<f64>,
    rate: f64,
    seen: u64,
}

impl ZScore {
    pub fn new(features: usize, rate: f64) -> Self {
        Self {
            mean: vec![0.0; features],
            var: vec![1.0; features],
            rate: rate.clamp(1e-6, 1.0),
            seen: 0,
        }
    }

    /// Updates the running moments with `x` and returns `x` z-scored.
    pub fn apply(&mut self, x: &[f64]) -> Vec<f64> {
        self.seen += 1;
        // The first updates average equally, so the start does not dominate.
        let eta = self.rate.max(1.0 / self.seen as f64);
        x.iter()
            .enumerate()
            .map(|(i, v)| {
                let d = v - self.mean[i];
                self.mean[i] += eta * d;
                self.var[i] = (1.0 - eta) * (self.var[i] + eta * d * d);
                if self.seen < 2 {
                    0.0
                } else {
                    (v - self.mean[i]) / self.var[i].sqrt().max(1e-12)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: f64, n: usize, amp: f64) -> Vec<f64> {
        (0..n)
            .map(|i| amp * (std::f64::consts::TAU * hz * i as f64 / rate).sin())
            .collect()
    }

    #[test]
    fn band_power_finds_a_sine_in_its_band() {
        let x = sine(10.0, 250.0, 250, 2.0);
        let inside = band_power(&x, 250.0, 8.0, 12.0);
        let outside = band_power(&x, 250.0, 18.0, 26.0);
        assert!(inside > 100.0 * outside, "{inside} vs {outside}");
    }

    #[test]
    fn band_pass_keeps_the_band_and_removes_the_rest() {
        let rate = 250.0;
        let mut f = BandPass::new(1, 8.0, 30.0, rate).unwrap();
        let run = |f: &mut BandPass, hz: f64| {
            let x = sine(hz, rate, 2500, 1.0);
            let mut y = Vec::new();
            for v in x {
                let mut s = [v];
                f.apply(&mut s);
                y.push(s[0]);
            }
            // RMS after the transient.
            (y[1250..].iter().map(|v| v * v).sum::<f64>() / 1250.0).sqrt()
        };
        let pass = run(&mut f, 15.0);
        let low = run(&mut BandPass::new(1, 8.0, 30.0, rate).unwrap(), 0.5);
        let high = run(&mut BandPass::new(1, 8.0, 30.0, rate).unwrap(), 100.0);
        assert!(pass > 0.6, "{pass}");
        assert!(low < 0.02 && high < 0.1, "{low} {high}");
        assert!(BandPass::new(1, 30.0, 8.0, rate).is_err());
    }

    #[test]
    fn common_average_removes_what_every_channel_shares() {
        let mut s = [1.0 + 5.0, 2.0 + 5.0, 3.0 + 5.0];
        Reference::CommonAverage.apply(&mut s);
        assert_eq!(s, [-1.0, 0.0, 1.0]);
    }

    #[test]
    fn z_scores_settle_to_zero_mean_unit_variance() {
        let mut z = ZScore::new(1, 0.01);
        let mut rng = crate::rng::Rng::new(3);
        let out: Vec<f64> = (0..5000)
            .map(|_| z.apply(&[10.0 + 3.0 * rng.normal()])[0])
            .collect();
        let tail = &out[1000..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        let var = tail.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / tail.len() as f64;
        assert!(mean.abs() < 0.15 && (var - 1.0).abs() < 0.2, "{mean} {var}");
    }
}
