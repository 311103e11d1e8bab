//! EDF and BDF files made to order, valid or broken in one chosen way.

use gbrain_formats::edf::write_tal;

/// One signal of a file to make.
#[derive(Clone, Debug)]
pub struct SignalSpec {
    pub label: String,
    pub transducer: String,
    pub unit: String,
    pub physical_min: String,
    pub physical_max: String,
    pub digital_min: i32,
    pub digital_max: i32,
    pub prefiltering: String,
    pub samples_per_record: usize,
}

impl SignalSpec {
    pub fn eeg(label: &str, samples_per_record: usize, bdf: bool) -> Self {
        let (dmin, dmax) = if bdf {
            (-(1 << 23), (1 << 23) - 1)
        } else {
            (-32768, 32767)
        };
        Self {
            label: label.into(),
            transducer: "AgAgCl electrode".into(),
            unit: "uV".into(),
            physical_min: "-3200".into(),
            physical_max: "3200".into(),
            digital_min: dmin,
            digital_max: dmax,
            prefiltering: "HP:0.1Hz LP:70Hz".into(),
            samples_per_record,
        }
    }
}

/// A file to make.
#[derive(Clone, Debug)]
pub struct Spec {
    pub bdf: bool,
    /// `None` for plain EDF/BDF, `Some('C')` or `Some('D')` for EDF+/BDF+.
    pub plus: Option<char>,
    pub patient: String,
    pub recording: String,
    pub start_date: String,
    pub start_time: String,
    pub record_duration: String,
    pub signals: Vec<SignalSpec>,
    pub records: usize,
    /// Onset of each record, seconds after the header's start (EDF+ only). Default: the
    /// sub-second start plus contiguous records.
    pub record_onsets: Option<Vec<f64>>,
    pub subsecond: f64,
    /// (record, onset, duration, text), onsets after the header's start.
    pub annotations: Vec<(usize, f64, Option<f64>, String)>,
    pub annotation_samples: usize,
    /// Replaces the num_records field text.
    pub num_records_text: Option<String>,
    pub seed: u64,
}

impl Spec {
    /// An EDF+C file: `channels` EEG signals at `rate` Hz for `seconds` one-second records.
    pub fn eeg(channels: usize, rate: usize, seconds: usize) -> Self {
        Self {
            bdf: false,
            plus: Some('C'),
            patient: "X X X X".into(),
            recording: "Startdate X X X X".into(),
            start_date: "14.03.21".into(),
            start_time: "09.30.00".into(),
            record_duration: "1".into(),
            signals: (0..channels)
                .map(|i| SignalSpec::eeg(&format!("EEG C{i}"), rate, false))
                .collect(),
            records: seconds,
            record_onsets: None,
            subsecond: 0.0,
            annotations: Vec::new(),
            annotation_samples: 60,
            num_records_text: None,
            seed: 1,
        }
    }

    pub fn bdf(mut self) -> Self {
        self.bdf = true;
        for s in &mut self.signals {
            *s = SignalSpec {
                digital_min: -(1 << 23),
                digital_max: (1 << 23) - 1,
                ..s.clone()
            };
        }
        self
    }

    /// The digital value of sample `i` of signal `s`: a deterministic walk.
    pub fn sample(&self, s: usize, i: u64) -> i32 {
        let sig = &self.signals[s];
        if sig.label.eq_ignore_ascii_case("status") {
            // Trigger 5 for 10 samples every 100, with the CMS bit set.
            let code = if i % 100 < 10 { 5 } else { 0 };
            return 0x10_0000 | code;
        }
        let mut x = self.seed ^ (s as u64) << 32 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 32;
        let noise = (x % 401) as i64 - 200;
        let wave = ((i as f64 / 10.0).sin() * 3000.0) as i64;
        let v = wave + noise;
        v.clamp(i64::from(sig.digital_min), i64::from(sig.digital_max)) as i32
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut signals = self.signals.clone();
        if self.plus.is_some() {
            let mut a = SignalSpec::eeg(
                if self.bdf {
                    "BDF Annotations"
                } else {
                    "EDF Annotations"
                },
                self.annotation_samples,
                self.bdf,
            );
            a.unit = String::new();
            a.transducer = String::new();
            a.prefiltering = String::new();
            a.physical_min = "-1".into();
            a.physical_max = "1".into();
            signals.push(a);
        }
        let ns = signals.len();
        let mut h = Vec::new();
        let pad = |h: &mut Vec<u8>, s: &str, w: usize| {
            let mut b = s.as_bytes().to_vec();
            b.resize(w, b' ');
            h.extend_from_slice(&b[..w]);
        };
        if self.bdf {
            h.push(0xff);
            pad(&mut h, "BIOSEMI", 7);
        } else {
            pad(&mut h, "0", 8);
        }
        pad(&mut h, &self.patient, 80);
        pad(&mut h, &self.recording, 80);
        pad(&mut h, &self.start_date, 8);
        pad(&mut h, &self.start_time, 8);
        pad(&mut h, &(256 * (ns + 1)).to_string(), 8);
        let reserved = match (self.bdf, self.plus) {
            (false, Some(c)) => format!("EDF+{c}"),
            (true, Some(c)) => format!("BDF+{c}"),
            (true, None) => "24BIT".into(),
            (false, None) => String::new(),
        };
        pad(&mut h, &reserved, 44);
        pad(
            &mut h,
            self.num_records_text
                .clone()
                .unwrap_or_else(|| self.records.to_string())
                .as_str(),
            8,
        );
        pad(&mut h, &self.record_duration, 8);
        pad(&mut h, &ns.to_string(), 4);
        for s in &signals {
            pad(&mut h, &s.label, 16);
        }
        for s in &signals {
            pad(&mut h, &s.transducer, 80);
        }
        for s in &signals {
            pad(&mut h, &s.unit, 8);
        }
        for s in &signals {
            pad(&mut h, &s.physical_min, 8);
        }
        for s in &signals {
            pad(&mut h, &s.physical_max, 8);
        }
        for s in &signals {
            pad(&mut h, &s.digital_min.to_string(), 8);
        }
        for s in &signals {
            pad(&mut h, &s.digital_max.to_string(), 8);
        }
        for s in &signals {
            pad(&mut h, &s.prefiltering, 80);
        }
        for s in &signals {
            pad(&mut h, &s.samples_per_record.to_string(), 8);
        }
        for _ in &signals {
            pad(&mut h, "", 32);
        }
        let duration: f64 = self.record_duration.parse().unwrap_or(1.0);
        let bps = if self.bdf { 3 } else { 2 };
        let mut counters = vec![0u64; self.signals.len()];
        for r in 0..self.records {
            for (s, sig) in self.signals.iter().enumerate() {
                for _ in 0..sig.samples_per_record {
                    let v = self.sample(s, counters[s]);
                    counters[s] += 1;
                    h.extend_from_slice(&v.to_le_bytes()[..bps]);
                }
            }
            if self.plus.is_some() {
                let onset = match &self.record_onsets {
                    Some(o) => o[r],
                    None => self.subsecond + r as f64 * duration,
                };
                let mut tal = Vec::new();
                write_tal(&mut tal, onset, None, &[]);
                for (rr, o, d, t) in &self.annotations {
                    if *rr == r {
                        write_tal(&mut tal, *o, *d, &[t.as_str()]);
                    }
                }
                let width = self.annotation_samples * bps;
                assert!(tal.len() <= width, "annotations do not fit record {r}");
                tal.resize(width, 0);
                h.extend_from_slice(&tal);
            }
        }
        h
    }

    /// The digital samples of signal `s`, as the file holds them.
    pub fn samples(&self, s: usize) -> Vec<i32> {
        let n = self.signals[s].samples_per_record as u64 * self.records as u64;
        (0..n).map(|i| self.sample(s, i)).collect()
    }
}
