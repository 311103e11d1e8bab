//! The local cluster: every service as its own `gbrain serve <role>` process on loopback,
//! on a PostgreSQL catalog (a database of its own on an existing server) and SeaweedFS as the
//! S3 server, as a Kubernetes deployment runs them. `gbrain local-cluster up` (and `cargo
//! xtask local-cluster`, which fetches SeaweedFS first) runs one in the foreground; the
//! integration tests start one here and break it on purpose.
//!
//! Ports are chosen once, when the cluster starts, and kept: a restarted process listens
//! where the one it replaces did, so clients and the coordinator find it again.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::output::write_private;

/// How long a process has to accept connections after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process has to exit after SIGTERM before it is killed (and the stop is
/// reported unclean).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds each process reports NOT_SERVING on SIGTERM before it closes its listener.
pub const DRAIN_SECONDS: u64 = 1;

/// The tenant the cluster's tokens belong to.
pub const TENANT: &str = "demo";

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Where logs, SeaweedFS's data, the ingest log (WAL), the auth file and `cluster.env` go.
    pub dir: PathBuf,
    /// The `gbrain` binary the roles run.
    pub gbrain: PathBuf,
    /// SeaweedFS's `weed`.
    pub weed: PathBuf,
    /// A PostgreSQL database to connect to while creating the cluster's own
    /// (`postgres://postgres@127.0.0.1:5432/postgres`).
    pub postgres: String,
    /// The cluster's database, created when missing.
    pub database: String,
    /// Inference nodes to start.
    pub inference_nodes: usize,
    /// Ballista executors to start (with a scheduler, which the query service sends large
    /// queries to); 0 starts no Ballista.
    pub ballista_executors: usize,
    /// `RUST_LOG` of the processes.
    pub log_level: String,
}

/// One process of the cluster.
#[derive(Debug)]
pub struct Process {
    /// `ballista-scheduler`, `ballista-executor-1`..., `ingest`, `query`, `inference-1`...,
    /// `coordinator`.
    pub name: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
}

impl Process {
    /// `http://` + its gRPC address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// SeaweedFS: master, volume, filer and S3 gateway in one `weed mini` process.
#[derive(Debug)]
pub struct Weed {
    program: PathBuf,
    pub s3: SocketAddr,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
}

/// A running local cluster. Dropping it kills what still runs; [`LocalCluster::stop`] stops
/// it cleanly.
#[derive(Debug)]
pub struct LocalCluster {
    pub spec: Spec,
    pub weed: Weed,
    /// In start order: the Ballista scheduler and executors, ingest, query, inference nodes,
    /// coordinator.
    pub processes: Vec<Process>,
    /// The catalog's URL.
    pub catalog: String,
    /// The object store's URL.
    pub object_store: String,
    /// The auth file every process reads (rotate tokens by rewriting it).
    pub auth_file: PathBuf,
    /// An admin token of tenant [`TENANT`].
    pub admin_token: String,
    /// A submitter token of tenant [`TENANT`].
    pub submitter_token: String,
    /// An analyst token of tenant [`TENANT`].
    pub analyst_token: String,
}

/// How each process ended.
#[derive(Debug)]
pub struct StopReport {
    /// (name, exit status, whether it exited on SIGTERM in time).
    pub exits: Vec<(String, Option<ExitStatus>, bool)>,
}

impl StopReport {
    /// Every process exited on SIGTERM in time, with success.
    pub fn clean(&self) -> bool {
        self.exits
            .iter()
            .all(|(_, status, in_time)| *in_time && status.is_some_and(|s| s.success()))
    }
}

impl std::fmt::Display for StopReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, status, in_time) in &self.exits {
            let how = match (status, in_time) {
                (Some(s), true) => format!("exited ({s})"),
                (Some(s), false) => format!("killed after {}s ({s})", STOP_TIMEOUT.as_secs()),
                (None, _) => "was not running".to_string(),
            };
            writeln!(f, "  {name}: {how}")?;
        }
        Ok(())
    }
}

impl LocalCluster {
    /// Starts SeaweedFS, creates the database, then the services in dependency order, each
    /// once the one before accepts connections.
    pub fn start(spec: Spec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(spec.dir.join("logs"))
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let weed = Weed::start(&spec.dir, &spec.weed)?;
        let catalog = ensure_database(&spec.postgres, &spec.database)?;
        let object_store = format!("s3://{}/cluster", weed.bucket);

        let tokens: Vec<String> = (0..3)
            .map(|_| gbrain_common::auth::generate_token())
            .collect();
        let auth_file = spec.dir.join("auth.toml");
        write_auth_file(&auth_file, &tokens)?;

        let mut cluster = Self {
            weed,
            processes: Vec::new(),
            catalog,
            object_store,
            auth_file,
            admin_token: tokens[0].clone(),
            submitter_token: tokens[1].clone(),
            analyst_token: tokens[2].clone(),
            spec,
        };
        let (auth_file, store) = (cluster.auth_file.clone(), cluster.object_store.clone());
        let common = move |role: &str| -> Vec<OsString> {
            vec![
                "serve".into(),
                role.into(),
                "--auth-file".into(),
                auth_file.clone().into(),
                "--object-store".into(),
                store.clone().into(),
            ]
        };
        let mut ingest = common("ingest");
        ingest.extend([
            "--catalog".into(),
            cluster.catalog.clone().into(),
            "--wal-dir".into(),
            cluster.spec.dir.join("ingest-wal").into(),
        ]);
        let mut planned = Vec::new();
        let mut query = common("query");
        query.extend(["--catalog".into(), cluster.catalog.clone().into()]);
        if cluster.spec.ballista_executors > 0 {
            // Ballista first: the query service is told where its scheduler is.
            let store = cluster.object_store.clone();
            cluster.add(
                "ballista-scheduler",
                vec![
                    "serve".into(),
                    "ballista-scheduler".into(),
                    "--object-store".into(),
                    store.clone().into(),
                ],
            )?;
            let scheduler = cluster.process("ballista-scheduler").grpc.to_string();
            for i in 1..=cluster.spec.ballista_executors {
                let args: Vec<OsString> = vec![
                    "serve".into(),
                    "ballista-executor".into(),
                    "--object-store".into(),
                    store.clone().into(),
                    "--scheduler".into(),
                    scheduler.clone().into(),
                    "--flight-port".into(),
                    free_addr()?.port().to_string().into(),
                    "--grpc-port".into(),
                    free_addr()?.port().to_string().into(),
                    "--work-dir".into(),
                    cluster
                        .spec
                        .dir
                        .join(format!("ballista-executor-{i}"))
                        .into(),
                ];
                std::fs::create_dir_all(cluster.spec.dir.join(format!("ballista-executor-{i}")))?;
                planned.push((format!("ballista-executor-{i}"), args));
            }
            query.extend([
                "--ballista-scheduler".into(),
                format!("df://{scheduler}").into(),
            ]);
        }
        planned.extend([("ingest".to_string(), ingest), ("query".to_string(), query)]);
        for i in 1..=cluster.spec.inference_nodes {
            planned.push((format!("inference-{i}"), common("inference")));
        }
        for (name, args) in planned {
            cluster.add(&name, args)?;
        }
        if cluster.spec.inference_nodes > 0 {
            // The coordinator finds the nodes in a file it reads again every few seconds, so
            // that nodes added later are found (what DNS does in Kubernetes).
            cluster.write_inference_endpoints()?;
            let mut coordinator = common("coordinator");
            coordinator.extend([
                "--catalog".into(),
                cluster.catalog.clone().into(),
                "--ingest-endpoint".into(),
                cluster.process("ingest").endpoint().into(),
                "--inference-endpoints".into(),
                format!("file://{}", cluster.inference_endpoints_file().display()).into(),
            ]);
            cluster.add("coordinator", coordinator)?;
        }
        cluster.write_env()?;
        Ok(cluster)
    }

    /// The file of inference endpoints the coordinator reads.
    pub fn inference_endpoints_file(&self) -> PathBuf {
        self.spec.dir.join("inference-endpoints")
    }

    fn write_inference_endpoints(&self) -> anyhow::Result<()> {
        let mut text = String::from("# the local cluster's inference nodes\n");
        for p in self
            .processes
            .iter()
            .filter(|p| p.name.starts_with("inference-"))
        {
            text.push_str(&p.endpoint());
            text.push('\n');
        }
        // Replaced whole, so that a reader never sees half of it.
        let file = self.inference_endpoints_file();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    /// Starts one more inference node and lists it for the coordinator, which finds it within
    /// seconds; returns its name.
    pub fn add_inference(&mut self) -> anyhow::Result<String> {
        let n = self
            .processes
            .iter()
            .filter(|p| p.name.starts_with("inference-"))
            .count();
        let name = format!("inference-{}", n + 1);
        let args: Vec<OsString> = vec![
            "serve".into(),
            "inference".into(),
            "--auth-file".into(),
            self.auth_file.clone().into(),
            "--object-store".into(),
            self.object_store.clone().into(),
        ];
        self.add(&name, args)?;
        // Listed before the coordinator, which stays last to stop first.
        if let Some(c) = self.processes.iter().position(|p| p.name == "coordinator") {
            let added = self.processes.pop().context("the node just added")?;
            self.processes.insert(c, added);
        }
        self.write_inference_endpoints()?;
        self.write_env()?;
        Ok(name)
    }

    /// Starts one more process of the cluster on ports of its own.
    fn add(&mut self, name: &str, args: Vec<OsString>) -> anyhow::Result<()> {
        let mut p = Process {
            name: name.to_string(),
            grpc: free_addr()?,
            http: free_addr()?,
            log: self.spec.dir.join("logs").join(format!("{name}.log")),
            args,
            child: None,
        };
        // A port taken between choosing and binding: choose again.
        let mut tries = 0;
        while let Err(e) = self.launch(&mut p) {
            tries += 1;
            if !port_taken(&e) || tries >= 3 {
                return Err(e);
            }
            p.grpc = free_addr()?;
            p.http = free_addr()?;
        }
        self.processes.push(p);
        Ok(())
    }

    fn launch(&self, p: &mut Process) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .with_context(|| format!("opening {}", p.log.display()))?;
        let mut cmd = Command::new(&self.spec.gbrain);
        cmd.args(&p.args).arg("--listen").arg(p.grpc.to_string());
        // Ballista's roles have no metrics port and no drain of their own.
        if !p.name.starts_with("ballista-") {
            cmd.arg("--http")
                .arg(p.http.to_string())
                // As behind a load balancer: NOT_SERVING for a second before the listener
                // closes.
                .args(["--drain-seconds", &DRAIN_SECONDS.to_string()]);
        }
        cmd.env("RUST_LOG", &self.spec.log_level)
            // Its own process group: Ctrl-C reaches the cluster, which stops it in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in self.weed.aws_env() {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.spec.gbrain.display()))?;
        p.child = Some(child);
        wait_accepting(p.grpc, &mut p.child, &p.name, &p.log)
    }

    /// The process named `name`.
    ///
    /// # Panics
    /// When the cluster has no such process.
    pub fn process(&self, name: &str) -> &Process {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("the cluster has no process {name}"))
    }

    fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("the cluster has no process {name}"))
    }

    /// SIGKILL: a crash. The process stays down until [`LocalCluster::restart`].
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        kill_now(&mut self.process_mut(name)?.child);
        Ok(())
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`]: (exit status, whether it exited in time).
    pub fn terminate(&mut self, name: &str) -> anyhow::Result<(Option<ExitStatus>, bool)> {
        let p = self.process_mut(name)?;
        Ok(terminate(&mut p.child))
    }

    /// Sends SIGTERM and returns at once; [`LocalCluster::wait`] waits for the exit.
    pub fn signal_term(&mut self, name: &str) -> anyhow::Result<()> {
        let child = self.process_mut(name)?.child.as_ref();
        let child = child.with_context(|| format!("{name} is not running"))?;
        send_term(child)
    }

    /// Waits up to [`STOP_TIMEOUT`] for a process to exit: (exit status, whether in time).
    pub fn wait(&mut self, name: &str) -> anyhow::Result<(Option<ExitStatus>, bool)> {
        Ok(wait_exit(&mut self.process_mut(name)?.child))
    }

    /// Starts a stopped process again, on the same ports.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .processes
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("the cluster has no process {name}"))?;
        let mut p = self.processes.remove(i);
        if p.child.is_some() {
            self.processes.insert(i, p);
            bail!("{name} is running");
        }
        let started = self.launch(&mut p);
        self.processes.insert(i, p);
        started
    }

    /// Stops SeaweedFS (SIGTERM); [`LocalCluster::start_weed`] brings it back with its data.
    pub fn stop_weed(&mut self) {
        terminate(&mut self.weed.child);
    }

    /// Starts SeaweedFS again, on the same ports and data.
    pub fn start_weed(&mut self) -> anyhow::Result<()> {
        self.weed.launch()
    }

    /// Writes `cluster.env`: the endpoints, a token and the S3 settings, for `source`.
    fn write_env(&self) -> anyhow::Result<()> {
        let mut env = String::from("# The local cluster; `source` this file.\n");
        let inference: Vec<String> = self
            .processes
            .iter()
            .filter(|p| p.name.starts_with("inference-"))
            .map(Process::endpoint)
            .collect();
        let mut vars = vec![
            ("GBRAIN_SERVER", self.process("ingest").endpoint()),
            ("GBRAIN_QUERY", self.process("query").endpoint()),
            ("GBRAIN_INFERENCE", inference.join(",")),
            ("GBRAIN_TOKEN", self.admin_token.clone()),
            ("GBRAIN_CATALOG", self.catalog.clone()),
            ("GBRAIN_OBJECT_STORE", self.object_store.clone()),
        ];
        if self.processes.iter().any(|p| p.name == "coordinator") {
            vars.push(("GBRAIN_COORDINATOR", self.process("coordinator").endpoint()));
        }
        for (k, v) in vars.into_iter().chain(self.weed.aws_env()) {
            env.push_str(&format!("export {k}='{v}'\n"));
        }
        write_private(&self.spec.dir.join("cluster.env"), &env)
    }

    /// What runs where, for people.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "local cluster in {}\n  catalog: {}\n  objects: {} (SeaweedFS S3 on {})\n",
            self.spec.dir.display(),
            redact(&self.catalog),
            self.object_store,
            self.weed.s3
        );
        for p in &self.processes {
            if p.name.starts_with("ballista-") {
                // Ballista's roles: a gRPC port (the scheduler's API, an executor's health),
                // no metrics.
                out.push_str(&format!(
                    "  {}: gRPC {}, log {}\n",
                    p.name,
                    p.endpoint(),
                    p.log.display()
                ));
                continue;
            }
            out.push_str(&format!(
                "  {}: gRPC {}, metrics http://{}/metrics, log {}\n",
                p.name,
                p.endpoint(),
                p.http,
                p.log.display()
            ));
        }
        out.push_str(&format!(
            "  environment (endpoints, an admin token of tenant '{TENANT}'): source {}\n",
            self.spec.dir.join("cluster.env").display()
        ));
        out
    }

    /// Stops every process with SIGTERM, the coordinator first and ingest last (so that the
    /// services that call others go before them), then SeaweedFS.
    pub fn stop(mut self) -> StopReport {
        let mut exits = Vec::new();
        for p in self.processes.iter_mut().rev() {
            let (status, in_time) = terminate(&mut p.child);
            exits.push((p.name.clone(), status, in_time));
        }
        let (status, in_time) = terminate(&mut self.weed.child);
        exits.push(("seaweedfs".to_string(), status, in_time));
        StopReport { exits }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            kill_now(&mut p.child);
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        kill_now(&mut self.child);
    }
}

impl Weed {
    /// Starts SeaweedFS (`weed`, the binary) with its data, credentials and log under `dir`,
    /// on ports of its own, choosing them again when one was taken meanwhile (weed then exits
    /// at once); returns once the bucket takes a signed write.
    pub fn start(dir: &Path, weed: &Path) -> anyhow::Result<Self> {
        let mut tries = 0;
        loop {
            let mut weed = Self::configure(dir, weed)?;
            match weed.launch() {
                Ok(()) => return Ok(weed),
                Err(e) => {
                    tries += 1;
                    let exited = weed
                        .child
                        .as_mut()
                        .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                    if !exited || tries >= 3 {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn configure(dir: &Path, program: &Path) -> anyhow::Result<Self> {
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
        let data = dir.join("seaweedfs");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut args: Vec<OsString> = vec![
            "mini".into(),
            format!("-dir={}", data.display()).into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-bucket=gbrain".into(),
        ];
        let mut s3 = None;
        for name in names {
            let addr = free_addr()?;
            if name == "s3.port" {
                s3 = Some(addr);
            }
            args.push(format!("-{name}={}", addr.port()).into());
        }
        // The S3 credentials: kept with the data, so that a restart takes the same ones.
        let keys = dir.join("s3-credentials");
        let secret = match std::fs::read_to_string(&keys) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let s = gbrain_common::auth::generate_token();
                write_private(&keys, &s)?;
                s
            }
        };
        Ok(Self {
            program: program.to_path_buf(),
            s3: s3.context("no S3 port")?,
            bucket: "gbrain".into(),
            access_key: "gbrain-cluster".into(),
            secret_key: secret,
            log: dir.join("logs").join("seaweedfs.log"),
            args,
            child: None,
        })
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        self.wait_for_bucket()
    }

    /// Waits until the bucket takes a write and gives it back with the cluster's credentials
    /// (an unsigned probe is not enough: SeaweedFS answers 403 before the bucket exists).
    fn wait_for_bucket(&mut self) -> anyhow::Result<()> {
        let store = gbrain_storage::store::open(&format!("s3://{}", self.bucket), &self.options())?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "SeaweedFS exited ({status}); its log: {}",
                    self.log.display()
                );
            }
            let store = std::sync::Arc::clone(&store);
            let ready = on_own_runtime(async move {
                use object_store::ObjectStoreExt;
                let path = object_store::path::Path::from("local-cluster/ready");
                store.put(&path, "ready".into()).await?;
                Ok(gbrain_storage::store::get_bytes(store.as_ref(), path.as_ref()).await?)
            });
            if ready.is_ok_and(|b| &b[..] == b"ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "SeaweedFS did not serve bucket {} on {} within {}s; its log: {}",
            self.bucket,
            self.s3,
            START_TIMEOUT.as_secs(),
            self.log.display()
        )
    }

    /// Its settings for [`gbrain_storage::store::open`].
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), format!("http://{}", self.s3)),
            ("aws_access_key_id".into(), self.access_key.clone()),
            ("aws_secret_access_key".into(), self.secret_key.clone()),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_allow_http".into(), "true".into()),
        ]
    }

    /// The AWS_* variables the services read.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.s3)),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

/// SIGTERM, then up to [`STOP_TIMEOUT`] for the exit; SIGKILL after it.
fn terminate(child: &mut Option<Child>) -> (Option<ExitStatus>, bool) {
    if let Some(c) = child.as_ref() {
        let _ = send_term(c);
    }
    wait_exit(child)
}

fn send_term(child: &Child) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("no pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

/// Waits up to [`STOP_TIMEOUT`] for the exit, SIGKILL after it: (exit status, whether it
/// exited in time); `(None, true)` when it was not running.
fn wait_exit(child: &mut Option<Child>) -> (Option<ExitStatus>, bool) {
    let Some(mut c) = child.take() else {
        return (None, true);
    };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match c.try_wait() {
            Ok(Some(status)) => return (Some(status), true),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break,
        }
    }
    let _ = c.kill();
    (c.wait().ok(), false)
}

/// SIGKILL and reap, if it runs.
fn kill_now(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own: callers may be
/// inside an async runtime, where blocking on another is not allowed.
fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a blocking task panicked"))?
}

/// Waits until `addr` accepts connections, failing early when the process exits.
fn wait_accepting(
    addr: SocketAddr,
    child: &mut Option<Child>,
    name: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(c) = child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("{name} exited ({status}) while starting: {}", tail(log));
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{name} did not accept connections on {addr} within {}s: {}",
        START_TIMEOUT.as_secs(),
        tail(log)
    )
}

/// The last lines of a log, for errors.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!("{} ends with:\n{}", log.display(), lines[from..].join("\n"))
}

/// A loopback address with a free port, chosen at random below the kernel's ephemeral range:
/// the ports chosen are kept for restarts, so they must not be ones the OS hands to any
/// process binding port 0 (or connecting out) meanwhile. Each is checked free when chosen.
fn free_addr() -> anyhow::Result<SocketAddr> {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let r = uuid::Uuid::new_v4().as_u128();
        let port = low + (r % u128::from(high - low)) as u16;
        if taken.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            taken.push(port);
            return Ok(l.local_addr()?);
        }
    }
    bail!("no free port between {low} and {high}")
}

/// Whether a process failed to start because a port was taken meanwhile.
fn port_taken(e: &anyhow::Error) -> bool {
    e.to_string().contains("Address already in use")
}

/// Creates `database` on the server of `admin_url` when it is missing; returns its URL.
fn ensure_database(admin_url: &str, database: &str) -> anyhow::Result<String> {
    if database.is_empty()
        || !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("--database {database:?}: use letters, digits and underscores");
    }
    let url = {
        let (base, _) = admin_url
            .rsplit_once('/')
            .filter(|(b, _)| b.contains("://") && !b.ends_with('/'))
            .with_context(|| {
                format!(
                    "--postgres {}: expected postgres://host/db",
                    redact(admin_url)
                )
            })?;
        format!("{base}/{database}")
    };
    let admin = admin_url.to_string();
    let name = database.to_string();
    on_own_runtime(async move {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(&admin)))?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut c)
                .await?;
        if exists.is_none() {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut c)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        anyhow::Ok(())
    })?;
    Ok(url)
}

/// Drops a database the cluster made (tests clean up with it). Connections still open to it
/// are closed first. Blocks (callable from async code too).
pub fn drop_database(admin_url: &str, database: &str) -> anyhow::Result<()> {
    let admin = admin_url.to_string();
    let name = database.to_string();
    on_own_runtime(async move {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut c)
        .await?;
        anyhow::Ok(())
    })
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The cluster's auth file: an admin, a submitter and an analyst of [`TENANT`], stored as
/// SHA-256 hashes.
fn write_auth_file(path: &Path, tokens: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, token) in ["admin", "submitter", "analyst"].iter().zip(tokens) {
        text.push_str(&format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\ntenant = \"{TENANT}\"\nroles = [\"{name}\"]\n\n",
            gbrain_common::auth::hash_token(token)
        ));
    }
    write_private(path, &text)
}

/// `gbrain local-cluster up`: starts the cluster, writes its pid next to `cluster.env`, and
/// runs until SIGTERM or SIGINT (or `gbrain local-cluster down`), then stops it cleanly.
pub async fn up(spec: Spec) -> anyhow::Result<std::process::ExitCode> {
    let dir = spec.dir.clone();
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(spec)).await??;
    write_private(&dir.join("cluster.pid"), &std::process::id().to_string())?;
    print!("{}", cluster.describe());
    println!(
        "  stop with Ctrl-C or `gbrain local-cluster down --dir {}`",
        dir.display()
    );
    gbrain_common::server::shutdown_signal().await;
    println!("stopping the local cluster");
    let report = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    let _ = std::fs::remove_file(dir.join("cluster.pid"));
    print!("{report}");
    Ok(if report.clean() {
        println!("stopped cleanly");
        std::process::ExitCode::SUCCESS
    } else {
        println!("some processes did not stop cleanly");
        std::process::ExitCode::FAILURE
    })
}

/// `gbrain local-cluster down`: signals the cluster running from `dir` and waits for it.
pub fn down(dir: &Path) -> anyhow::Result<std::process::ExitCode> {
    let file = dir.join("cluster.pid");
    let pid: i32 = std::fs::read_to_string(&file)
        .with_context(|| {
            format!(
                "no cluster runs from {} ({})",
                dir.display(),
                file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", file.display()))?;
    let pid = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{} does not hold a pid", file.display()))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("signalling the cluster (pid {})", pid.as_raw_nonzero()))?;
    // Each process has STOP_TIMEOUT; the cluster removes its pid file when done. Its process
    // count is not known here: allow for a large one.
    let deadline = Instant::now() + STOP_TIMEOUT * 16;
    while file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if file.exists() {
        bail!("the cluster (pid {}) did not stop", pid.as_raw_nonzero());
    }
    println!("local cluster stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn refuses_database_names_that_are_not_identifiers() {
        let e = ensure_database("postgres://postgres@127.0.0.1:5432/postgres", "a;b").unwrap_err();
        assert!(e.to_string().contains("--database"), "{e}");
    }
}
