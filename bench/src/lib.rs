//! Benchmarks: synthetic data generators shared by the benchmark binaries.

pub mod synth;
