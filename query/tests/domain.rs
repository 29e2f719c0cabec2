//! The domain metrics as Prometheus scrapes them, over tables of a simulated
//! ICB: every family has series, the values are the gold tables' for the
//! newest complete week, the text passes `promtool check metrics`, the
//! practice bound holds, and a commit changes what is served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pathflow_query::domain::{DEFAULT_MAX_PRACTICES, DomainMetrics, WATCHED_TABLES};
use pathflow_query::testing::{self, engine, rows};
use pathflow_query::{Engine, Interface, Principal};

/// One set of tables for the tests that only read: 16,000 people over 6
/// weeks, with seed 3 two practices (seed 7 makes one).
fn shared_tables() -> &'static Path {
    static TABLES: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TABLES
        .get_or_init(|| {
            std::thread::spawn(|| {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    let dir = tempfile::tempdir().unwrap();
                    let events = testing::simulated_events(dir.path(), 16_000, 6, 3);
                    let location = dir.path().join("tables");
                    testing::write_tables(&location, &events).await;
                    (dir, location)
                })
            })
            .join()
            .unwrap()
        })
        .1
}

/// Every family the domain metrics define, by treatment function, by
/// practice, and about the week.
const FAMILIES: [&str; 10] = [
    "rtt_waiting_list_pathways",
    "rtt_wait_median_seconds",
    "rtt_wait_p92_seconds",
    "rtt_within_18w_ratio",
    "rtt_over_52w_pathways",
    "outpatient_dna_ratio",
    "followups_overdue",
    "advice_response_mean_seconds",
    "advice_conversion_ratio",
    "referrals_received",
];

fn all_families() -> Vec<String> {
    FAMILIES
        .iter()
        .flat_map(|f| [format!("pathflow_{f}"), format!("pathflow_practice_{f}")])
        // Outpatient capacity and follow-ups are the provider's: no practice.
        .filter(|f| {
            f != "pathflow_practice_outpatient_dna_ratio"
                && f != "pathflow_practice_followups_overdue"
        })
        .chain(
            [
                "pathflow_gp_dna_ratio",
                "pathflow_domain_week_start_timestamp_seconds",
                "pathflow_domain_practices",
            ]
            .map(String::from),
        )
        .collect()
}

type Labels = BTreeMap<String, String>;

/// The series of `name` in exposition text: labels and value.
fn series(text: &str, name: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (key, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Some((labels, value.parse().unwrap()))
        })
        .collect()
}

/// The value of `name` with exactly `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    series(text, name)
        .into_iter()
        .find(|(l, _)| *l == want)
        .map(|(_, v)| v)
}

async fn sql(e: &Engine, sql: &str) -> Vec<String> {
    let out = e
        .run(&Principal::internal(), sql, Interface::Internal)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    rows(&out)
}

/// One number, or `None` for a null.
async fn number(e: &Engine, query: &str) -> Option<f64> {
    let got = sql(e, query).await;
    assert_eq!(got.len(), 1, "{query}: {got:?}");
    (!got[0].is_empty()).then(|| got[0].parse().unwrap())
}

fn close(served: Option<f64>, expected: Option<f64>, what: &str) {
    match (served, expected) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: served {a}, the gold table says {b}"
        ),
        (a, b) => assert_eq!(a, b, "{what}"),
    }
}

/// The Monday the gauges describe, from the week gauge.
fn week_of(text: &str) -> chrono::NaiveDate {
    let start = value(text, "pathflow_domain_week_start_timestamp_seconds", &[]).unwrap();
    chrono::DateTime::from_timestamp(start as i64, 0)
        .unwrap()
        .date_naive()
}

/// An engine over `location` with the domain metrics registered and
/// refreshed once.
async fn refreshed(
    location: &Path,
    max_practices: usize,
) -> (
    std::sync::Arc<Engine>,
    DomainMetrics,
    tokio::task::JoinHandle<()>,
) {
    let (e, reloader) = engine(location, vec![], |_| {}).await;
    let domain = DomainMetrics::register(e.metrics().registry(), max_practices).unwrap();
    assert!(domain.refresh(&e).await.unwrap(), "the first refresh reads");
    (e, domain, reloader)
}

#[tokio::test]
async fn every_family_has_series_and_promtool_finds_nothing_to_say() {
    let (e, _domain, _reloader) = refreshed(shared_tables(), DEFAULT_MAX_PRACTICES).await;
    let text = e.metrics().render();
    for family in all_families() {
        assert!(
            !series(&text, &family).is_empty(),
            "{family} has no series:\n{text}"
        );
    }
    let practices = series(&text, "pathflow_practice_rtt_waiting_list_pathways");
    let distinct: std::collections::BTreeSet<&str> = practices
        .iter()
        .map(|(l, _)| l["practice"].as_str())
        .collect();
    assert!(distinct.len() > 1, "several practices: {distinct:?}");
    for (labels, _) in series(&text, "pathflow_referrals_received") {
        assert!(
            ["routine", "urgent", "two_week_wait"].contains(&labels["priority"].as_str()),
            "{labels:?}"
        );
    }

    let (passed, said) = testing::promtool_check_metrics(&text);
    assert!(passed, "promtool: {said}");
    assert_eq!(said.trim(), "", "promtool lint");
}

#[tokio::test]
async fn the_values_are_the_gold_tables_for_the_newest_complete_week() {
    let (e, _domain, _reloader) = refreshed(shared_tables(), DEFAULT_MAX_PRACTICES).await;
    let text = e.metrics().render();
    let week = week_of(&text);

    // The week before the one the transform's as_of is in (still filling).
    let as_of = sql(&e, "SELECT CAST(max(as_of) AS VARCHAR) FROM referrals").await;
    let as_of: chrono::NaiveDate = as_of[0].parse().unwrap();
    assert_eq!(
        pathflow_schemas::Week::of(as_of).plus(-1).monday(),
        week,
        "as_of {as_of}"
    );

    // The treatment function with the longest waiting list that week.
    let at = format!("week = DATE '{week}'");
    let top = sql(
        &e,
        &format!(
            "SELECT treatment_function FROM waits_weekly WHERE {at} AND scope = 'specialty' \
             AND treatment_function IS NOT NULL ORDER BY waiting_list DESC, 1 LIMIT 1"
        ),
    )
    .await;
    let tf = top[0].as_str();
    let labels = [("treatment_function", tf)];
    let waits = |column: &str| {
        format!(
            "SELECT {column} FROM waits_weekly WHERE {at} AND scope = 'specialty' \
             AND treatment_function = '{tf}'"
        )
    };
    let week_s = 7.0 * 86_400.0;
    let checks = [
        (
            "pathflow_rtt_waiting_list_pathways",
            waits("waiting_list"),
            1.0,
        ),
        (
            "pathflow_rtt_wait_median_seconds",
            waits("median_wait_weeks"),
            week_s,
        ),
        (
            "pathflow_rtt_wait_p92_seconds",
            waits("p92_wait_weeks"),
            week_s,
        ),
        (
            "pathflow_rtt_within_18w_ratio",
            waits("pct_within_18_weeks"),
            0.01,
        ),
        (
            "pathflow_rtt_over_52w_pathways",
            waits("over_52_weeks"),
            1.0,
        ),
        (
            "pathflow_outpatient_dna_ratio",
            format!(
                "SELECT sum(did_not_attend) * 1.0 / (sum(attended) + sum(did_not_attend)) \
                 FROM capacity_weekly WHERE {at} AND setting = 'outpatient' \
                 AND treatment_function = '{tf}'"
            ),
            1.0,
        ),
        (
            "pathflow_followups_overdue",
            format!(
                "SELECT sum(overdue) FROM followups_weekly WHERE {at} \
                 AND treatment_function = '{tf}'"
            ),
            1.0,
        ),
        (
            "pathflow_advice_response_mean_seconds",
            format!(
                "SELECT sum(advice_response_days_total) * 1.0 / sum(advice_responded) \
                 FROM demand_weekly WHERE {at} AND treatment_function = '{tf}'"
            ),
            86_400.0,
        ),
        (
            "pathflow_advice_conversion_ratio",
            format!(
                "SELECT sum(advice_converted) * 1.0 / sum(advice_responded) \
                 FROM demand_weekly WHERE {at} AND treatment_function = '{tf}'"
            ),
            1.0,
        ),
    ];
    let mut compared = 0;
    for (name, query, scale) in checks {
        let expected = number(&e, &query).await.map(|v| v * scale);
        close(value(&text, name, &labels), expected, name);
        compared += expected.is_some() as usize;
    }
    assert!(compared >= 6, "most measures have a value for {tf}");

    let by_priority = sql(
        &e,
        &format!(
            "SELECT priority, sum(referrals_received) FROM demand_weekly WHERE {at} \
             AND treatment_function = '{tf}' AND priority IS NOT NULL GROUP BY 1"
        ),
    )
    .await;
    assert!(!by_priority.is_empty(), "{tf} has referrals in {week}");
    for row in &by_priority {
        let (priority, n) = row.split_once('|').unwrap();
        let served = value(
            &text,
            "pathflow_referrals_received",
            &[("treatment_function", tf), ("priority", priority)],
        );
        close(served, Some(n.parse().unwrap()), row);
    }
    // A priority without referrals this week reads 0, not "no data".
    for priority in ["routine", "urgent", "two_week_wait"] {
        if !by_priority
            .iter()
            .any(|r| r.starts_with(&format!("{priority}|")))
        {
            let served = value(
                &text,
                "pathflow_referrals_received",
                &[("treatment_function", tf), ("priority", priority)],
            );
            close(served, Some(0.0), priority);
        }
    }

    // One practice × treatment function, from its own grouping set.
    let pair = sql(
        &e,
        &format!(
            "SELECT practice, treatment_function, waiting_list FROM waits_weekly WHERE {at} \
             AND scope = 'practice_specialty' AND practice IS NOT NULL \
             AND treatment_function IS NOT NULL ORDER BY waiting_list DESC, 1, 2 LIMIT 1"
        ),
    )
    .await;
    let parts: Vec<&str> = pair[0].split('|').collect();
    let served = value(
        &text,
        "pathflow_practice_rtt_waiting_list_pathways",
        &[("practice", parts[0]), ("treatment_function", parts[1])],
    );
    close(served, Some(parts[2].parse().unwrap()), &pair[0]);
    let practice = parts[0];
    let gp = number(
        &e,
        &format!(
            "SELECT sum(did_not_attend) * 1.0 / (sum(attended) + sum(did_not_attend)) \
             FROM capacity_weekly WHERE {at} AND setting = 'gp' AND practice = '{practice}'"
        ),
    )
    .await;
    close(
        value(&text, "pathflow_gp_dna_ratio", &[("practice", practice)]),
        gp,
        "GP DNA rate",
    );
}

#[tokio::test]
async fn by_practice_series_are_left_out_beyond_the_bound() {
    let (e, _domain, _reloader) = refreshed(shared_tables(), 1).await;
    let text = e.metrics().render();
    let practices = value(&text, "pathflow_domain_practices", &[]).unwrap();
    assert!(practices > 1.0, "{practices} practices");
    for family in all_families() {
        let n = series(&text, &family).len();
        if family.starts_with("pathflow_practice_") || family == "pathflow_gp_dna_ratio" {
            assert_eq!(n, 0, "{family} is by practice");
        } else {
            assert!(n > 0, "{family} is not by practice");
        }
    }
}

#[tokio::test]
async fn a_commit_changes_the_values_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let events = testing::simulated_events(dir.path(), 2_000, 4, 3);
    let location = dir.path().join("tables");
    let (first, second) = events.split_at(events.len() / 2);
    testing::write_tables(&location, first).await;
    let (e, domain, _reloader) = refreshed(&location, DEFAULT_MAX_PRACTICES).await;
    let before = e.metrics().render();
    assert!(!domain.refresh(&e).await.unwrap(), "no commit, no refresh");

    let versions = |e: &Engine| -> Vec<u64> {
        WATCHED_TABLES
            .iter()
            .map(|t| e.tables().get(t).unwrap().version)
            .collect()
    };
    let old = versions(&e);
    testing::write_tables(&location, second).await;
    let committed = Instant::now();
    while versions(&e).iter().zip(&old).any(|(new, old)| new <= old) {
        assert!(
            committed.elapsed() < Duration::from_secs(10),
            "the reloader has not seen the commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(domain.refresh(&e).await.unwrap(), "a commit refreshes");
    let after = e.metrics().render();
    assert!(week_of(&after) > week_of(&before), "the week moves on");
    let domain_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("pathflow_query"))
            .map(String::from)
            .collect()
    };
    assert_ne!(domain_lines(&before), domain_lines(&after));
    let waiting = |text: &str| series(text, "pathflow_rtt_waiting_list_pathways");
    assert!(!waiting(&after).is_empty());
    assert_ne!(waiting(&before), waiting(&after), "the waiting list moved");
}
