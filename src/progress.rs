//! Progress of long command-line runs: per stage and table, rows done, rows per second and
//! elapsed time. The command line installs one sink for the process (bars on a terminal,
//! plain lines otherwise, JSON log lines for machines); the Function App and the tests install
//! none, and then reporting rows costs one atomic add.
//!
//! Stages do not pass a handle around: [`crate::stages::per_table`] opens a [`Tracker`] for
//! each table and makes it current for that table's task, and code deep in a stage calls
//! [`add`] for the rows it has durably handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live bars on stderr (a terminal).
    Bars,
    /// One line per finished table on stdout, and a line every [`HEARTBEAT`] for a table
    /// still running (logs, CI, pipes).
    Lines,
    /// `tunelake::progress` events in the JSON log on stderr.
    Json,
}

/// How often a running table prints a line in [`Mode::Lines`].
pub const HEARTBEAT: Duration = Duration::from_secs(10);

struct Sink {
    mode: Mode,
    bars: MultiProgress,
}

static SINK: OnceLock<Sink> = OnceLock::new();

tokio::task_local! {
    static CURRENT: Tracker;
}

/// Installs the process's progress sink; later calls are ignored.
pub fn install(mode: Mode) {
    let bars = MultiProgress::with_draw_target(match mode {
        Mode::Bars => ProgressDrawTarget::stderr_with_hz(8),
        Mode::Lines | Mode::Json => ProgressDrawTarget::hidden(),
    });
    let _ = SINK.set(Sink { mode, bars });
}

/// Runs `f` with the bars cleared, so that a log line or printed output does not tear them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match SINK.get() {
        Some(sink) if sink.mode == Mode::Bars => sink.bars.suspend(f),
        _ => f(),
    }
}

/// The progress of one table in one stage.
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    stage: &'static str,
    table: String,
    rows: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
    bar: Option<ProgressBar>,
}

impl Tracker {
    /// Starts tracking `table` in `stage`.
    pub fn start(stage: &'static str, table: &str) -> Self {
        let bar = SINK.get().filter(|s| s.mode == Mode::Bars).map(|sink| {
            let bar = sink.bars.add(ProgressBar::new_spinner());
            bar.set_style(running_style());
            bar.set_prefix(format!("{stage:<6} {table}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Tracker {
            inner: Arc::new(Inner {
                stage,
                table: table.to_string(),
                rows: AtomicU64::new(0),
                started: Instant::now(),
                last_line: Mutex::new(Instant::now()),
                bar,
            }),
        }
    }

    /// Counts `rows` more rows done.
    pub fn add(&self, rows: u64) {
        let done = self.inner.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let Some(sink) = SINK.get() else { return };
        match (&self.inner.bar, sink.mode) {
            (Some(bar), _) => {
                bar.set_position(done);
                let seconds = self.inner.started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "{} rows/s",
                    thousands(rate(done, seconds).round() as u64)
                ));
            }
            (None, Mode::Lines | Mode::Json) => {
                let Ok(mut last) = self.inner.last_line.lock() else {
                    return;
                };
                if last.elapsed() >= HEARTBEAT {
                    *last = Instant::now();
                    drop(last);
                    self.emit(sink.mode, done, "running");
                }
            }
            (None, Mode::Bars) => {}
        }
    }

    /// Rows counted so far.
    pub fn rows(&self) -> u64 {
        self.inner.rows.load(Ordering::Relaxed)
    }

    /// Ends the table with its status and final row count (which replaces what was counted:
    /// the stage's report is the authority).
    pub fn finish(&self, status: &str, rows: u64) {
        self.inner.rows.store(rows, Ordering::Relaxed);
        let Some(sink) = SINK.get() else { return };
        match &self.inner.bar {
            Some(bar) => {
                bar.set_style(done_style(status));
                bar.set_position(rows);
                let seconds = self.inner.started.elapsed().as_secs_f64();
                bar.finish_with_message(format!(
                    "{status}  {} rows/s",
                    thousands(rate(rows, seconds).round() as u64)
                ));
            }
            None => self.emit(sink.mode, rows, status),
        }
    }

    fn emit(&self, mode: Mode, rows: u64, status: &str) {
        let elapsed = self.inner.started.elapsed().as_secs_f64();
        let per_second = rate(rows, elapsed);
        let (stage, table) = (self.inner.stage, self.inner.table.as_str());
        match mode {
            Mode::Json => tracing::info!(
                target: "tunelake::progress",
                stage,
                table,
                rows,
                rows_per_second = per_second.round(),
                elapsed_s = (elapsed * 100.0).round() / 100.0,
                status,
                "progress"
            ),
            Mode::Lines | Mode::Bars => {
                use std::io::Write as _;
                let line = format!(
                    "{stage:<6} {table:<22} {status:<7} {:>12} rows {:>8.1} s {:>12} rows/s",
                    thousands(rows),
                    elapsed,
                    thousands(per_second.round() as u64),
                );
                // Progress is secondary to the work: a closed stdout must not fail the run.
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }
}

/// Counts rows for the table whose task this is (see [`scope`]); nothing outside one.
pub fn add(rows: u64) {
    let _ = CURRENT.try_with(|t| t.add(rows));
}

/// Runs `future` with `tracker` as the current table's progress.
pub async fn scope<F: std::future::Future>(tracker: Tracker, future: F) -> F::Output {
    CURRENT.scope(tracker, future).await
}

/// Rows per second, 0 for an instant.
fn rate(rows: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.cyan} {prefix:<29} {human_pos:>12} rows {elapsed:>5} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style(status: &str) -> ProgressStyle {
    let mark = match status {
        "failed" => "{msg:.red}",
        "empty" => "{msg:.dim}",
        _ => "{msg:.green}",
    };
    ProgressStyle::with_template(&format!(
        "  {{prefix:<29}} {{human_pos:>12}} rows {{elapsed:>5}} {mark}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A stage's per-table result, as progress shows it when the table ends.
pub trait Outcome {
    /// `ok`, `empty` or `failed`.
    fn status(&self) -> &'static str;
    /// The rows the table wrote.
    fn rows(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[tokio::test]
    async fn rows_reach_the_tracker_of_the_current_task_only() {
        let tracker = Tracker::start("ingest", "users");
        add(5); // outside any table: ignored
        scope(tracker.clone(), async {
            add(3);
            add(4);
        })
        .await;
        assert_eq!(tracker.rows(), 7);
        tracker.finish("ok", 9);
        assert_eq!(tracker.rows(), 9);
    }
}
