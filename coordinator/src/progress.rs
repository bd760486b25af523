//! Progress of a cohort run: a bar on a terminal, log lines elsewhere.
//!
//! On a terminal, stderr shows a bar (scans done and failed, scans/min,
//! ETA) and log lines are printed above it without tearing it
//! ([`LogWriter`]). When stderr is a file or a pipe (CI, `nohup`, a pod's
//! log) there is no bar and no escape code: one plain log line per scan.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use multir_common::results::Status;
use multir_common::runner::Event;

/// The bar being shown, if any, for [`LogWriter`].
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Tracks a run and shows it.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    failed: usize,
    skipped: usize,
    started: Instant,
}

/// "1h02m", "4m10s", "12s".
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

impl Progress {
    /// Starts tracking `total` scans.
    pub fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total as u64),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} scans  {msg}  [{elapsed} elapsed, ETA {eta}]",
                )
                .expect("valid template"),
            );
            *BAR.lock().expect("progress lock") = Some(bar.clone());
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            failed: 0,
            skipped: 0,
            started: Instant::now(),
        }
    }

    /// Scans per minute over the scans processed in this run.
    fn rate(&self) -> f64 {
        let processed = self.done - self.skipped;
        processed as f64 / self.started.elapsed().as_secs_f64().max(1e-9) * 60.0
    }

    /// Takes one event of the runner.
    pub fn event(&mut self, event: Event<'_>) {
        self.done += 1;
        let line = match event {
            Event::Skipped(id) => {
                self.skipped += 1;
                format!("{id}: kept from an earlier run")
            }
            Event::Finished(row) => {
                let ok = row.status == Status::Ok;
                self.failed += (!ok) as usize;
                if let Some(e) = &row.error {
                    tracing::warn!("{e}");
                }
                let dice = row.dice.map_or(String::new(), |d| format!(", Dice {d:.3}"));
                format!(
                    "{}: {}, {}{dice}, {:.1} s",
                    row.scan_id,
                    row.status.as_str(),
                    row.predicted_class.as_deref().unwrap_or("no prediction"),
                    row.seconds.total
                )
            }
        };
        let remaining = self.total - self.done;
        let rate = self.rate();
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{} failed, {rate:.1} scans/min", self.failed));
                bar.inc(1);
            }
            None => {
                let eta = if rate > 0.0 {
                    duration(Duration::from_secs_f64(remaining as f64 / rate * 60.0))
                } else {
                    "-".into()
                };
                tracing::info!(
                    "{}/{} {line}; {} failed, {rate:.1} scans/min, ETA {eta}",
                    self.done,
                    self.total,
                    self.failed
                );
            }
        }
    }

    /// Moves to `done` scans finished, `failed` of them with an error row
    /// or dead-lettered (for `collect --wait`, which learns progress from
    /// listings rather than one event per scan).
    pub fn set(&mut self, done: usize, failed: usize) {
        if done == self.done && failed == self.failed {
            return;
        }
        self.done = done.min(self.total);
        self.failed = failed;
        let rate = self.rate();
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{failed} failed, {rate:.1} scans/min"));
                bar.set_position(self.done as u64);
            }
            None => tracing::info!(
                "{}/{} scans finished; {failed} failed, {rate:.1} scans/min",
                self.done,
                self.total
            ),
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *BAR.lock().expect("progress lock") = None;
        }
        tracing::info!(
            "{} scans in {}: {} processed, {} failed, {} kept from an earlier run",
            self.done,
            duration(self.started.elapsed()),
            self.done - self.skipped,
            self.failed,
            self.skipped
        );
    }
}

/// A tracing writer to stderr that lifts the progress bar out of the way
/// of each log line.
pub struct LogWriter;

/// One log line, buffered until it is complete.
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(Vec::with_capacity(256))
    }
}
