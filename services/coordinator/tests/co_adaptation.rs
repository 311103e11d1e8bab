//! The seeded co-adaptation acceptance test: two-class synthetic motor imagery with drift.
//! - A fixed decoder's accuracy degrades measurably under drift.
//! - The adaptive loop stays within 3 points of the no-drift accuracy.
//! - A recalibrated version beats its parent on held-out trials.

use gbrain_coordinator::decoder::Adapter;
use gbrain_coordinator::offline::{Windowing, adaptive_accuracy, fit, windows};
use gbrain_coordinator::synthetic::{Subject, SubjectConfig};

const DRIFT_PER_MINUTE: f64 = 0.1;
const MINUTES: f64 = 12.0;
const ADAPT_RATE: f64 = 0.01;

fn subject(seed: u64, drift: f64) -> Subject {
    Subject::new(SubjectConfig {
        seed,
        drift,
        ..SubjectConfig::default()
    })
    .unwrap()
}

#[test]
fn adaptation_holds_accuracy_under_drift_and_recalibration_beats_its_parent() {
    let mut calibration = subject(100, 0.0);
    let w = Windowing::motor_imagery(calibration.channels()).unwrap();
    let train = windows(&mut calibration, &w, 8.0 * 60.0);
    let v1 = fit(&train, 0.1).unwrap();

    // The same subject model, a new session, with and without drift.
    let steady = windows(&mut subject(200, 0.0), &w, MINUTES * 60.0);
    let drifting = windows(&mut subject(200, DRIFT_PER_MINUTE), &w, MINUTES * 60.0);
    let fixed_steady = adaptive_accuracy(&v1, &mut Adapter::new(0.0, 0.0), &steady);
    let fixed_drift = adaptive_accuracy(&v1, &mut Adapter::new(0.0, 0.0), &drifting);
    let adaptive_drift = adaptive_accuracy(&v1, &mut Adapter::new(ADAPT_RATE, 0.0), &drifting);

    // Recalibration: labels of the drifting session's first half (outcomes) fit version 2;
    // both versions decode the second half, held out, as they are.
    let half = drifting.len() / 2;
    let v2 = fit(&drifting[..half], 0.1).unwrap();
    let held_out = &drifting[half..];
    let parent = adaptive_accuracy(&v1, &mut Adapter::new(0.0, 0.0), held_out);
    let recalibrated = adaptive_accuracy(&v2, &mut Adapter::new(0.0, 0.0), held_out);

    let pct = |a: f64| format!("{:.1}%", 100.0 * a);
    println!(
        "windows: {} calibration, {} per session ({} labelled)",
        train.len(),
        steady.len(),
        steady.iter().filter(|w| w.label.is_some()).count()
    );
    println!("fixed decoder, no drift:      {}", pct(fixed_steady));
    println!(
        "fixed decoder, drift {DRIFT_PER_MINUTE}/min: {}",
        pct(fixed_drift)
    );
    println!(
        "adaptive (rate {ADAPT_RATE}), drift: {}",
        pct(adaptive_drift)
    );
    println!(
        "held-out second half: parent v1 {}, recalibrated v2 {}",
        pct(parent),
        pct(recalibrated)
    );
    assert!(fixed_steady > 0.75, "the decoder works: {fixed_steady}");
    assert!(
        fixed_drift < fixed_steady - 0.10,
        "drift degrades a fixed decoder measurably: {fixed_steady} -> {fixed_drift}"
    );
    assert!(
        adaptive_drift >= fixed_steady - 0.03,
        "the adaptive loop stays within 3 points: {fixed_steady} vs {adaptive_drift}"
    );
    assert!(
        recalibrated > parent,
        "the recalibrated version beats its parent: {parent} vs {recalibrated}"
    );
}
