//! The real `gbrain` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tools::gbrain_bin;

/// `gbrain up` running in a child process, its stderr going to a log file.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    /// The plaintext health port (`--health-listen`), when it has one.
    pub health: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub token: String,
}

impl Server {
    /// Starts `gbrain up` on ports the OS picks, with `RUST_LOG=debug` so the log holds
    /// everything the server says.
    pub fn up(data_dir: &Path, log: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<std::ffi::OsString> =
            vec!["up".into(), "--data-dir".into(), data_dir.into()];
        args.extend(extra.iter().map(Into::into));
        let mut server = Self::spawn(&args, log, data_dir);
        server.token = std::fs::read_to_string(data_dir.join("dev-token"))
            .expect("dev token")
            .trim()
            .to_string();
        server
    }

    /// Starts `gbrain <args> --listen 127.0.0.1:0 --http 127.0.0.1:0` and waits for the
    /// address it reports.
    pub fn spawn(args: &[std::ffi::OsString], log: &Path, data_dir: &Path) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut child = Command::new(gbrain_bin())
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn gbrain up");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addrs = None;
        let mut health = None;
        for line in lines.by_ref() {
            let line = line.expect("stdout line");
            // "embedded cluster: gRPC on 127.0.0.1:X, metrics on http://127.0.0.1:Y/metrics"
            // (", health on 127.0.0.1:Z" with --health-listen)
            if let Some(rest) = line.split("gRPC on ").nth(1) {
                health = rest
                    .split("health on ")
                    .nth(1)
                    .and_then(|h| h.split([',', ' ']).next())
                    .map(|h| h.parse().expect("health addr"));
                let grpc = rest
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let http = rest
                    .split("http://")
                    .nth(1)
                    .and_then(|h| h.split('/').next())
                    .unwrap_or_default()
                    .to_string();
                addrs = Some((
                    grpc.parse().expect("grpc addr"),
                    http.parse().expect("http addr"),
                ));
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (addr, http) = addrs.expect("gbrain did not report its address");
        let server = Self {
            child,
            addr,
            http,
            health,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            token: String::new(),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gbrain up is not accepting connections");
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The endpoint when the gRPC port speaks TLS.
    pub fn https_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Runs a client command of the same binary against this server, with the dev token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(gbrain_bin())
            .args(args)
            .env("GBRAIN_SERVER", self.endpoint())
            .env("GBRAIN_TOKEN", &self.token)
            .output()
            .expect("run gbrain")
    }

    /// GET over plain HTTP/1.1 from the metrics port.
    pub fn http_get(&self, path: &str) -> String {
        http_get(self.http, path).expect("GET from the metrics port")
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
        }
        self.child.wait().expect("wait")
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server the test did not stop (it panicked, or dropped it) does not outlive the test.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET over plain HTTP/1.1: the whole response, headers included.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The sum of a Prometheus metric's samples at `addr`'s `/metrics` whose line starts with
/// `name` and contains `matching` (a label, say); 0 when the server does not answer.
pub fn metric_sum(addr: SocketAddr, name: &str, matching: &str) -> u64 {
    http_get(addr, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(matching))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
