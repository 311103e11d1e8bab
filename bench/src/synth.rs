//! EEG-like synthetic signals: 1/f ("pink") noise.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Pink noise by Paul Kellet's refined filter over Gaussian-ish white noise, scaled to
/// `std` digital units and clamped to int16. Deterministic for a seed.
pub fn pink_i16(n: usize, std: f64, seed: u64) -> Vec<i16> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut b0, mut b1, mut b2, mut b3, mut b4, mut b5, mut b6) =
        (0.0f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let mut out = Vec::with_capacity(n);
    // Kellet's filter has a gain of about 0.11 per unit white std before scaling; 0.11 keeps
    // `std` approximately right.
    let scale = std * 0.11 / 0.3;
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
        let v = (pink * scale / 0.11).round();
        out.push(v.clamp(i16::MIN as f64, i16::MAX as f64) as i16);
    }
    out
}
