//! The deployment files, checked without a Docker engine or a cluster:
//!
//! - `docker/Dockerfile`: hadolint, every COPY source present and let into
//!   the build context, the libtorch it fetches is the one tch =0.24.0
//!   expects, and the final images run as non-root with labels and a
//!   health check and no compiler;
//! - `k8s/`: every overlay rendered by kustomize (`kubectl kustomize`),
//!   validated offline against the Kubernetes schemas (kubernetes-validate
//!   `--strict`) and its custom resources against the committed CRD schemas
//!   (`k8s/schemas`); security settings of every pod; the wiring between
//!   the ConfigMap, the worker's flags, probes, KEDA and Prometheus;
//! - `docker/docker-compose.yml` against the Compose Specification schema
//!   (and `docker compose config` where that plugin is installed).
//!
//! The tools come from `tests/requirements.txt` (the venv `scripts/setup`
//! makes) and kubectl; without them a test says why it skips, under CI it
//! fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use multir_tests::{python, skip};
use serde_json::Value;

fn repo() -> PathBuf {
    multir_tests::package_dir().parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A tool installed beside the test interpreter (the venv's `bin/`).
fn venv_tool(test: &str, name: &str) -> Option<PathBuf> {
    let py = python(test)?;
    let tool = py.with_file_name(name);
    if tool.is_file() {
        Some(tool)
    } else {
        skip(
            test,
            &format!(
                "{} missing: run scripts/setup (tests/requirements.txt)",
                tool.display()
            ),
        )
    }
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// --- Dockerfile ---------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments and
/// parser directives dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Stages by name, each with its instructions.
fn stages(dockerfile: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for ins in instructions(dockerfile) {
        if ins.starts_with("FROM ") {
            let name = ins
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0].eq_ignore_ascii_case("AS"))
                .map(|w| w[1].to_string())
                .unwrap_or_default();
            out.push((name, vec![ins]));
        } else if let Some(last) = out.last_mut() {
            last.1.push(ins);
        }
    }
    out
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let test = "the_dockerfile_passes_hadolint";
    let Some(hadolint) = venv_tool(test, "hadolint") else {
        return;
    };
    let (ok, text) = output(Command::new(&hadolint).current_dir(repo()).args([
        "--config",
        "docker/hadolint.yaml",
        "docker/Dockerfile",
    ]));
    assert!(ok, "hadolint docker/Dockerfile:\n{text}");
    // The linter is live: a root image on an untagged base fails it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install -y gcc\n").unwrap();
    let (ok, text) = output(
        Command::new(&hadolint)
            .arg("--config")
            .arg(repo().join("docker/hadolint.yaml"))
            .arg(&bad),
    );
    assert!(!ok && text.contains("DL3006"), "{text}");
}

#[test]
fn every_copy_source_exists_and_is_in_the_build_context() {
    let dockerfile = read("docker/Dockerfile");
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore is an allowlist");
    let allowed: BTreeSet<&str> = rules.iter().filter_map(|r| r.strip_prefix('!')).collect();
    let excluded: BTreeSet<&str> = rules
        .iter()
        .filter(|r| **r != "*" && !r.starts_with('!'))
        .copied()
        .collect();
    let mut sources = 0;
    for ins in instructions(&dockerfile) {
        let Some(rest) = ins.strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        for src in &paths[..paths.len() - 1] {
            sources += 1;
            let src = src.trim_start_matches("./");
            assert!(
                repo().join(src).exists(),
                "docker/Dockerfile copies {src}, which does not exist"
            );
            let top = src.split('/').next().unwrap();
            assert!(
                allowed.contains(top),
                "docker/Dockerfile copies {src}, but .dockerignore keeps {top} out"
            );
            assert!(
                !excluded
                    .iter()
                    .any(|e| src == *e || src.starts_with(&format!("{e}/"))),
                "docker/Dockerfile copies {src}, which .dockerignore excludes"
            );
        }
    }
    assert!(sources >= 8, "found only {sources} COPY sources");
    // What the build reads must be in the context: the workspace members
    // and the compiled-in model.
    let manifest = read("Cargo.toml");
    for member in ["common", "coordinator", "worker", "tests"] {
        assert!(manifest.contains(&format!("\"{member}\"")), "{member}");
        assert!(allowed.contains(member), ".dockerignore lacks !{member}");
    }
    assert!(allowed.contains("models"));
}

/// `TORCH_VERSION` as the build script of the torch-sys that Cargo.lock
/// pins declares it (read from cargo's registry sources, which the build
/// of this test unpacked).
fn torch_sys_version() -> String {
    let lock = read("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"torch-sys\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("torch-sys in Cargo.lock");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let sources = cargo_home.join("registry").join("src");
    let build_rs = std::fs::read_dir(&sources)
        .unwrap_or_else(|e| panic!("{}: {e}", sources.display()))
        .filter_map(|d| d.ok())
        .map(|d| {
            d.path()
                .join(format!("torch-sys-{version}"))
                .join("build.rs")
        })
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("torch-sys-{version}/build.rs under {}", sources.display()));
    let src = std::fs::read_to_string(&build_rs).unwrap();
    let line = src
        .lines()
        .find(|l| l.trim_start().starts_with("const TORCH_VERSION"))
        .expect("torch-sys build.rs pins TORCH_VERSION");
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn the_images_fetch_the_libtorch_tch_expects() {
    let expected = torch_sys_version();
    let dockerfile = read("docker/Dockerfile");
    let arg = instructions(&dockerfile)
        .into_iter()
        .find_map(|i| i.strip_prefix("ARG TORCH_VERSION=").map(str::to_string))
        .expect("ARG TORCH_VERSION=... in docker/Dockerfile");
    assert_eq!(arg, expected, "docker/Dockerfile vs torch-sys");
    let setup = read("scripts/setup");
    assert!(
        setup.contains(&format!("\ntorch_version={expected}\n")),
        "scripts/setup fetches another libtorch than torch-sys {expected}"
    );
    // The CUDA stage installs exactly that torch from PyPI.
    assert!(dockerfile.contains("\"torch==${TORCH_VERSION}\""));
}

#[test]
fn the_final_images_are_unprivileged_labelled_and_without_compilers() {
    let dockerfile = read("docker/Dockerfile");
    let stages = stages(&dockerfile);
    for target in ["coordinator", "worker", "s3-dev"] {
        let (_, ins) = stages
            .iter()
            .find(|(n, _)| n == target)
            .unwrap_or_else(|| panic!("no stage {target}"));
        let user = ins
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{target}: no USER"));
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u >= 1000),
            "{target}: USER {user} is not a numeric non-root user"
        );
        assert!(
            ins.iter().any(|i| i.starts_with("HEALTHCHECK ")),
            "{target}: no HEALTHCHECK"
        );
        let labels: String = ins
            .iter()
            .filter(|i| i.starts_with("LABEL "))
            .cloned()
            .collect();
        for key in ["version", "source", "revision", "title"] {
            assert!(
                labels.contains(&format!("org.opencontainers.image.{key}=")),
                "{target}: no org.opencontainers.image.{key} label"
            );
        }
        // The stage and the stages it is built on, back to an image.
        let mut chain = vec![ins];
        while let Some(parent) = chain.last().and_then(|i| i[0].split_whitespace().nth(1))
            && let Some((_, p)) = stages.iter().find(|(n, _)| n == parent)
        {
            chain.push(p);
        }
        let base = &chain.last().unwrap()[0];
        assert!(
            base.contains("${RUNTIME_IMAGE}"),
            "{target} must start from the slim runtime image: {base}"
        );
        for i in chain
            .iter()
            .flat_map(|c| c.iter())
            .filter(|i| i.starts_with("RUN "))
        {
            for tool in [
                " gcc",
                " g++",
                "build-essential",
                " clang",
                " cargo ",
                "pip ",
            ] {
                assert!(!i.contains(tool), "{target} installs or runs {tool}: {i}");
            }
        }
    }
    // The worker's health check is the probe the binary has.
    let worker = &stages.iter().find(|(n, _)| n == "worker").unwrap().1;
    let hc = worker
        .iter()
        .find(|i| i.starts_with("HEALTHCHECK "))
        .unwrap();
    assert!(hc.contains("\"multir-worker\", \"probe\""), "{hc}");
}

// --- Kubernetes ---------------------------------------------------------------

const OVERLAYS: [&str; 3] = ["gpu", "gpu-job", "cpu-demo"];

/// `kubectl kustomize k8s/overlays/<overlay>`, or a skip.
fn render(test: &str, overlay: &str) -> Option<String> {
    let (ok, text) = match Command::new("kubectl")
        .args(["kustomize", &format!("k8s/overlays/{overlay}")])
        .current_dir(repo())
        .output()
    {
        Ok(out) => (
            out.status.success(),
            if out.status.success() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            },
        ),
        Err(e) => {
            return skip(
                test,
                &format!("kubectl not found ({e}): kustomize renders with it"),
            );
        }
    };
    assert!(ok, "kubectl kustomize k8s/overlays/{overlay}:\n{text}");
    Some(text)
}

fn to_json(py: &Path, yaml: &Path) -> Vec<Value> {
    let (ok, text) = output(
        Command::new(py)
            .arg(repo().join("tests/support/manifests.py"))
            .arg("json")
            .arg(yaml),
    );
    assert!(ok, "{}: {text}", yaml.display());
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every overlay, rendered and parsed.
fn rendered(test: &str) -> Option<Vec<(&'static str, Vec<Value>)>> {
    let py = python(test)?;
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for overlay in OVERLAYS {
        let yaml = render(test, overlay)?;
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        out.push((overlay, to_json(&py, &file)));
    }
    Some(out)
}

fn kubernetes_validate(tool: &Path, file: &Path) -> (bool, String) {
    output(
        Command::new(tool)
            .args(["--strict", "--no-warn", "--quiet", "-k", "1.33.0"])
            .arg(file),
    )
}

fn check_crds(py: &Path, file: &Path) -> Value {
    let (ok, text) = output(
        Command::new(py)
            .arg(repo().join("tests/support/manifests.py"))
            .arg("crds")
            .arg(file)
            .arg(repo().join("k8s/schemas")),
    );
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    let test = "every_overlay_renders_and_validates_offline";
    let (Some(py), Some(kv)) = (python(test), venv_tool(test, "kubernetes-validate")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut custom = BTreeSet::new();
    for overlay in OVERLAYS {
        let Some(yaml) = render(test, overlay) else {
            return;
        };
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let (ok, text) = kubernetes_validate(&kv, &file);
        assert!(
            ok,
            "k8s/overlays/{overlay} against Kubernetes 1.33:\n{text}"
        );
        let crds = check_crds(&py, &file);
        assert_eq!(crds["errors"], Value::Array(vec![]), "{overlay}: {crds}");
        for c in crds["checked"].as_array().unwrap() {
            custom.insert(c.as_str().unwrap().split('/').next().unwrap().to_string());
        }

        // The checks are live: a misspelled field fails each of them.
        let typo = dir.path().join(format!("{overlay}-typo.yaml"));
        std::fs::write(
            &typo,
            yaml.replacen("restartPolicy:", "restartPolicyy:", 1)
                .replacen(
                    "terminationGracePeriodSeconds:",
                    "terminationGracePeriod:",
                    1,
                ),
        )
        .unwrap();
        let (ok, text) = kubernetes_validate(&kv, &typo);
        assert!(!ok, "{overlay}: a misspelled field passed:\n{text}");
        if yaml.contains("kind: ScaledObject") {
            std::fs::write(&typo, yaml.replacen("minReplicaCount:", "minReplicas:", 1)).unwrap();
            let crds = check_crds(&py, &typo);
            assert!(crds["errors"].to_string().contains("minReplicas"), "{crds}");
        }
    }
    assert_eq!(
        custom,
        ["ScaledObject", "ServiceMonitor", "TriggerAuthentication"]
            .map(String::from)
            .into(),
        "the custom resources checked against k8s/schemas"
    );
    let (ok, text) = kubernetes_validate(&kv, &repo().join("k8s/device-check-job.yaml"));
    assert!(ok, "k8s/device-check-job.yaml:\n{text}");
}

fn pod_specs(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => {
            Some(&doc["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&doc["spec"]),
        _ => None,
    }
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

fn name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Looks like a credential: a key name or a URL with a password in it.
fn secret_like_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "ACCESS_KEY",
        "AMQP_URL",
        "CREDENTIAL",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn url_with_password(value: &str) -> bool {
    value.split("://").nth(1).is_some_and(|rest| {
        let authority = rest.split('/').next().unwrap_or("");
        authority
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
    })
}

#[test]
fn rendered_pods_are_locked_down_and_hold_no_secret() {
    let test = "rendered_pods_are_locked_down_and_hold_no_secret";
    let Some(all) = rendered(test) else {
        return;
    };
    assert!(url_with_password("amqp://u:p@h:5672/%2f") && !url_with_password("s3://b/k"));
    let device_check = {
        let Some(py) = python(test) else { return };
        to_json(&py, &repo().join("k8s/device-check-job.yaml"))
    };
    let mut pods = 0;
    for (overlay, docs) in all
        .iter()
        .map(|(o, d)| (*o, d))
        .chain([("device-check", &device_check)])
    {
        for doc in docs {
            let what = format!("{overlay}: {}", name(doc));
            let kind = doc["kind"].as_str().unwrap_or("");
            assert_ne!(
                kind, "Secret",
                "{what}: secrets are created by hand, never rendered"
            );
            assert!(
                !["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"].contains(&kind),
                "{what}: the pods need no Kubernetes API rights"
            );
            if kind == "ServiceAccount" {
                assert_eq!(doc["automountServiceAccountToken"], false, "{what}");
            }
            if kind == "ConfigMap" {
                for (k, v) in doc["data"].as_object().into_iter().flatten() {
                    let v = v.as_str().unwrap_or("");
                    assert!(!secret_like_key(k), "{what}: {k} belongs in a Secret");
                    assert!(!url_with_password(v), "{what}: {k} holds a password");
                }
            }
            let Some(pod) = pod_specs(doc) else { continue };
            pods += 1;
            assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
            let sc = &pod["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{what}: runAsNonRoot");
            assert!(
                sc["runAsUser"].as_u64().is_some_and(|u| u >= 1000),
                "{what}: runAsUser"
            );
            assert_eq!(
                sc["seccompProfile"]["type"], "RuntimeDefault",
                "{what}: seccomp"
            );
            assert!(
                pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
                "{what}"
            );
            for c in containers(pod) {
                let what = format!("{what} container {}", c["name"]);
                let csc = &c["securityContext"];
                assert_eq!(csc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(csc["readOnlyRootFilesystem"], true, "{what}");
                assert_ne!(csc["privileged"], true, "{what}");
                assert!(
                    csc["capabilities"]["drop"]
                        .as_array()
                        .is_some_and(|d| d.contains(&"ALL".into())),
                    "{what}: capabilities not dropped"
                );
                assert!(
                    c["resources"]["limits"]["memory"].is_string(),
                    "{what}: no memory limit"
                );
                assert!(
                    c["resources"]["requests"]["cpu"].is_string(),
                    "{what}: no CPU request"
                );
                for e in c["env"].as_array().into_iter().flatten() {
                    let n = e["name"].as_str().unwrap();
                    if secret_like_key(n) {
                        assert!(
                            e["value"].is_null() && e["valueFrom"]["secretKeyRef"].is_object(),
                            "{what}: {n} must come from a Secret"
                        );
                    }
                    if let Some(v) = e["value"].as_str() {
                        assert!(!url_with_password(v), "{what}: {n} holds a password");
                    }
                }
            }
        }
    }
    assert!(pods >= 7, "only {pods} pod templates found");
}

#[test]
fn every_workload_selects_its_own_pods() {
    // Kubernetes refuses a Deployment whose selector does not match its
    // pod template, and a PDB or Service that matches nothing protects or
    // reaches nothing; neither shows in a schema check.
    let test = "every_workload_selects_its_own_pods";
    let Some(all) = rendered(test) else {
        return;
    };
    for (overlay, docs) in &all {
        let pod_labels: Vec<&serde_json::Map<String, Value>> = docs
            .iter()
            .filter_map(|d| match d["kind"].as_str() {
                Some("Deployment" | "Job") => {
                    d["spec"]["template"]["metadata"]["labels"].as_object()
                }
                _ => None,
            })
            .collect();
        for doc in docs {
            let selector = match doc["kind"].as_str() {
                Some("Deployment" | "PodDisruptionBudget") => {
                    &doc["spec"]["selector"]["matchLabels"]
                }
                Some("Service") => &doc["spec"]["selector"],
                _ => continue,
            };
            let selector = selector.as_object().unwrap();
            assert!(
                !selector.is_empty(),
                "{overlay}: {} selects everything",
                name(doc)
            );
            let matches = |labels: &&serde_json::Map<String, Value>| {
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            assert!(
                pod_labels.iter().any(matches),
                "{overlay}: {} selects no pod",
                name(doc)
            );
            if doc["kind"] == "Deployment" {
                let own = doc["spec"]["template"]["metadata"]["labels"]
                    .as_object()
                    .unwrap();
                assert!(
                    matches(&own),
                    "{overlay}: {} does not select its own template",
                    name(doc)
                );
            }
        }
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind}/{name_prefix}*"))
}

fn config(docs: &[Value]) -> &serde_json::Map<String, Value> {
    find(docs, "ConfigMap", "multir-config")["data"]
        .as_object()
        .unwrap()
}

fn conf<'a>(docs: &'a [Value], key: &str) -> &'a str {
    config(docs)[key].as_str().unwrap()
}

/// The `multir` and `multir-worker` binaries of this build.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --release --workspace`",
        p.display()
    );
    p
}

fn help(bin: &str, args: &[&str]) -> String {
    let (ok, text) = output(Command::new(binary(bin)).args(args).arg("--help"));
    assert!(ok, "{bin} {args:?} --help: {text}");
    text
}

#[test]
fn the_manifests_set_only_options_the_binaries_read() {
    let test = "the_manifests_set_only_options_the_binaries_read";
    let Some(all) = rendered(test) else {
        return;
    };
    let worker = help("multir-worker", &["run"]) + &help("multir-worker", &[]);
    let coordinator =
        help("multir", &["submit"]) + &help("multir", &["collect"]) + &help("multir", &[]);
    for (overlay, docs) in &all {
        // MULTIR_MANIFEST is substituted into submit's arguments by the
        // kubelet ($(MULTIR_MANIFEST)), not read by the binary.
        let keys = config(docs).keys().filter(|k| *k != "MULTIR_MANIFEST");
        for key in keys {
            let env = format!("[env: {key}");
            assert!(
                worker.contains(&env) || coordinator.contains(&env),
                "{overlay}: ConfigMap key {key} is read by neither binary"
            );
        }
        for doc in docs {
            let Some(pod) = pod_specs(doc) else { continue };
            for c in containers(pod) {
                let image = c["image"].as_str().unwrap();
                let text = if image.contains("multir-worker") {
                    &worker
                } else {
                    &coordinator
                };
                for e in c["env"].as_array().into_iter().flatten() {
                    let n = e["name"].as_str().unwrap();
                    assert!(
                        text.contains(&format!("[env: {n}")),
                        "{overlay}: {} sets {n}, which {image} does not read",
                        name(doc)
                    );
                }
            }
        }
    }
}

#[test]
fn the_gpu_overlay_wires_gpus_probes_drain_scaling_and_metrics() {
    let test = "the_gpu_overlay_wires_gpus_probes_drain_scaling_and_metrics";
    let Some(all) = rendered(test) else {
        return;
    };
    let docs = &all.iter().find(|(o, _)| *o == "gpu").unwrap().1;
    assert_eq!(conf(docs, "MULTIR_DEVICE"), "cuda");
    let port: u64 = conf(docs, "MULTIR_HTTP")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let grace: f64 = conf(docs, "MULTIR_GRACE").parse().unwrap();

    let dep = find(docs, "Deployment", "multir-worker");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    // The drain: SIGTERM, MULTIR_GRACE seconds to finish, then uploads.
    let termination = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        termination >= grace + 15.0,
        "{termination} s vs MULTIR_GRACE {grace} s"
    );
    // Probes on the port the worker serves.
    assert_eq!(c["ports"][0]["containerPort"], port);
    assert_eq!(c["ports"][0]["name"], "metrics");
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let annotations = &dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/scrape"], "true");

    let labels = dep["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let selects = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let pdb = find(docs, "PodDisruptionBudget", "multir-worker");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]), "{pdb}");
    let svc = find(docs, "Service", "multir-worker-metrics");
    assert!(selects(&svc["spec"]["selector"]), "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    let sm = find(docs, "ServiceMonitor", "multir-worker");
    let svc_labels = svc["metadata"]["labels"].as_object().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "ServiceMonitor selects the metrics Service"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");

    // KEDA: the run's job queue, ready + unacked, one replica per prefetch.
    let so = find(docs, "ScaledObject", "multir-worker");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        dep["metadata"]["name"]
    );
    assert_eq!(so["spec"]["minReplicaCount"], 0);
    assert!(so["spec"]["maxReplicaCount"].as_u64().unwrap() >= 1);
    let t = &so["spec"]["triggers"][0];
    assert_eq!(t["type"], "rabbitmq");
    assert_eq!(t["metadata"]["protocol"], "http");
    assert_eq!(t["metadata"]["mode"], "QueueLength");
    assert_eq!(t["metadata"]["value"], conf(docs, "MULTIR_PREFETCH"));
    let queue = format!(
        "{}.{}.jobs",
        conf(docs, "MULTIR_QUEUE_PREFIX"),
        conf(docs, "MULTIR_RUN")
    );
    assert_eq!(t["metadata"]["queueName"], queue);
    let auth = find(docs, "TriggerAuthentication", "multir-rabbitmq");
    assert_eq!(t["authenticationRef"]["name"], auth["metadata"]["name"]);
    assert_eq!(auth["spec"]["secretTargetRef"][0]["parameter"], "host");

    // The coordinator: submit (init container), then collect --wait.
    let job = find(docs, "Job", "multir-coordinator");
    let jp = &job["spec"]["template"]["spec"];
    assert_eq!(jp["initContainers"][0]["args"][0], "submit");
    let collect = jp["containers"][0]["args"].as_array().unwrap();
    assert_eq!(collect[0], "collect");
    assert!(collect.contains(&"--wait".into()));
}

#[test]
fn the_job_overlays_run_workers_that_exit_when_the_queue_is_empty() {
    let test = "the_job_overlays_run_workers_that_exit_when_the_queue_is_empty";
    let Some(all) = rendered(test) else {
        return;
    };
    for (overlay, docs) in all.iter().filter(|(o, _)| *o != "gpu") {
        let job = find(docs, "Job", "multir-worker");
        assert!(
            job["spec"]["parallelism"].as_u64().unwrap() >= 2,
            "{overlay}"
        );
        assert!(
            job["spec"]["completions"].is_null(),
            "{overlay}: work-queue Jobs set no completions"
        );
        let pod = &job["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        assert!(
            env.iter().any(|e| e["name"] == "MULTIR_EXIT_WHEN_IDLE"),
            "{overlay}: workers must exit when the queue stays empty"
        );
        let gpus = &pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"];
        match *overlay {
            "gpu-job" => assert_eq!(*gpus, 1, "{overlay}"),
            _ => {
                assert!(gpus.is_null(), "{overlay} needs no GPU");
                assert_eq!(conf(docs, "MULTIR_DEVICE"), "cpu");
            }
        }
        assert!(
            docs.iter()
                .all(|d| d["kind"] != "ScaledObject" && d["kind"] != "Deployment"),
            "{overlay}: no KEDA, no Deployment"
        );
    }
}

// --- docker compose -------------------------------------------------------------

#[test]
fn the_compose_file_is_valid_and_builds_this_dockerfiles_targets() {
    let test = "the_compose_file_is_valid_and_builds_this_dockerfiles_targets";
    let Some(py) = python(test) else { return };
    let compose = repo().join("docker/docker-compose.yml");
    let (ok, text) = output(
        Command::new(&py)
            .arg(repo().join("tests/support/manifests.py"))
            .arg("compose")
            .arg(&compose)
            .arg(repo().join("k8s/schemas/compose-spec.json")),
    );
    assert!(ok, "{text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["errors"], Value::Array(vec![]), "{report}");

    // The schema check is live.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("compose.yml");
    std::fs::write(
        &typo,
        read("docker/docker-compose.yml").replacen("    image: ", "    imagee: ", 1),
    )
    .unwrap();
    let (_, text) = output(
        Command::new(&py)
            .arg(repo().join("tests/support/manifests.py"))
            .arg("compose")
            .arg(&typo)
            .arg(repo().join("k8s/schemas/compose-spec.json")),
    );
    assert!(text.contains("imagee"), "{text}");

    // Every build target is a stage; every multir service is locked down.
    let doc = to_json(&py, &compose).remove(0);
    let stage_names: BTreeSet<String> = stages(&read("docker/Dockerfile"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let services = doc["services"].as_object().unwrap();
    for s in ["rabbitmq", "s3", "worker", "coordinator"] {
        assert!(services.contains_key(s), "no service {s}");
    }
    for (svc, spec) in services {
        if let Some(target) = spec["build"]["target"].as_str() {
            assert!(stage_names.contains(target), "{svc}: no stage {target}");
            assert_eq!(spec["build"]["dockerfile"], "docker/Dockerfile");
            assert_eq!(spec["read_only"], true, "{svc}");
            assert_eq!(spec["cap_drop"][0], "ALL", "{svc}");
        }
    }
    assert_eq!(services["worker"]["deploy"]["replicas"], 2);
    assert_eq!(services["worker"]["build"]["args"]["TORCH_VARIANT"], "cpu");

    // Docker's own check where the compose plugin is installed (it is not
    // on every machine; the schema above is the check everywhere).
    match Command::new("docker").args(["compose", "version"]).output() {
        Ok(o) if o.status.success() => {
            let (ok, text) = output(
                Command::new("docker")
                    .args(["compose", "-f"])
                    .arg(&compose)
                    .args(["config", "--quiet"]),
            );
            assert!(ok, "docker compose config: {text}");
        }
        _ => eprintln!(
            "{test}: no `docker compose` plugin here; checked against the Compose Specification schema only"
        ),
    }
}
