//! Distributed runs end to end, on a real RabbitMQ and a real S3-compatible
//! server on loopback: `multir upload`, `submit`, two `multir-worker`
//! processes, `collect`; then the faults, each ending with every scan
//! exactly once in `scans.parquet` and nothing left in flight.
//!
//! Without the services each test says why it skips; under `CI=true` a
//! missing service is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use multir_tests::S3Server;
use polars::prelude::*;

const BUCKET: &str = "multir-test";

/// One test at a time: each starts workers that use both cores, and the
/// broker-side cuts must not hit another test's connections.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The services and a scratch folder for one test.
struct Env {
    _serial: std::sync::MutexGuard<'static, ()>,
    s3: S3Server,
    amqp: String,
    run: String,
    dir: tempfile::TempDir,
}

fn multir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_multir"))
}

/// `multir-worker`: `MULTIR_WORKER_BIN`, else beside `multir` in the
/// target folder (`cargo test --workspace` builds both).
fn worker_bin() -> PathBuf {
    let p = std::env::var_os("MULTIR_WORKER_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| multir().with_file_name("multir-worker"));
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --release --workspace`",
        p.display()
    );
    p
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Env {
    fn new(test: &str) -> Option<Env> {
        // A test that failed holding the lock poisons it; the next still runs.
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let amqp = multir_tests::amqp_url_or_skip(test)?;
        let s3 = S3Server::start(test)?;
        let run = format!(
            "t{}-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst),
            test.replace('_', "-").chars().take(40).collect::<String>()
        );
        Some(Env {
            _serial: serial,
            s3,
            amqp,
            run,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn results(&self) -> String {
        format!("s3://{BUCKET}/results")
    }

    /// The environment every child process gets: the services, the run,
    /// one libtorch thread (two workers share two cores).
    fn apply(&self, cmd: &mut Command) {
        cmd.env("MULTIR_AMQP_URL", &self.amqp)
            .env("MULTIR_S3_ENDPOINT", self.s3.endpoint())
            .env("MULTIR_S3_PATH_STYLE", "true")
            .env("AWS_ACCESS_KEY_ID", &self.s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.s3.secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("MULTIR_RUN", &self.run)
            .env("MULTIR_RESULTS", self.results())
            .env("MULTIR_THREADS", "1")
            .env("MULTIR_DEVICE", "cpu")
            .env_remove("RUST_LOG");
    }

    /// Runs `multir`; one that has not finished after 10 minutes is
    /// killed, turning a hang (a `collect --wait` whose workers died) into
    /// a failure with the output so far.
    fn multir(&self, args: &[&str], extra: &[&str]) -> Output {
        let mut cmd = Command::new(multir());
        cmd.args(args)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.apply(&mut cmd);
        let child = cmd.spawn().unwrap();
        let id = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(600)).is_err() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(id as i32, libc::SIGKILL) };
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = tx.send(());
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.multir(args, &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "multir {args:?} failed:\n{text}");
        text
    }

    /// A worker process; its log goes to a file beside the test's data.
    fn worker(&self, name: &str, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let unique = format!("{}-{name}", self.run);
        let mut cmd = Command::new(worker_bin());
        cmd.args([
            "run",
            "--name",
            &unique,
            "--http",
            "127.0.0.1:0",
            "--max-retry-delay",
            "2",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
        self.apply(&mut cmd);
        cmd.spawn().unwrap()
    }

    fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// Writes phantoms and uploads the folder under `s3://BUCKET/<name>/`.
    fn cohort(&self, name: &str, scans: usize, seed: u64) -> PathBuf {
        let dir = self.path(name);
        let d = dir.to_str().unwrap();
        self.ok(&[
            "synth",
            "--out",
            d,
            "--scans",
            &scans.to_string(),
            "--seed",
            &seed.to_string(),
            "--scale",
            "0.3",
        ]);
        self.ok(&[
            "upload",
            "--create-bucket",
            "--from",
            d,
            "--to",
            &format!("s3://{BUCKET}/{}/{name}", self.run),
        ]);
        dir
    }

    fn manifest_url(&self, name: &str) -> String {
        format!("s3://{BUCKET}/{}/{name}/manifest.csv", self.run)
    }

    fn submit(&self, cohort: &str) -> String {
        self.ok(&["submit", "--manifest", &self.manifest_url(cohort)])
    }

    /// `collect --wait` into a folder; returns the folder.
    fn collect(&self, out: &str) -> PathBuf {
        let dir = self.path(out);
        self.ok(&[
            "collect",
            "--wait",
            "--poll",
            "0.5",
            "--out",
            dir.to_str().unwrap(),
        ]);
        dir
    }

    fn status(&self) -> serde_json::Value {
        let text = self.ok(&["status", "--json"]);
        let start = text.find('{').unwrap();
        let end = text.rfind('}').unwrap();
        serde_json::from_str(&text[start..=end]).unwrap()
    }

    /// Waits until `f` holds (a service test polls; no timing is asserted,
    /// the limit only turns a hang into a failure with a message).
    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "gave up waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Objects under a key prefix (s3s-fs keeps one file per object).
    fn objects(&self, prefix: &str) -> usize {
        let dir = self.s3.root().join(BUCKET).join(prefix);
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_type().is_ok_and(|t| t.is_file())
                        && !e.file_name().to_string_lossy().starts_with('.')
                })
            })
            .count()
        })
    }

    /// Result fragments written so far.
    fn fragments(&self) -> usize {
        self.objects(&format!("results/runs/{}/fragments", self.run))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The run's queues go with the test.
        for q in ["jobs", "dead", "done"] {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &format!("multir.{}.{q}", self.run)])
                .output();
        }
    }
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{what} did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_parquet(path: &Path) -> DataFrame {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetReader::new(f).finish().unwrap()
}

/// A column as text (categorical columns included), nulls as "".
fn strings(df: &DataFrame, col: &str) -> Vec<String> {
    let s = df
        .column(col)
        .unwrap()
        .as_materialized_series()
        .cast(&DataType::String)
        .unwrap();
    let ca = s.str().unwrap();
    (0..ca.len())
        .map(|i| ca.get(i).unwrap_or("").to_string())
        .collect()
}

/// Every scan of the manifest exactly once, in manifest order.
fn assert_once(scans: &DataFrame, cohort: &Path) {
    let ids = strings(scans, "scan_id");
    let manifest = std::fs::read_to_string(cohort.join("manifest.csv")).unwrap();
    let expected: Vec<String> = manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(ids, expected, "one row per manifest row, in order");
}

/// The columns whose values differ, with both sides' values.
fn differences(a: &DataFrame, b: &DataFrame) -> Vec<String> {
    let names = |d: &DataFrame| -> Vec<String> {
        d.get_column_names().iter().map(|c| c.to_string()).collect()
    };
    if names(a) != names(b) || a.height() != b.height() {
        return vec![format!(
            "shapes or columns differ: {:?} {:?} vs {:?} {:?}",
            a.shape(),
            names(a),
            b.shape(),
            names(b)
        )];
    }
    names(a)
        .into_iter()
        .filter_map(|c| {
            let (x, y) = (strings(a, &c), strings(b, &c));
            let same = if c.starts_with("prob_") {
                // libtorch sums in another order with another thread count
                // (the workers run one thread each): the last bits differ.
                x.iter().zip(&y).all(|(p, q)| {
                    let (p, q): (f64, f64) = (p.parse().unwrap(), q.parse().unwrap());
                    (p - q).abs() < 1e-5
                })
            } else {
                x == y
            };
            (!same).then(|| format!("{c}: {x:?} vs {y:?}"))
        })
        .collect()
}

/// Columns that differ between two runs of the same scans by nature.
fn comparable(df: &DataFrame) -> DataFrame {
    let drop: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        // Stage timings (`read_s` ... `total_s`) differ by nature.
        .filter(|c| c.ends_with("_s"))
        .collect();
    df.drop_many(drop)
}

#[test]
fn a_distributed_run_equals_the_embedded_run_row_for_row() {
    let Some(env) = Env::new("a_distributed_run_equals_the_embedded_run_row_for_row") else {
        return;
    };
    let cohort = env.cohort("cohort", 4, 31);
    let text = env.submit("cohort");
    assert!(text.contains("published 4 jobs"), "{text}");
    let mut a = env.worker("w1", &["--exit-when-idle", "3"]);
    let mut b = env.worker("w2", &["--exit-when-idle", "3"]);
    let collected = env.collect("collected");
    assert!(
        wait_exit(&mut a, "worker 1").success(),
        "{}",
        env.worker_log("w1")
    );
    assert!(
        wait_exit(&mut b, "worker 2").success(),
        "{}",
        env.worker_log("w2")
    );
    // Both workers took part (prefetch 1, four scans).
    for w in ["w1", "w2"] {
        assert!(
            env.worker_log(w).contains("consuming"),
            "{}",
            env.worker_log(w)
        );
    }

    let local = env.path("local");
    env.ok(&[
        "run",
        "--manifest",
        cohort.join("manifest.csv").to_str().unwrap(),
        "--out",
        local.to_str().unwrap(),
    ]);
    let ours = read_parquet(&collected.join("scans.parquet"));
    let theirs = read_parquet(&local.join("scans.parquet"));
    assert_once(&ours, &cohort);
    let diffs = differences(&comparable(&ours), &comparable(&theirs));
    assert!(diffs.is_empty(), "scans differ:\n{}", diffs.join("\n"));
    let ours = read_parquet(&collected.join("lesions.parquet"));
    let theirs = read_parquet(&local.join("lesions.parquet"));
    assert!(ours.height() > 0, "the phantoms have lesions");
    assert!(
        ours.equals_missing(&theirs),
        "lesions differ:\n{ours}\n{theirs}"
    );
    assert!(collected.join("cohort.json").is_file());

    // Nothing is left: the queue is empty and status agrees.
    let s = env.status();
    assert_eq!(s["done"], 4, "{s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(s["dead_lettered"], 0, "{s}");

    // The same tables straight into S3.
    env.ok(&[
        "collect",
        "--out",
        &format!("s3://{BUCKET}/tables/{}", env.run),
    ]);
    for table in ["scans.parquet", "lesions.parquet", "cohort.json"] {
        let path = env
            .s3
            .root()
            .join(BUCKET)
            .join(format!("tables/{}/{table}", env.run));
        let (a, b) = (
            std::fs::read(&path).unwrap(),
            std::fs::read(collected.join(table)),
        );
        assert_eq!(
            a.len(),
            b.unwrap().len(),
            "{table} in S3 is the collected one"
        );
    }

    // Resubmitting a finished run publishes nothing.
    let text = env.submit("cohort");
    assert!(text.contains("published 0 jobs"), "{text}");
}

/// Rows of the scans table with status ok.
fn ok_rows(scans: &DataFrame) -> usize {
    strings(scans, "status")
        .iter()
        .filter(|s| *s == "ok")
        .count()
}

fn rabbitmqctl(test: &str, args: &[&str]) -> Option<String> {
    match Command::new("rabbitmqctl").args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => multir_tests::skip(test, &format!("rabbitmqctl cannot run ({e})")),
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn a_worker_killed_mid_scan_is_replaced_and_every_scan_counts_once() {
    let test = "a_worker_killed_mid_scan_is_replaced_and_every_scan_counts_once";
    let Some(env) = Env::new(test) else { return };
    let cohort = env.cohort("cohort", 3, 41);
    env.submit("cohort");
    let mut a = env.worker("w1", &[]);
    env.wait_for("worker 1 to take a scan", || {
        env.worker_log("w1").contains("processing")
    });
    a.kill().unwrap(); // SIGKILL: no chance to ack or requeue
    a.wait().unwrap();
    let mut b = env.worker("w2", &["--exit-when-idle", "3"]);
    let out = env.collect("collected");
    assert!(
        wait_exit(&mut b, "worker 2").success(),
        "{}",
        env.worker_log("w2")
    );
    let scans = read_parquet(&out.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(ok_rows(&scans), 3, "{scans}");
    let s = env.status();
    assert_eq!(
        (s["queued"].as_u64(), s["in_flight"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
}

#[test]
fn workers_recover_when_the_broker_closes_every_connection() {
    let test = "workers_recover_when_the_broker_closes_every_connection";
    let Some(env) = Env::new(test) else { return };
    let cohort = env.cohort("cohort", 4, 43);
    env.submit("cohort");
    let mut a = env.worker("w1", &["--exit-when-idle", "3"]);
    let mut b = env.worker("w2", &["--exit-when-idle", "3"]);
    env.wait_for("a first result", || env.fragments() >= 1);
    // Every connection of this test's workers, closed by the broker.
    let Some(list) = rabbitmqctl(
        test,
        &["-q", "list_connections", "pid", "client_properties"],
    ) else {
        let _ = (a.kill(), b.kill(), a.wait(), b.wait());
        return;
    };
    let pids: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(&env.run))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 2, "two worker connections:\n{list}");
    for pid in pids {
        rabbitmqctl(test, &["close_connection", pid, "multir test: cut"]);
    }
    let out = env.collect("collected");
    for (w, name) in [(&mut a, "w1"), (&mut b, "w2")] {
        assert!(wait_exit(w, name).success(), "{}", env.worker_log(name));
    }
    let logs = env.worker_log("w1") + &env.worker_log("w2");
    assert!(
        logs.contains("CONNECTION_FORCED"),
        "the cut was seen:\n{logs}"
    );
    assert!(
        logs.contains("redelivered=true"),
        "a job came again:\n{logs}"
    );
    let scans = read_parquet(&out.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(ok_rows(&scans), 4, "{scans}");
}

#[test]
fn a_store_outage_of_some_seconds_is_ridden_out() {
    let test = "a_store_outage_of_some_seconds_is_ridden_out";
    let Some(mut env) = Env::new(test) else {
        return;
    };
    let cohort = env.cohort("cohort", 3, 47);
    env.submit("cohort");
    let mut a = env.worker("w1", &["--exit-when-idle", "3"]);
    env.wait_for("a first result", || env.fragments() >= 1);
    env.s3.stop();
    std::thread::sleep(Duration::from_secs(4));
    env.s3.restart();
    let out = env.collect("collected");
    assert!(
        wait_exit(&mut a, "worker").success(),
        "{}",
        env.worker_log("w1")
    );
    let scans = read_parquet(&out.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(ok_rows(&scans), 3, "{scans}\n{}", env.worker_log("w1"));
}

#[test]
fn a_corrupt_object_is_an_error_row_and_the_rest_succeed() {
    let test = "a_corrupt_object_is_an_error_row_and_the_rest_succeed";
    let Some(env) = Env::new(test) else { return };
    let cohort = env.cohort("cohort", 2, 53);
    // Replace the first scan's image in S3 with garbage of the same name.
    let manifest = std::fs::read_to_string(cohort.join("manifest.csv")).unwrap();
    let first = manifest.lines().nth(1).unwrap();
    let image = first.split(',').nth(1).unwrap();
    let bad = env.path("bad");
    std::fs::create_dir_all(bad.join(Path::new(image).parent().unwrap())).unwrap();
    std::fs::write(bad.join(image), b"\x1f\x8b not really gzip").unwrap();
    env.ok(&[
        "upload",
        "--from",
        bad.to_str().unwrap(),
        "--to",
        &format!("s3://{BUCKET}/{}/cohort", env.run),
    ]);
    env.submit("cohort");
    let mut a = env.worker("w1", &["--exit-when-idle", "3"]);
    let out_dir = env.path("collected");
    let out = env.multir(
        &[
            "collect",
            "--wait",
            "--poll",
            "0.5",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed scan fails collect: {text}"
    );
    assert!(
        wait_exit(&mut a, "worker").success(),
        "{}",
        env.worker_log("w1")
    );
    let scans = read_parquet(&out_dir.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(strings(&scans, "status"), ["error", "ok"], "{scans}");
    assert_eq!(strings(&scans, "fault")[0], "input");
    let err = &strings(&scans, "error")[0];
    assert!(
        err.contains(&format!("s3://{BUCKET}/")) && err.contains(image),
        "{err}"
    );
    let s = env.status();
    assert_eq!(
        (s["done"].as_u64(), s["failed"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
}

#[test]
fn a_garbage_message_is_dead_lettered_and_reported() {
    let test = "a_garbage_message_is_dead_lettered_and_reported";
    let Some(env) = Env::new(test) else { return };
    let cohort = env.cohort("cohort", 1, 59);
    env.submit("cohort");
    // Someone else's message on the run's queue.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use multir_worker::broker::{Broker, BrokerArgs, Outgoing};
        let args = BrokerArgs {
            amqp_url: env.amqp.clone(),
            queue_prefix: "multir".into(),
            delivery_limit: 5,
            reconnect_attempts: 3,
            reconnect_max_delay_s: 1.0,
            recovery_timeout_s: 30.0,
        };
        let b = Broker::connect(&args, "garbage").await.unwrap();
        let p = b.publisher().await.unwrap();
        p.publish(
            Outgoing {
                exchange: String::new(),
                routing_key: format!("multir.{}.jobs", env.run),
                body: b"\x00\x01 definitely not a job".to_vec(),
                message_id: "garbage".into(),
                headers: vec![],
            },
            3,
        )
        .await
        .unwrap();
    });
    let mut a = env.worker("w1", &["--exit-when-idle", "3"]);
    let dir = env.path("collected");
    // Wait for the worker to dead-letter it (the scan itself finishes too).
    env.wait_for("the garbage to be dead-lettered", || {
        env.worker_log("w1").contains("not a multir job")
    });
    assert!(
        wait_exit(&mut a, "worker").success(),
        "{}",
        env.worker_log("w1")
    );
    let out = env.multir(&["collect", "--wait", "--out", dir.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("was not a job"), "{text}");
    let scans = read_parquet(&dir.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(ok_rows(&scans), 1);
    assert_eq!(
        env.objects(&format!("results/runs/{}/dead-messages", env.run)),
        1,
        "the garbage is kept with its reason"
    );
    let s = env.status();
    assert_eq!(s["dead_lettered"], 0, "a garbage message has no scan: {s}");
}

#[test]
fn sigterm_during_a_scan_finishes_it_and_exits_zero() {
    let test = "sigterm_during_a_scan_finishes_it_and_exits_zero";
    let Some(env) = Env::new(test) else { return };
    let cohort = env.cohort("cohort", 3, 61);
    env.submit("cohort");
    let mut a = env.worker("w1", &["--grace", "120"]);
    env.wait_for("worker 1 to take a scan", || {
        env.worker_log("w1").contains("processing")
    });
    let before = env.fragments();
    signal(&a, libc::SIGTERM);
    assert!(
        wait_exit(&mut a, "worker").success(),
        "{}",
        env.worker_log("w1")
    );
    assert_eq!(
        env.fragments(),
        before + 1,
        "the scan in flight was finished"
    );
    let s = env.status();
    assert_eq!(s["in_flight"], 0, "nothing held by the stopped worker: {s}");
    let mut b = env.worker("w2", &["--exit-when-idle", "3"]);
    let out = env.collect("collected");
    assert!(wait_exit(&mut b, "worker 2").success());
    let scans = read_parquet(&out.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert_eq!(ok_rows(&scans), 3);
}

#[test]
fn a_submit_killed_midway_and_run_again_gives_no_duplicate_rows() {
    let test = "a_submit_killed_midway_and_run_again_gives_no_duplicate_rows";
    let Some(env) = Env::new(test) else { return };
    // 300 rows over one small object: quick error rows, many messages.
    let cohort = env.path("many");
    std::fs::create_dir_all(&cohort).unwrap();
    std::fs::write(cohort.join("junk.nii"), vec![0u8; 400]).unwrap();
    let mut csv = String::from("scan_id,image\n");
    for i in 0..300 {
        csv += &format!("s{i:03},junk.nii\n");
    }
    std::fs::write(cohort.join("manifest.csv"), csv).unwrap();
    env.ok(&[
        "upload",
        "--create-bucket",
        "--from",
        cohort.to_str().unwrap(),
        "--to",
        &format!("s3://{BUCKET}/{}/many", env.run),
    ]);
    let mut cmd = Command::new(multir());
    cmd.args([
        "submit",
        "--window",
        "1",
        "--manifest",
        &env.manifest_url("many"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    env.apply(&mut cmd);
    let mut submit = cmd.spawn().unwrap();
    let queue = format!("multir.{}.jobs", env.run);
    let Some(_) = rabbitmqctl(test, &["-q", "list_queues", "name"]) else {
        let _ = (submit.kill(), submit.wait());
        return;
    };
    env.wait_for("submit to start publishing", || {
        let out = rabbitmqctl(test, &["-q", "list_queues", "name", "messages"]).unwrap_or_default();
        out.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(queue.as_str()) && f.next().is_some_and(|n| n != "0")
        })
    });
    submit.kill().unwrap();
    submit.wait().unwrap();
    let text = env.submit("many");
    assert!(text.contains("published"), "{text}");
    let mut a = env.worker("w1", &["--exit-when-idle", "3", "--prefetch", "4"]);
    let mut b = env.worker("w2", &["--exit-when-idle", "3", "--prefetch", "4"]);
    let dir = env.path("collected");
    let out = env.multir(
        &[
            "collect",
            "--wait",
            "--poll",
            "0.5",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("300 of 300 scans failed"),
        "every row is an error row: {text}"
    );
    for (w, name) in [(&mut a, "w1"), (&mut b, "w2")] {
        assert!(wait_exit(w, name).success(), "{}", env.worker_log(name));
    }
    let scans = read_parquet(&dir.join("scans.parquet"));
    assert_once(&scans, &cohort);
    assert!(
        strings(&scans, "fault").iter().all(|f| f == "input"),
        "{scans}"
    );
}

#[test]
fn no_password_reaches_a_log_line_or_an_error() {
    let test = "no_password_reaches_a_log_line_or_an_error";
    let Some(env) = Env::new(test) else { return };
    // A wrong password: the error must not repeat it.
    let secret = "s3cr3t-pw-4711";
    let url = env
        .amqp
        .replacen("guest:guest", &format!("guest:{secret}"), 1);
    assert_ne!(url, env.amqp, "the test URL carries guest:guest");
    let mut cmd = Command::new(worker_bin());
    cmd.args(["-vv", "run", "--http", "off"]);
    env.apply(&mut cmd);
    let out = cmd.env("MULTIR_AMQP_URL", &url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains(secret), "the password leaked:\n{text}");
    assert!(text.contains("***") || text.contains("guest@"), "{text}");
    // A right password, with trace logs over a whole scan.
    let user = format!("multir-{}", env.run);
    let Some(_) = rabbitmqctl(test, &["add_user", &user, secret]) else {
        return;
    };
    rabbitmqctl(test, &["set_permissions", &user, ".*", ".*", ".*"]);
    env.cohort("cohort", 1, 67);
    env.submit("cohort");
    let url = env
        .amqp
        .replacen("guest:guest", &format!("{user}:{secret}"), 1);
    let mut cmd = Command::new(worker_bin());
    cmd.args(["-vv", "run", "--http", "off", "--exit-when-idle", "2"]);
    env.apply(&mut cmd);
    let out = cmd.env("MULTIR_AMQP_URL", &url).output().unwrap();
    rabbitmqctl(test, &["delete_user", &user]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("consuming"), "{text}");
    assert!(!text.contains(secret), "the password leaked:\n{text}");
    assert!(env.fragments() == 1, "the scan was processed");
}
