//! Helpers shared by the cross-crate tests.
//!
//! Fixtures live under `tests/fixtures/<topic>/`, next to the Python script
//! that made them with the field's reference tools (nibabel, scipy). Tests
//! that run Python at test time find the interpreter with [`python`]:
//! outside CI a missing interpreter skips the test with a printed reason,
//! under CI (`CI=true`) it is a failure, so a broken setup cannot pass
//! silently.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `tests/` package folder (the working directory of its tests).
pub fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<topic>`.
pub fn fixtures_dir(topic: &str) -> PathBuf {
    package_dir().join("fixtures").join(topic)
}

/// True when running under CI (`CI=true`), where missing tools are failures.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that a test cannot run here: under CI this panics (a missing
/// tool is a failure there); elsewhere it prints why and returns `None`,
/// for the caller to return early.
pub fn skip<T>(test: &str, why: &str) -> Option<T> {
    if under_ci() {
        panic!("{test}: {why} (CI=true, so a missing tool is a failure)");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// The reference Python interpreter (with numpy, scipy and nibabel) named
/// by `MULTIR_PYTHON`, which the cargo config written by `scripts/setup`
/// sets. `None` (after printing why) when it is unset or not executable;
/// panics instead under CI.
pub fn python(test: &str) -> Option<PathBuf> {
    let Some(raw) = std::env::var_os("MULTIR_PYTHON").filter(|v| !v.is_empty()) else {
        return skip(
            test,
            "MULTIR_PYTHON is not set (run scripts/setup, which writes it into .cargo/config.toml)",
        );
    };
    let path = PathBuf::from(raw);
    if !is_executable(&path) {
        return skip(
            test,
            &format!("MULTIR_PYTHON={} is not an executable file", path.display()),
        );
    }
    Some(path)
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Runs `python script args...` and returns (success, stdout + stderr).
pub fn run_python(python: &Path, script: &Path, args: &[&Path]) -> (bool, String) {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Parses a JSON file, panicking with the path on failure.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A JSON number as f64, panicking with `what` when it is not one.
pub fn num(v: &serde_json::Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {v}"))
}

/// A JSON array of numbers.
pub fn nums(v: &serde_json::Value, what: &str) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: expected an array, got {v}"))
        .iter()
        .map(|x| num(x, what))
        .collect()
}

/// A JSON array of three non-negative integers (dims, shapes).
pub fn dims3(v: &serde_json::Value, what: &str) -> [usize; 3] {
    let d = nums(v, what);
    assert_eq!(d.len(), 3, "{what}: expected 3 entries, got {v}");
    std::array::from_fn(|a| {
        assert!(d[a] >= 0.0 && d[a].fract() == 0.0, "{what}: {v}");
        d[a] as usize
    })
}

/// A JSON 4x4 matrix as a [`multir_common::volume::Affine`].
pub fn affine(v: &serde_json::Value, what: &str) -> multir_common::volume::Affine {
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a 4x4 array, got {v}"));
    assert_eq!(rows.len(), 4, "{what}: expected 4 rows");
    let mut m = [[0.0; 4]; 4];
    for (r, row) in rows.iter().enumerate() {
        let row = nums(row, what);
        assert_eq!(row.len(), 4, "{what}: expected 4 columns");
        m[r].copy_from_slice(&row);
    }
    multir_common::volume::Affine(m)
}

/// `|got - want| <= tol`, false when either is NaN.
fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want)
        .abs()
        .partial_cmp(&tol)
        .is_some_and(|o| o.is_le())
}

/// Collects mismatches so one run reports all of them, not just the first.
#[derive(Debug, Default)]
pub struct Mismatches {
    lines: Vec<String>,
}

impl Mismatches {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a mismatch.
    pub fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    /// Checks `|got - want| <= tol` (NaN never passes).
    pub fn abs(&mut self, what: &str, got: f64, want: f64, tol: f64) {
        if !within(got, want, tol) {
            self.push(format!("{what}: got {got}, want {want} (abs tol {tol:e})"));
        }
    }

    /// Checks `|got - want| <= tol * max(1, |want|)`: relative for large
    /// values, absolute near zero.
    pub fn rel(&mut self, what: &str, got: f64, want: f64, tol: f64) {
        if !within(got, want, tol * want.abs().max(1.0)) {
            self.push(format!("{what}: got {got}, want {want} (rel tol {tol:e})"));
        }
    }

    /// Checks two 4x4 affines entry by entry.
    pub fn affine(
        &mut self,
        what: &str,
        got: &multir_common::volume::Affine,
        want: &multir_common::volume::Affine,
        tol: f64,
    ) {
        for r in 0..4 {
            for c in 0..4 {
                self.abs(&format!("{what}[{r}][{c}]"), got.0[r][c], want.0[r][c], tol);
            }
        }
    }

    /// Checks equality of anything printable.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Number of mismatches so far.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing mismatched.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Panics listing every mismatch, if any (at most 200 lines).
    pub fn assert_none(&self, context: &str) {
        if !self.lines.is_empty() {
            let shown: Vec<&str> = self.lines.iter().take(200).map(String::as_str).collect();
            panic!(
                "{context}: {} mismatches\n{}",
                self.lines.len(),
                shown.join("\n")
            );
        }
    }
}

/// Where `scripts/fetch-real-ct` puts the real chest CTs (and their
/// `manifest.csv`): `$MULTIR_CACHE/real-ct`, by default
/// `~/.cache/multir/real-ct`.
pub fn real_ct_dir() -> PathBuf {
    let cache = std::env::var_os("MULTIR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("multir")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/multir")))
        .expect("HOME is set");
    cache.join("real-ct")
}

// ===========================================================================
// RabbitMQ (AMQP) test service. Kept in its own section, before the unit
// tests, so that other service helpers (S3) merge without conflicts.
// ===========================================================================

/// The test broker when `MULTIR_TEST_AMQP_URL` is unset: the local
/// RabbitMQ with its default account.
pub const DEFAULT_TEST_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The AMQP URL of the test broker (`MULTIR_TEST_AMQP_URL`, else
/// [`DEFAULT_TEST_AMQP_URL`]) when something accepts TCP connections at its
/// host and port; otherwise `None` after printing why (panics instead under
/// CI). Messages name the host and port only, never the URL's password.
pub fn amqp_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("MULTIR_TEST_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_AMQP_URL.to_string());
    let Some((host, port)) = amqp_host_port(&url) else {
        return skip(
            test,
            "MULTIR_TEST_AMQP_URL is not an amqp:// or amqps:// URL with a host",
        );
    };
    match tcp_probe(&host, port) {
        Ok(()) => Some(url),
        Err(why) => skip(
            test,
            &format!(
                "no AMQP broker at {host}:{port} ({why}); start RabbitMQ or set \
                 MULTIR_TEST_AMQP_URL"
            ),
        ),
    }
}

/// Host and port of an `amqp://` or `amqps://` URL (default ports 5672 and
/// 5671; IPv6 hosts in brackets).
pub fn amqp_host_port(url: &str) -> Option<(String, u16)> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("amqp://") {
        (r, 5672)
    } else if let Some(r) = url.strip_prefix("amqps://") {
        (r, 5671)
    } else {
        return None;
    };
    // The user information runs to the last '@' (a password may hold one).
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

/// Whether a TCP connection to `host:port` opens within 2 seconds.
fn tcp_probe(host: &str, port: u16) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod amqp_tests {
    use super::amqp_host_port;
    #[test]
    fn amqp_host_port_reads_urls() {
        let hp = |u: &str| amqp_host_port(u);
        assert_eq!(
            hp("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".into(), 5672))
        );
        assert_eq!(
            hp("amqps://u:p@ss@rabbit.example/%2f"),
            Some(("rabbit.example".into(), 5671))
        );
        assert_eq!(hp("amqp://h"), Some(("h".into(), 5672)));
        assert_eq!(hp("amqp://[::1]:5673/v"), Some(("::1".into(), 5673)));
        assert_eq!(hp("http://h:80"), None);
        assert_eq!(hp("amqp://u:p@:5672"), None);
        assert_eq!(hp("amqp://h:notaport"), None);
    }
}

// ===========================================================================
// End of the RabbitMQ section.
// ===========================================================================

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_catch_differences_and_nan() {
        let mut m = Mismatches::new();
        m.abs("a", 1.0, 1.00001, 1e-4);
        m.rel("b", 1000.05, 1000.0, 1e-4);
        assert!(m.is_empty());
        m.abs("c", 1.0, 1.1, 1e-4);
        m.rel("d", f64::NAN, 0.0, 1e-4);
        m.eq("e", [1, 2, 3], [1, 2, 4]);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn json_helpers_parse_shapes_and_affines() {
        let v: serde_json::Value = serde_json::json!({
            "dims": [2, 3, 4],
            "aff": [[1, 0, 0, 5], [0, 2, 0, 6], [0, 0, 3, 7], [0, 0, 0, 1]]
        });
        assert_eq!(dims3(&v["dims"], "dims"), [2, 3, 4]);
        let a = affine(&v["aff"], "aff");
        assert_eq!(a.spacing(), [1.0, 2.0, 3.0]);
        assert_eq!(a.origin(), [5.0, 6.0, 7.0]);
    }
}
