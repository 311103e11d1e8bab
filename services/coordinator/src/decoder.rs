//! Decoders and their adaptation.
//!
//! - [`Lda`]: two-class linear discriminant analysis with shrinkage, the decoder the loop fits
//!   and refits (recalibration). [`Lda::to_onnx`] writes it as an ONNX model (features, a linear
//!   layer, softmax) for the inference nodes.
//! - [`Adapter`]: the adaptive decision layer on top of any two-class decoder's output score
//!   (the log-odds `ln(p1 / p0)`, which for an LDA is `w·x + b`). Unsupervised, it tracks the
//!   mean score, which for balanced classes is the point between them: this is the pooled-mean
//!   bias update of Vidaurre et al. (2011), `b = -w·μ`, written on the score. Supervised, when
//!   outcomes carry labels, it tracks each class's mean score and decides at their midpoint.
//!   Either way the rate is bounded by [`Adapter::MAX_RATE`] per window.

use crate::{Error, Result};

/// Two-class LDA: `score(x) = w·x + b`, class 1 when positive.
#[derive(Clone, Debug, PartialEq)]
pub struct Lda {
    pub w: Vec<f64>,
    pub b: f64,
}

impl Lda {
    /// Fits on labelled feature vectors. `shrinkage` in [0, 1] pulls the pooled covariance
    /// toward a multiple of the identity (0.1 is a sound default for a few dozen trials).
    pub fn fit(x: &[Vec<f64>], y: &[u8], shrinkage: f64) -> Result<Self> {
        let d = x.first().map_or(0, Vec::len);
        if d == 0 || x.len() != y.len() {
            return Err(Error::NotEnoughData(
                "an LDA fit needs feature vectors, one label each".into(),
            ));
        }
        let mut n = [0usize; 2];
        let mut mean = [vec![0.0; d], vec![0.0; d]];
        for (xi, &yi) in x.iter().zip(y) {
            let k = usize::from(yi.min(1));
            n[k] += 1;
            for (m, v) in mean[k].iter_mut().zip(xi) {
                *m += v;
            }
        }
        if n[0] < 2 || n[1] < 2 {
            return Err(Error::NotEnoughData(format!(
                "an LDA fit needs two windows of each class; it has {} and {}",
                n[0], n[1]
            )));
        }
        for k in 0..2 {
            for m in &mut mean[k] {
                *m /= n[k] as f64;
            }
        }
        let mut cov = vec![0.0; d * d];
        for (xi, &yi) in x.iter().zip(y) {
            let m = &mean[usize::from(yi.min(1))];
            for i in 0..d {
                let di = xi[i] - m[i];
                for j in 0..d {
                    cov[i * d + j] += di * (xi[j] - m[j]);
                }
            }
        }
        let dof = (x.len() - 2) as f64;
        let trace = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / dof / d as f64;
        let lambda = shrinkage.clamp(0.0, 1.0);
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (1.0 - lambda) * cov[i * d + j] / dof
                    + if i == j { lambda * trace } else { 0.0 };
            }
        }
        let diff: Vec<f64> = (0..d).map(|i| mean[1][i] - mean[0][i]).collect();
        let w = solve_spd(&cov, &diff, d)?;
        let mid: f64 = (0..d).map(|i| w[i] * (mean[0][i] + mean[1][i]) / 2.0).sum();
        Ok(Self { w, b: -mid })
    }

    pub fn score(&self, x: &[f64]) -> f64 {
        self.w.iter().zip(x).map(|(w, v)| w * v).sum::<f64>() + self.b
    }

    /// The decoder as ONNX: `p = softmax(x·W + c)` over the two classes, with
    /// `W = [-w/2, w/2]` and `c = [-b/2, b/2]`, so that `ln(p1 / p0) = w·x + b`.
    pub fn to_onnx(&self) -> Vec<u8> {
        let weights: Vec<Vec<f32>> = self
            .w
            .iter()
            .map(|w| vec![(-w / 2.0) as f32, (w / 2.0) as f32])
            .collect();
        gbrain_inference::onnx::linear_softmax(
            &weights,
            &[(-self.b / 2.0) as f32, (self.b / 2.0) as f32],
        )
    }
}

/// The score of a two-class decoder's probabilities: `ln(p1 / p0)`.
pub fn score_of(p: [f32; 2]) -> f64 {
    let (p0, p1) = (f64::from(p[0]).max(1e-12), f64::from(p[1]).max(1e-12));
    (p1 / p0).ln()
}

/// Solves `a x = b` for a symmetric positive definite `a` (d × d, row-major) by Cholesky.
fn solve_spd(a: &[f64], b: &[f64], d: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(Error::NotEnoughData(
                        "the features' covariance is singular; add windows or shrinkage".into(),
                    ));
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    let mut y = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    Ok(x)
}

/// The adaptive decision layer on a decoder's score.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    rate: f64,
    /// The score at which the classes are equally likely.
    bias: f64,
    /// Each class's mean score, once labels have come.
    means: [Option<f64>; 2],
}

impl Adapter {
    /// The most a single window may move the layer.
    pub const MAX_RATE: f64 = 0.05;

    /// `rate` is clamped to [0, [`Adapter::MAX_RATE`]]; 0 is a fixed decoder.
    pub fn new(rate: f64, bias: f64) -> Self {
        Self {
            rate: rate.clamp(0.0, Self::MAX_RATE),
            bias,
            means: [None, None],
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// The class for `score`, and the score the decision was made on.
    pub fn decide(&self, score: f64) -> (u8, f64) {
        let adjusted = score - self.bias;
        (u8::from(adjusted > 0.0), adjusted)
    }

    /// Unsupervised: follows the mean score (balanced classes put it between them).
    pub fn observe(&mut self, score: f64) {
        if self.means.iter().all(Option::is_some) {
            return;
        }
        self.bias += self.rate * (score - self.bias);
    }

    /// Supervised: a window's true class is known.
    pub fn learn(&mut self, score: f64, class: u8) {
        let k = usize::from(class.min(1));
        let m = self.means[k].get_or_insert(score);
        *m += self.rate * (score - *m);
        if let [Some(a), Some(b)] = self.means {
            self.bias = (a + b) / 2.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn blobs(n: usize, shift: f64, rng: &mut Rng) -> (Vec<Vec<f64>>, Vec<u8>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let k = (i % 2) as u8;
            let c = if k == 1 { 1.0 } else { -1.0 };
            x.push(vec![
                c + shift + 0.7 * rng.normal(),
                -c + 0.7 * rng.normal(),
                rng.normal(),
            ]);
            y.push(k);
        }
        (x, y)
    }

    fn accuracy(lda: &Lda, adapter: &Adapter, x: &[Vec<f64>], y: &[u8]) -> f64 {
        let hits = x
            .iter()
            .zip(y)
            .filter(|(xi, yi)| adapter.decide(lda.score(xi)).0 == **yi)
            .count();
        hits as f64 / x.len() as f64
    }

    #[test]
    fn lda_separates_two_classes() {
        let mut rng = Rng::new(5);
        let (x, y) = blobs(400, 0.0, &mut rng);
        let lda = Lda::fit(&x, &y, 0.1).unwrap();
        let (xt, yt) = blobs(400, 0.0, &mut rng);
        let acc = accuracy(&lda, &Adapter::new(0.0, 0.0), &xt, &yt);
        assert!(acc > 0.9, "{acc}");
        assert!(Lda::fit(&x[..1], &y[..1], 0.1).is_err());
    }

    #[test]
    fn the_adapter_follows_a_shift_a_fixed_decoder_cannot() {
        let mut rng = Rng::new(6);
        let (x, y) = blobs(400, 0.0, &mut rng);
        let lda = Lda::fit(&x, &y, 0.1).unwrap();
        // The first feature shifts for both classes: a fixed decoder leans to class 1.
        let (xs, ys) = blobs(2000, 1.5, &mut rng);
        let fixed = accuracy(&lda, &Adapter::new(0.0, 0.0), &xs, &ys);
        let mut unsupervised = Adapter::new(0.02, 0.0);
        let mut hits = 0;
        for (xi, yi) in xs.iter().zip(&ys) {
            let s = lda.score(xi);
            hits += usize::from(unsupervised.decide(s).0 == *yi);
            unsupervised.observe(s);
        }
        let adaptive = hits as f64 / xs.len() as f64;
        assert!(
            adaptive > fixed + 0.05,
            "fixed {fixed}, adaptive {adaptive}"
        );
        let mut supervised = Adapter::new(0.02, 0.0);
        for (xi, yi) in xs.iter().zip(&ys).take(500) {
            supervised.learn(lda.score(xi), *yi);
        }
        let acc = accuracy(&lda, &supervised, &xs[500..], &ys[500..]);
        assert!(acc > fixed + 0.05, "fixed {fixed}, supervised {acc}");
        assert_eq!(Adapter::new(1.0, 0.0).rate(), Adapter::MAX_RATE);
    }

    #[test]
    fn scores_survive_the_softmax() {
        let lda = Lda {
            w: vec![0.5, -2.0],
            b: 0.25,
        };
        let x = [1.0, 0.3];
        let s = lda.score(&x);
        // softmax of [-s/2, s/2].
        let p1 = 1.0 / (1.0 + (-s).exp());
        let back = score_of([(1.0 - p1) as f32, p1 as f32]);
        assert!((back - s).abs() < 1e-5, "{back} vs {s}");
        assert!(!lda.to_onnx().is_empty());
    }
}
