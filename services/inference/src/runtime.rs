//! Loading the ONNX Runtime library, once per process.
//!
//! `ort` is built with `load-dynamic`: the library comes from the `onnxruntime` wheel on PyPI
//! (`cargo xtask` fetches it) or from `onnxruntime-gpu` for CUDA, and is named by
//! `--ort-library` or `ORT_DYLIB_PATH`. It must be loaded before any other `ort` call, and a
//! process has one ONNX Runtime environment, which every session shares.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::error::{Error, Result};

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Where to find the library: the flag, else `ORT_DYLIB_PATH`.
pub fn library_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
}

/// The process's ONNX Runtime environment, loading `library` the first time.
pub fn environment(library: Option<&Path>) -> Result<&'static Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _loading = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = library_path(library).ok_or_else(|| {
        Error::Startup(
            "no ONNX Runtime library: pass --ort-library or set ORT_DYLIB_PATH to \
             libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel (cargo xtask fetches it)"
                .into(),
        )
    })?;
    if !path.is_file() {
        return Err(Error::Startup(format!(
            "ONNX Runtime library {} does not exist",
            path.display()
        )));
    }
    let env = ort::init_from(&path)
        .map_err(|e| {
            Error::Startup(format!(
                "loading ONNX Runtime from {}: {e} (version 1.31 or later is needed)",
                path.display()
            ))
        })?
        .with_name("gbrain-inference")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::Startup(format!("ONNX Runtime environment: {e}")))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}
