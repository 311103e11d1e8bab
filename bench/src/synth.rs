//! EEG-like synthetic signals, 1/f ("pink") noise, and EDF+ files made of them.

use std::path::Path;

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

/// An EDF+C of `channels` signals of 1/f noise at `rate` Hz for `seconds` one-second records,
/// labelled `EEG 00`, `EEG 01`…: about 25 uV standard deviation at 0.1 uV per bit. Channel `c`
/// uses seed `seed + c`, so files are reproducible.
pub fn write_edf(
    path: &Path,
    channels: usize,
    rate: usize,
    seconds: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let records = seconds;
    let signals: Vec<Vec<i16>> = (0..channels)
        .map(|c| pink_i16(rate * records, 250.0, seed + c as u64))
        .collect();
    let ann_spr = 30usize;
    let ns = channels + 1;
    let mut h = Vec::with_capacity(256 * (ns + 1));
    let pad = |h: &mut Vec<u8>, s: &str, w: usize| {
        let mut b = s.as_bytes().to_vec();
        b.resize(w, b' ');
        h.extend_from_slice(&b[..w]);
    };
    pad(&mut h, "0", 8);
    pad(&mut h, "X X X X", 80);
    pad(&mut h, "Startdate 01-JAN-2024 X X X", 80);
    pad(&mut h, "01.01.24", 8);
    pad(&mut h, "08.00.00", 8);
    pad(&mut h, &(256 * (ns + 1)).to_string(), 8);
    pad(&mut h, "EDF+C", 44);
    pad(&mut h, &records.to_string(), 8);
    pad(&mut h, "1", 8);
    pad(&mut h, &ns.to_string(), 4);
    let labels: Vec<String> = (0..channels)
        .map(|c| format!("EEG {c:02}"))
        .chain(["EDF Annotations".to_string()])
        .collect();
    for l in &labels {
        pad(&mut h, l, 16);
    }
    for _ in 0..ns {
        pad(&mut h, "AgAgCl electrode", 80);
    }
    for i in 0..ns {
        pad(&mut h, if i < channels { "uV" } else { "" }, 8);
    }
    for i in 0..ns {
        pad(&mut h, if i < channels { "-3276.8" } else { "-1" }, 8);
    }
    for i in 0..ns {
        pad(&mut h, if i < channels { "3276.7" } else { "1" }, 8);
    }
    for _ in 0..ns {
        pad(&mut h, "-32768", 8);
    }
    for _ in 0..ns {
        pad(&mut h, "32767", 8);
    }
    for _ in 0..ns {
        pad(&mut h, "HP:0.1Hz LP:100Hz", 80);
    }
    for i in 0..ns {
        pad(
            &mut h,
            &(if i < channels { rate } else { ann_spr }).to_string(),
            8,
        );
    }
    for _ in 0..ns {
        pad(&mut h, "", 32);
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    use std::io::Write;
    out.write_all(&h)?;
    let mut rec = Vec::with_capacity((channels * rate + ann_spr) * 2);
    for r in 0..records {
        rec.clear();
        for s in &signals {
            for v in &s[r * rate..(r + 1) * rate] {
                rec.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut tal = Vec::new();
        gbrain_formats::edf::write_tal(&mut tal, r as f64, None, &[]);
        tal.resize(ann_spr * 2, 0);
        rec.extend_from_slice(&tal);
        out.write_all(&rec)?;
    }
    out.flush()?;
    Ok(())
}
