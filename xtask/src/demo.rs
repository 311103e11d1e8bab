//! `cargo xtask demo`: the main job, end to end, on the embedded cluster.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo, env, run};

struct Cluster {
    child: Child,
    endpoint: String,
    metrics: String,
    token: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn gbrain(bin: &Path, cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("GBRAIN_SERVER", &cluster.endpoint)
        .env("GBRAIN_TOKEN", &cluster.token)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running gbrain {args:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    // import-bids exits 2 when some files failed and others were imported.
    if !out.status.success() && out.status.code() != Some(2) {
        bail!("gbrain {args:?} failed ({}):\n{stdout}", out.status);
    }
    Ok(stdout)
}

fn start(bin: &Path, data: &Path, ort_library: &Path) -> anyhow::Result<Cluster> {
    let mut child = Command::new(bin)
        .args(["up", "--data-dir"])
        .arg(data)
        .env("ORT_DYLIB_PATH", ort_library)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gbrain up")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut endpoint = None;
    let mut metrics = None;
    for line in lines.by_ref() {
        let line = line?;
        println!("   | {line}");
        if let Some(rest) = line.split("gRPC on ").nth(1) {
            endpoint = rest
                .split(',')
                .next()
                .map(|a| format!("http://{}", a.trim()));
            metrics = rest
                .split("metrics on ")
                .nth(1)
                .and_then(|m| m.split_whitespace().next())
                .map(str::to_string);
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(data.join("dev-token"))?
        .trim()
        .to_string();
    let cluster = Cluster {
        child,
        endpoint: endpoint.context("gbrain up did not say where it listens")?,
        metrics: metrics.context("no metrics address")?,
        token,
    };
    for _ in 0..200 {
        let addr = cluster.endpoint.trim_start_matches("http://");
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(cluster);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    bail!("the cluster did not start")
}

fn http_get(url: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A small BIDS EEG dataset built from the sample recordings.
fn bids_dataset(samples: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("bids-demo");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(p, text)?;
        Ok(())
    };
    write(
        "dataset_description.json",
        r#"{"Name": "gbrain-demo", "BIDSVersion": "1.9.0", "License": "BSD-3-Clause (pyedflib test files)"}"#,
    )?;
    write(
        "participants.tsv",
        "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\t61\tM\n",
    )?;
    for (sub, file, rate) in [
        ("01", "test_generator.edf", 200),
        ("02", "test_utf8.edf", 128),
    ] {
        let base = format!("sub-{sub}/eeg/sub-{sub}_task-rest");
        std::fs::create_dir_all(root.join(format!("sub-{sub}/eeg")))?;
        std::fs::copy(samples.join(file), root.join(format!("{base}_eeg.edf")))?;
        write(
            &format!("{base}_eeg.json"),
            &format!(
                r#"{{"TaskName": "rest", "EEGReference": "Cz", "SamplingFrequency": {rate}, "PowerLineFrequency": 50, "SoftwareFilters": "n/a"}}"#
            ),
        )?;
        let mut events = String::from("onset\tduration\ttrial_type\tvalue\tresponse_time\n");
        for i in 0..20 {
            let ty = if i % 2 == 0 { "left" } else { "right" };
            events.push_str(&format!(
                "{}\t0.5\t{ty}\t{}\t{:.3}\n",
                5 + i * 7,
                i % 2 + 1,
                0.3 + 0.01 * f64::from(i)
            ));
        }
        write(&format!("{base}_events.tsv"), &events)?;
    }
    let mut channels = String::from("name\ttype\tunits\n");
    for label in [
        "squarewave",
        "ramp",
        "pulse",
        "noise",
        "sine 1 Hz",
        "sine 8 Hz",
        "sine 8.1777 Hz",
        "sine 8.5 Hz",
        "sine 15 Hz",
        "sine 17 Hz",
        "sine 50 Hz",
    ] {
        channels.push_str(&format!("{label}\tMISC\tuV\n"));
    }
    write("sub-01/eeg/sub-01_task-rest_channels.tsv", &channels)?;
    write(
        "sub-02/eeg/sub-02_task-rest_channels.tsv",
        "name\ttype\tunits\nFp1\tEEG\tuV\n",
    )?;
    Ok(root)
}

pub fn demo(root: &Path) -> anyhow::Result<()> {
    println!(
        "Global Brain demo: hospital recordings in, de-identified, fused with behaviour in SQL, \
         and a closed loop decoding live signals."
    );
    step(1, "building gbrain");
    run(cargo().args(["build", "-p", "gbrain-cli", "--bin", "gbrain"]))?;
    let bin = crate::target_dir(root).join("debug/gbrain");

    step(
        2,
        "sample recordings (pyedflib 0.1.42 test files from PyPI, BSD licence)",
    );
    let samples = env::demo_data(root)?;
    // Two files are uploaded directly; two others arrive inside a BIDS dataset.
    let files: Vec<PathBuf> = ["test_subsecond.edf", "test_generator.bdf"]
        .iter()
        .map(|f| samples.join(f))
        .collect();
    for f in &files {
        println!("   {} ({} bytes)", f.display(), std::fs::metadata(f)?.len());
    }

    let work = root.join("target/demo");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let data = work.join("data");
    step(
        3,
        "starting the embedded cluster: gbrain up --data-dir target/demo/data",
    );
    let tools = env::prepare(root, env::Purpose::Test)?;
    let cluster = start(&bin, &data, &tools.ort_library)?;

    step(4, "uploading recordings (gbrain upload)");
    let mut args = vec!["upload"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    print!("{}", indent(&gbrain(&bin, &cluster, &args)?));
    println!("   uploading the same files again returns the same recordings:");
    print!(
        "{}",
        indent(&gbrain(&bin, &cluster, &["upload", &names[0]])?)
    );

    step(5, "importing a BIDS EEG dataset (gbrain import-bids)");
    let bids = bids_dataset(&samples, &work)?;
    print!(
        "{}",
        indent(&gbrain(
            &bin,
            &cluster,
            &["import-bids", bids.to_str().context("path")?]
        )?)
    );

    step(6, "the catalog (gbrain recordings ls)");
    let listing = gbrain(&bin, &cluster, &["recordings", "ls"])?;
    print!("{}", indent(&listing));
    let listed: serde_json::Value =
        serde_json::from_str(&gbrain(&bin, &cluster, &["recordings", "ls", "--json"])?)?;
    // Events go to the BDF+ recording: five channels at five rates, 30 s.
    let first = listed
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|r| r["format"].as_str().is_some_and(|f| f.starts_with("BDF")))
        })
        .and_then(|r| r["recording_id"].as_str())
        .context("no BDF recording listed")?
        .to_string();

    step(7, "appending behavioural events (gbrain events append)");
    let events = work.join("responses.tsv");
    std::fs::write(
        &events,
        "onset\tduration\ttrial_type\tresponse_time\n12.5\t0\tbutton\t0.412\n21.0\t0\tbutton\t0.388\n",
    )?;
    print!(
        "{}",
        indent(&gbrain(
            &bin,
            &cluster,
            &[
                "events",
                "append",
                &first,
                events.to_str().context("path")?,
                "--source",
                "responses",
                "--idempotency-key",
                "demo-1"
            ]
        )?)
    );

    step(
        8,
        "fusing signals with behaviour in SQL over Flight SQL (gbrain sql)",
    );
    for (what, sql) in [
        (
            "samples per recording",
            "SELECT recording_id, count(*) AS samples, max(t) AS last_t FROM samples \
             GROUP BY recording_id ORDER BY recording_id",
        ),
        (
            "the signal around each button press, averaged (erp)",
            "SELECT channel, count(*) AS points, max(epochs) AS presses, \
             round(min(value), 2) AS min_uv, round(max(value), 2) AS max_uv \
             FROM erp('button', -0.2, 0.8) GROUP BY channel",
        ),
        (
            "alpha and beta power in the second after each press (epoch_band_power)",
            "SELECT onset, channel, band, round(power, 3) AS power \
             FROM epoch_band_power('button', 0, 1, 'alpha,beta') ORDER BY onset, band",
        ),
        (
            "each sample with the press in force at its time (samples_asof)",
            "SELECT event_onset, count(*) AS samples, round(avg(value), 2) AS mean_uv \
             FROM samples_asof('button', 'backward', NULL, 'sine 5Hz') \
             GROUP BY event_onset ORDER BY event_onset",
        ),
    ] {
        println!("   {what}:");
        println!("   $ gbrain sql \"{sql}\"");
        print!("{}", indent(&gbrain(&bin, &cluster, &["sql", sql])?));
    }
    println!("   naming this state of the catalog keeps answers reproducible:");
    print!(
        "{}",
        indent(&gbrain(&bin, &cluster, &["snapshot", "create", "demo"])?)
    );

    step(9, "exporting a de-identified EDF+ (gbrain export)");
    let show = gbrain(&bin, &cluster, &["recordings", "show", &first])?;
    print!("{}", indent(&show));
    let ext = if show.contains("BDF") { "bdf" } else { "edf" };
    let out = work.join(format!("export.{ext}"));
    print!(
        "{}",
        indent(&gbrain(
            &bin,
            &cluster,
            &["export", &first, "--out", out.to_str().context("path")?]
        )?)
    );
    let header = std::fs::read(&out)?;
    println!(
        "   its header's patient field: {:?}",
        String::from_utf8_lossy(&header[8..88]).trim()
    );

    step(
        10,
        "the closed loop: synthetic subjects decoded live (gbrain loop simulate)",
    );
    println!(
        "   synthetic motor imagery (seeded; not recordings of people): 32 channels at 250 Hz,\n   \
         left- or right-hand imagery that desynchronises the opposite motor cortex, 1/f\n   \
         background, and electrode drift of 10% a minute. simulate fits a decoder (an LDA over\n   \
         the mu and beta power of C3 and C4) on a calibration session, pushes it as ONNX, and\n   \
         streams each subject live; a loop session decodes every 1 s window every 100 ms."
    );
    // Ten minutes of two drifting subjects, sent as fast as acked.
    let ten_minutes = |extra: &[&str]| -> anyhow::Result<String> {
        let mut args = vec![
            "loop",
            "simulate",
            "--sessions",
            "2",
            "--seconds",
            "600",
            "--drift",
            "0.1",
        ];
        args.extend_from_slice(extra);
        args.push("--fast");
        println!("   $ gbrain {}", args.join(" "));
        gbrain(&bin, &cluster, &args)
    };
    for (mode, what) in [
        ("off", "the decoder as fitted (no adaptation)"),
        ("unsupervised", "with the adaptive decision layer"),
    ] {
        println!("   {what}, ten minutes of two subjects, sent as fast as acked:");
        print!("{}", indent(&ten_minutes(&["--adaptation", mode])?));
    }
    println!("   live at the subjects' own pace (a chunk every 100 ms), four sessions:");
    println!("   $ gbrain loop simulate --sessions 4 --seconds 30");
    print!(
        "{}",
        indent(&gbrain(
            &bin,
            &cluster,
            &["loop", "simulate", "--sessions", "4", "--seconds", "30"],
        )?)
    );
    println!(
        "   the fixed decoder again, now evolving: outcomes refit it, each refit is pushed as a\n   \
         new version with its lineage, decodes in shadow, then for one of the two subjects\n   \
         (canary), and is promoted if it beats the current version on the same trials:"
    );
    print!(
        "{}",
        indent(&ten_minutes(&["--adaptation", "off", "--evolve"])?)
    );
    println!("   the decoder's versions:");
    print!("{}", indent(&gbrain(&bin, &cluster, &["models", "ls"])?));
    for (what, sql) in [
        (
            "every decision, stored",
            "SELECT version, parent_version, action, windows, round(accuracy, 3) AS accuracy, \
             round(parent_accuracy, 3) AS parent_accuracy, snapshot \
             FROM model_decisions ORDER BY decided_at",
        ),
        (
            "accuracy of each version's feedback, from the stored predictions and outcomes",
            "SELECT p.model_version AS version, p.role, count(*) AS windows, \
             round(avg(CASE WHEN p.class = o.label THEN 1.0 ELSE 0.0 END), 3) AS accuracy \
             FROM predictions p JOIN outcomes o ON p.session_id = o.session_id \
             AND p.window_number BETWEEN o.first_window AND o.last_window \
             WHERE p.model = 'synthetic-mi-lda' AND p.model_version <> '' \
             GROUP BY p.model_version, p.role ORDER BY p.role, CAST(p.model_version AS BIGINT)",
        ),
    ] {
        println!("   {what}:");
        println!("   $ gbrain sql \"{sql}\"");
        print!("{}", indent(&gbrain(&bin, &cluster, &["sql", sql])?));
    }

    step(11, "metrics (Prometheus, http://.../metrics)");
    let metrics = http_get(&cluster.metrics)?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("gbrain_ingest_uploads_total")
            || l.starts_with("gbrain_ingest_samples_total")
            || l.starts_with("gbrain_ingest_source_bytes_total")
            || l.starts_with("gbrain_ingest_stored_bytes_total")
            || l.starts_with("gbrain_query_queries_total")
    }) {
        println!("   {line}");
    }

    step(12, "stopping the cluster");
    drop(cluster);
    println!(
        "   data stays in {}; start it again with gbrain up --data-dir {}",
        data.display(),
        data.display()
    );
    println!("\ndemo finished");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
