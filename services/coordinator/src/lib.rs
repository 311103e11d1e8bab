//! The feedback-loop coordinator (issue 5, in progress).
//!
//! What exists: the signal side of the loop, as a library.
//! - [`synthetic`]: a seeded synthetic motor-imagery subject (1/f background, mu and beta
//!   rhythms with class-dependent desynchronisation on lateral channels, noise, slow drift),
//!   documented as synthetic. It drives the tests, the demo and the benchmark.
//! - [`dsp`]: the preprocessing a loop session can ask for: re-referencing, band-pass,
//!   band-power features and z-scoring.
//! - [`decoder`]: linear discriminant analysis, the adaptive decision layer on a decoder's
//!   output (unsupervised bias tracking after Vidaurre et al. 2011, supervised class means),
//!   and recalibrated decoders written as ONNX models.
//!
//! Not here yet: loop sessions over live streams, the KServe v2 client, the feedback and
//! outcome RPCs, shadow and canary promotion (see docs/ARCHITECTURE.md, "Feedback loop").

pub mod decoder;
pub mod dsp;
mod error;
pub mod offline;
pub mod rng;
pub mod synthetic;

pub use error::{Error, Result};
