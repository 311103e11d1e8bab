//! EEG-like synthetic signals: 1/f ("pink") noise.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Pink noise by Paul Kellet's refined filter over Gaussian-ish white noise, scaled to a
/// standard deviation of `std` digital units and clamped to int16. Deterministic for a seed.
pub fn pink_i16(n: usize, std: f64, seed: u64) -> Vec<i16> {
    let raw = pink_f64(n, seed);
    let mean = raw.iter().sum::<f64>() / n.max(1) as f64;
    let sd = (raw.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
    let scale = if sd > 0.0 { std / sd } else { 0.0 };
    raw.iter()
        .map(|v| {
            ((v - mean) * scale)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16
        })
        .collect()
}

fn pink_f64(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut b0, mut b1, mut b2, mut b3, mut b4, mut b5, mut b6) =
        (0.0f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // Sum of uniforms: cheap and close enough to Gaussian.
        let white: f64 = (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7;
        b0 = 0.99886 * b0 + white * 0.0555179;
        b1 = 0.99332 * b1 + white * 0.0750759;
        b2 = 0.96900 * b2 + white * 0.1538520;
        b3 = 0.86650 * b3 + white * 0.3104856;
        b4 = 0.55000 * b4 + white * 0.5329522;
        b5 = -0.7616 * b5 - white * 0.0168980;
        let pink = b0 + b1 + b2 + b3 + b4 + b5 + b6 + white * 0.5362;
        b6 = white * 0.115926;
        out.push(pink);
    }
    out
}
