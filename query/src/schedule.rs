//! When extracts run: cron schedules read in a time zone ([`Schedule`]),
//! and the [`Scheduler`] that runs each extract of the config once per
//! slot, inside `pathflow serve`. The extract itself is
//! [`crate::extract::run`].
//!
//! # Once per slot
//!
//! A *slot* is an instant the schedule names. Per extract, a state file
//! (`<state_dir>/<name>.state.json`) holds the last slot taken. At each
//! tick the scheduler takes the latest slot at or before now that is after
//! the last one taken:
//!
//! - it first *claims* the slot by creating `<state_dir>/<name>.claims/<slot>`
//!   with create-new semantics: of any number of schedulers (a restart, two
//!   replicas sharing a directory) exactly one succeeds, and the others skip
//!   the slot. So a slot's file is never produced twice by the scheduler,
//!   even across restarts;
//! - slots missed while nothing ran (downtime) are caught up *once*: only
//!   the latest missed slot runs, on the first tick after start-up;
//! - an extract the scheduler has never seen (no state file) starts from
//!   now: its first run is its next slot.
//!
//! A run that fails (or a process that dies mid-run) has still used its
//! slot: the failure is logged and counted, and `pathflow extract run NAME`
//! produces the file by hand. That is the price of never running twice.
//!
//! # Time zones
//! Fields are matched against local time in the extract's zone (Europe/London
//! by default). A local time that occurs twice when the clocks go back runs
//! at its first occurrence only; one that does not occur when they go
//! forward (01:00–01:59 in London) is skipped that day.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::extract::{self, ExtractConfig, Slot};

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    seconds: BTreeSet<u32>,
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days: BTreeSet<u32>,
    months: BTreeSet<u32>,
    weekdays: BTreeSet<u32>,
    /// Day-of-month and day-of-week both restricted: cron matches either.
    either_day: bool,
    zone: Tz,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// How far ahead a schedule is searched (covers 29 February).
const HORIZON_DAYS: i64 = 366 * 8;

impl Schedule {
    /// `sec min hour dom month dow` or `min hour dom month dow`; each field
    /// `*`, `N`, `A-B`, `*/S`, `A-B/S`, `N/S` or a comma list of those;
    /// months and weekdays also by name (`JAN`, `MON`); weekday 0 or 7 is
    /// Sunday.
    pub fn parse(expr: &str, zone: &str) -> Result<Self, String> {
        let zone: Tz = zone.parse().map_err(|_| {
            format!("time_zone {zone:?} is not an IANA zone name (e.g. \"Europe/London\")")
        })?;
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            6 => fields,
            5 => std::iter::once("0").chain(fields).collect(),
            n => {
                return Err(format!(
                    "schedule {expr:?} has {n} fields; use `sec min hour day-of-month month \
                     day-of-week` or the five without seconds, e.g. \"0 7 * * MON\""
                ));
            }
        };
        let field = |i: usize, what: &str, lo: u32, hi: u32, names: &[&str], base: u32| {
            parse_field(fields[i], lo, hi, names, base)
                .map_err(|e| format!("schedule {expr:?}: the {what} field {:?}: {e}", fields[i]))
        };
        let mut weekdays = field(5, "day-of-week", 0, 7, &WEEKDAYS, 0)?;
        if weekdays.remove(&7) {
            weekdays.insert(0);
        }
        let restricted = |f: &str| !(f == "*" || f == "?");
        Ok(Schedule {
            seconds: field(0, "second", 0, 59, &[], 0)?,
            minutes: field(1, "minute", 0, 59, &[], 0)?,
            hours: field(2, "hour", 0, 23, &[], 0)?,
            days: field(3, "day-of-month", 1, 31, &[], 1)?,
            months: field(4, "month", 1, 12, &MONTHS, 1)?,
            weekdays,
            either_day: restricted(fields[3]) && restricted(fields[5]),
            zone,
        })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    fn day_matches(&self, local: &DateTime<Tz>) -> bool {
        if !self.months.contains(&local.month()) {
            return false;
        }
        let dom = self.days.contains(&local.day());
        let dow = self
            .weekdays
            .contains(&local.weekday().num_days_from_sunday());
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut at = t.with_nanosecond(0)? + chrono::Duration::seconds(1);
        let end = t + chrono::Duration::days(HORIZON_DAYS);
        while at < end {
            let local = at.with_timezone(&self.zone);
            if !self.day_matches(&local) {
                // Next local midnight (or the first instant after it).
                let date = local.date_naive().succ_opt()?;
                let midnight = date.and_time(NaiveTime::MIN);
                at = match self.zone.from_local_datetime(&midnight).earliest() {
                    Some(m) => m.with_timezone(&Utc),
                    None => at + chrono::Duration::hours(1),
                };
                continue;
            }
            if !self.hours.contains(&local.hour()) {
                let left = 3600 - (local.minute() * 60 + local.second());
                at += chrono::Duration::seconds(left as i64);
                continue;
            }
            if !self.minutes.contains(&local.minute()) {
                at += chrono::Duration::seconds(60 - local.second() as i64);
                continue;
            }
            if !self.seconds.contains(&local.second()) {
                at += chrono::Duration::seconds(1);
                continue;
            }
            // The second pass through a repeated hour is not a new slot.
            let first = self
                .zone
                .from_local_datetime(&local.naive_local())
                .earliest()
                .map(|d| d.with_timezone(&Utc));
            if first == Some(at) {
                return Some(at);
            }
            at += chrono::Duration::seconds(1);
        }
        None
    }

    /// The latest slot in `(after, now]`, if any.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut latest = None;
        let mut at = after;
        while let Some(next) = self.next_after(at) {
            if next > now {
                break;
            }
            latest = Some(next);
            at = next;
        }
        latest
    }
}

fn parse_field(
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    base: u32,
) -> Result<BTreeSet<u32>, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + base);
        }
        let v: u32 = s.parse().map_err(|_| {
            format!(
                "{s:?} is not a number{}",
                if names.is_empty() { "" } else { " or a name" }
            )
        })?;
        if v < lo || v > hi {
            return Err(format!("{v} is outside {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut out = BTreeSet::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (from, to) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { hi } else { v })
        };
        if from > to {
            return Err(format!("range {from}-{to} runs backwards"));
        }
        out.extend((from..=to).step_by(step as usize));
    }
    Ok(out)
}

/// The scheduler's record for one extract.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtractState {
    /// The last slot taken (run, or claimed by another scheduler).
    pub last_slot: DateTime<Utc>,
}

fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state.json"))
}

/// The state of `name` in `dir`, if the scheduler has seen it.
pub fn read_state(dir: &Path, name: &str) -> Result<Option<ExtractState>, String> {
    let path = state_path(dir, name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{}: {e} (delete it to start the extract afresh)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_state(dir: &Path, name: &str, state: &ExtractState) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = state_path(dir, name);
    let temporary = dir.join(format!(".{name}.state.json.{}", std::process::id()));
    let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    std::fs::write(&temporary, bytes)
        .and_then(|_| std::fs::rename(&temporary, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Creates the claim for `slot`; false if it already exists.
fn claim(dir: &Path, name: &str, slot: Slot) -> Result<bool, String> {
    let claims = dir.join(format!("{name}.claims"));
    std::fs::create_dir_all(&claims)
        .map_err(|e| format!("cannot create {}: {e}", claims.display()))?;
    let path = claims.join(slot.stamp());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            let _ = writeln!(
                f,
                "pid {} at {}",
                std::process::id(),
                Utc::now().to_rfc3339()
            );
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("cannot claim {}: {e}", path.display())),
    }
}

/// The extracts' Prometheus metrics, by extract.
#[derive(Debug, Clone)]
pub struct ExtractMetrics {
    /// Unix time of the last success.
    pub last_success: GaugeVec,
    /// Seconds the last run took (success or failure).
    pub duration: GaugeVec,
    /// Rows in the last file delivered.
    pub rows: IntGaugeVec,
    /// Runs by outcome (`ok`, or the failing stage).
    pub runs: IntCounterVec,
    /// Failed runs, by stage (`query`, `disclosure`, `encode`, `deliver`, `state`).
    pub failures: IntCounterVec,
}

impl ExtractMetrics {
    /// Registers the metrics on `registry` (the server's, so `/metrics` serves them).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let last_success = GaugeVec::new(
            Opts::new(
                "pathflow_extract_last_success_timestamp_seconds",
                "Unix time each extract last delivered a file",
            ),
            &["extract"],
        )?;
        let duration = GaugeVec::new(
            Opts::new(
                "pathflow_extract_duration_seconds",
                "Seconds each extract's last run took",
            ),
            &["extract"],
        )?;
        let rows = IntGaugeVec::new(
            Opts::new("pathflow_extract_rows", "Rows in each extract's last file"),
            &["extract"],
        )?;
        let runs = IntCounterVec::new(
            Opts::new("pathflow_extract_runs_total", "Extract runs, by outcome"),
            &["extract", "outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "pathflow_extract_failures_total",
                "Failed extract runs, by the stage that failed",
            ),
            &["extract", "stage"],
        )?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(ExtractMetrics {
            last_success,
            duration,
            rows,
            runs,
            failures,
        })
    }
}

/// What one extract did at one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file for the slot was delivered.
    Delivered {
        slot: DateTime<Utc>,
        file: String,
        rows: usize,
    },
    /// The slot was claimed by an earlier or another scheduler.
    AlreadyTaken { slot: DateTime<Utc> },
    /// The slot's run failed, at `stage`, for `reason`.
    Failed {
        slot: Option<DateTime<Utc>>,
        stage: &'static str,
        reason: String,
    },
}

/// Where log lines go (standard error by default; tests capture them).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs the config's extracts on their schedules.
pub struct Scheduler {
    engine: Arc<Engine>,
    extracts: Vec<ExtractConfig>,
    metrics: ExtractMetrics,
    log: Log,
}

impl Scheduler {
    /// A scheduler for `extracts` (validated by the config), reporting to
    /// `metrics` (registered on the server's registry, see
    /// [`crate::metrics::QueryMetrics::registry`]) and `log`.
    pub fn new(
        engine: Arc<Engine>,
        extracts: Vec<ExtractConfig>,
        metrics: ExtractMetrics,
        log: Log,
    ) -> Self {
        Scheduler {
            engine,
            extracts,
            metrics,
            log,
        }
    }

    pub fn metrics(&self) -> &ExtractMetrics {
        &self.metrics
    }

    /// Runs every extract that has a slot due at `now`, each on its own (one
    /// failing does not stop the others); one outcome per extract that had
    /// something to do.
    pub async fn tick(&self, now: DateTime<Utc>) -> Vec<(String, Outcome)> {
        let runs = self.extracts.iter().map(|ex| async move {
            let outcome = self.tick_one(ex, now).await;
            outcome.map(|o| (ex.name.clone(), o))
        });
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn tick_one(&self, ex: &ExtractConfig, now: DateTime<Utc>) -> Option<Outcome> {
        let started = Instant::now();
        let outcome = self.take_slot(ex, now).await;
        if let Some(outcome) = &outcome {
            self.record(ex, outcome, started.elapsed());
        }
        outcome
    }

    /// The slot due for `ex` at `now`, claimed and run; None if none is due.
    async fn take_slot(&self, ex: &ExtractConfig, now: DateTime<Utc>) -> Option<Outcome> {
        let fail = |slot, stage, reason: String| {
            Some(Outcome::Failed {
                slot,
                stage,
                reason,
            })
        };
        let (dir, schedule) = match (ex.state_dir(), ex.schedule()) {
            (Ok(d), Ok(s)) => (d, s),
            (Err(e), _) | (_, Err(e)) => return fail(None, "config", e),
        };
        let state = match read_state(&dir, &ex.name) {
            Ok(s) => s,
            Err(e) => return fail(None, "state", e),
        };
        let Some(state) = state else {
            // First sight: start from now.
            return match write_state(&dir, &ex.name, &ExtractState { last_slot: now }) {
                Ok(()) => None,
                Err(e) => fail(None, "state", e),
            };
        };
        let slot = schedule.latest_between(state.last_slot, now)?;
        let claimed = claim(&dir, &ex.name, Slot::Scheduled(slot));
        // Recorded whatever the claim says: a slot claimed elsewhere is taken too.
        let recorded = write_state(&dir, &ex.name, &ExtractState { last_slot: slot });
        match claimed {
            Err(e) => return fail(Some(slot), "state", e),
            Ok(false) => return Some(Outcome::AlreadyTaken { slot }),
            Ok(true) => {}
        }
        if let Err(e) = recorded {
            return fail(Some(slot), "state", e);
        }
        match extract::run(&self.engine, ex, Slot::Scheduled(slot)).await {
            Ok(d) => Some(Outcome::Delivered {
                slot,
                rows: d.manifest.rows,
                file: d.file,
            }),
            Err(e) => fail(Some(slot), e.stage(), e.to_string()),
        }
    }

    /// The metrics and the log line of one outcome, together.
    fn record(&self, ex: &ExtractConfig, outcome: &Outcome, took: Duration) {
        let name = ex.name.as_str();
        let slot_text = |s: &Option<DateTime<Utc>>| {
            s.map(|s| s.to_rfc3339())
                .unwrap_or_else(|| "(no slot)".into())
        };
        match outcome {
            Outcome::Delivered { slot, file, rows } => {
                self.metrics
                    .duration
                    .with_label_values(&[name])
                    .set(took.as_secs_f64());
                self.metrics
                    .last_success
                    .with_label_values(&[name])
                    .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                self.metrics.runs.with_label_values(&[name, "ok"]).inc();
                self.metrics
                    .rows
                    .with_label_values(&[name])
                    .set(*rows as i64);
                (self.log)(&format!(
                    "extract {name}: slot {}: delivered {file} ({rows} rows) to {} in {:.2}s",
                    slot.to_rfc3339(),
                    ex.destination,
                    took.as_secs_f64()
                ));
            }
            Outcome::AlreadyTaken { slot } => {
                (self.log)(&format!(
                    "extract {name}: slot {}: already taken by an earlier run; not running it again \
                     (`pathflow extract run {name}` makes it by hand)",
                    slot.to_rfc3339()
                ));
            }
            Outcome::Failed {
                slot,
                stage,
                reason,
            } => {
                self.metrics
                    .duration
                    .with_label_values(&[name])
                    .set(took.as_secs_f64());
                self.metrics.runs.with_label_values(&[name, stage]).inc();
                self.metrics
                    .failures
                    .with_label_values(&[name, stage])
                    .inc();
                (self.log)(&format!(
                    "extract {name}: slot {}: failed ({stage}): {reason}",
                    slot_text(slot)
                ));
            }
        }
    }

    /// The first slot after `now` of any extract.
    fn next_wake(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.extracts
            .iter()
            .filter_map(|ex| ex.schedule().ok()?.next_after(now))
            .min()
    }

    /// Ticks at each slot until dropped (abort the task to stop it).
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let now = Utc::now();
                self.tick(now).await;
                // Wake at the next slot; at least every minute, so a clock
                // that jumps is noticed soon.
                let wait = self
                    .next_wake(Utc::now())
                    .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                    .unwrap_or(Duration::from_secs(60))
                    .min(Duration::from_secs(60));
                tokio::time::sleep(wait + Duration::from_millis(5)).await;
            }
        })
    }
}

/// One line per extract for `pathflow extract list`: name, schedule, zone,
/// format, destination and the next run in local time.
pub fn list(extracts: &[ExtractConfig], now: DateTime<Utc>) -> Vec<String> {
    extracts
        .iter()
        .map(|ex| {
            let next = match ex.schedule() {
                Ok(s) => s
                    .next_after(now)
                    .map(|t| t.with_timezone(&s.zone()).to_rfc3339())
                    .unwrap_or_else(|| "never".into()),
                Err(e) => format!("(bad schedule: {e})"),
            };
            let last = ex
                .state_dir()
                .ok()
                .and_then(|d| read_state(&d, &ex.name).ok().flatten())
                .map(|s| s.last_slot.to_rfc3339())
                .unwrap_or_else(|| "none".into());
            format!(
                "{}\t{} ({})\t{}\t{}\tnext {}\tlast slot {}",
                ex.name,
                ex.schedule,
                ex.time_zone,
                ex.format.extension(),
                ex.destination,
                next,
                last
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn mondays_at_seven_in_london_follow_the_clocks() {
        let s = Schedule::parse("0 7 * * MON", "Europe/London").unwrap();
        // Winter: GMT.
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-05T07:00:00Z"))
        );
        // Summer: BST, so 06:00 UTC.
        assert_eq!(
            s.next_after(at("2026-06-02T00:00:00Z")),
            Some(at("2026-06-08T06:00:00Z"))
        );
    }

    #[test]
    fn seconds_steps_ranges_and_lists_parse() {
        let s = Schedule::parse("*/20 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:20Z"))
        );
        let s = Schedule::parse("0 30 9-17/4 1,15 * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T13:30:00Z")),
            Some(at("2026-01-01T17:30:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-01-01T17:30:00Z")),
            Some(at("2026-01-15T09:30:00Z"))
        );
        let e = Schedule::parse("* * *", "UTC").unwrap_err();
        assert!(e.contains("3 fields"), "{e}");
        let e = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("IANA"), "{e}");
    }

    #[test]
    fn a_repeated_hour_runs_once_and_a_skipped_hour_not_at_all() {
        let s = Schedule::parse("0 30 1 * * *", "Europe/London").unwrap();
        // 25 October 2026: 01:30 BST (00:30Z) then 01:30 GMT (01:30Z).
        assert_eq!(
            s.next_after(at("2026-10-25T00:00:00Z")),
            Some(at("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-10-25T00:30:00Z")),
            Some(at("2026-10-26T01:30:00Z"))
        );
        // 29 March 2026: 01:00 to 02:00 GMT does not happen.
        assert_eq!(
            s.next_after(at("2026-03-28T02:00:00Z")),
            Some(at("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn the_latest_missed_slot_is_the_one_caught_up() {
        let s = Schedule::parse("0 * * * * *", "Europe/London").unwrap();
        let got = s.latest_between(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:03:10Z"));
        assert_eq!(got, Some(at("2026-01-01T10:03:00Z")));
        assert_eq!(
            s.latest_between(at("2026-01-01T10:03:00Z"), at("2026-01-01T10:03:59Z")),
            None
        );
    }
}
