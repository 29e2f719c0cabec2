//! Domain metrics for Grafana: gauges of the newest complete week, read
//! from the gold tables and replaced whole each time the transform commits.
//!
//! [`DomainMetrics`] registers its gauges on the [`QueryMetrics`] registry,
//! so they are served at `/metrics` beside the server's own; [`serve`]
//! spawns [`DomainMetrics::spawn`], which refreshes whenever a watched
//! table's version moves. Refreshes run SQL through the [`Engine`]'s session
//! as [`Principal::internal`], without [`Engine::run`]: they are the
//! server's own reads, not queries to audit.
//!
//! **The week.** Every gauge describes one ISO week: the one before the
//! week of the transform's `as_of` (the newest event date it has seen, from
//! the `referrals` table), because that week is still filling.
//! `pathflow_domain_week_start_timestamp_seconds` says which.
//!
//! **Levels.** Each measure has a family by treatment function
//! (`pathflow_<measure>{treatment_function}`) and one by practice and
//! treatment function (`pathflow_practice_<measure>{practice,
//! treatment_function}`), from the matching grouping sets; never sum one
//! into the other (medians and ratios do not add). The GP DNA rate is by
//! practice only; the outpatient DNA rate and overdue follow-ups by
//! treatment function only (outpatient capacity and follow-ups are the
//! provider's, and name no practice). By-practice series exist only while the week has at most
//! `max_practices` distinct practices ([`DEFAULT_MAX_PRACTICES`]); beyond
//! that they are left out (and logged once), so an ICB-sized deployment
//! cannot flood Prometheus. `pathflow_domain_practices` is always set.
//!
//! **Units.** Waits and response times are in seconds (Grafana shows them
//! as weeks or days); rates are ratios from 0 to 1, named `_ratio`.
//!
//! [`QueryMetrics`]: crate::metrics::QueryMetrics
//! [`serve`]: crate::serve

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use pathflow_schemas::Week;
use pathflow_schemas::codes::Priority;
use prometheus::{Gauge, GaugeVec, IntGauge, Opts, Registry};

use crate::auth::Principal;
use crate::engine::{Engine, QuerySession};
use crate::error::QueryError;

/// By-practice series are served only while the week has at most this many
/// distinct practices: 100 practices × ~20 treatment functions × 3
/// priorities stays in the low thousands of series per family.
pub const DEFAULT_MAX_PRACTICES: usize = 100;

/// The tables a refresh reads; a new version of any of them refreshes.
pub const WATCHED_TABLES: [&str; 5] = [
    "referrals",
    "demand_weekly",
    "capacity_weekly",
    "waits_weekly",
    "followups_weekly",
];

const WEEK_SECONDS: f64 = 7.0 * 86_400.0;
const DAY_SECONDS: f64 = 86_400.0;

/// The measures of one level (by treatment function, or by practice and
/// treatment function), one gauge family each.
#[derive(Debug, Clone)]
struct Families {
    waiting_list: GaugeVec,
    wait_median: GaugeVec,
    wait_p92: GaugeVec,
    within_18_weeks: GaugeVec,
    over_52_weeks: GaugeVec,
    /// This and `followups_overdue` only by treatment function: outpatient
    /// capacity and follow-ups are the provider's and name no practice.
    outpatient_dna: Option<GaugeVec>,
    followups_overdue: Option<GaugeVec>,
    advice_response: GaugeVec,
    advice_conversion: GaugeVec,
    referrals: GaugeVec,
}

fn gauge_vec(
    registry: &Registry,
    name: String,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Families {
    /// Registers the families named `<prefix><measure>`, labelled `labels`
    /// (and `priority` for referrals); `of` ends each help text. The
    /// provider-side measures (outpatient DNAs, overdue follow-ups) only
    /// `with_provider_side`.
    fn register(
        registry: &Registry,
        prefix: &str,
        labels: &[&str],
        of: &str,
        with_provider_side: bool,
    ) -> Result<Self, prometheus::Error> {
        let g = |measure: &str, help: &str, labels: &[&str]| {
            gauge_vec(
                registry,
                format!("{prefix}{measure}"),
                &format!("{help}, {of}"),
                labels,
            )
        };
        let with_priority: Vec<&str> = labels.iter().copied().chain(["priority"]).collect();
        Ok(Families {
            waiting_list: g(
                "rtt_waiting_list_pathways",
                "Pathways on the RTT waiting list at the end of the week",
                labels,
            )?,
            wait_median: g(
                "rtt_wait_median_seconds",
                "Median completed-weeks wait of the RTT waiting list at the week end, in seconds",
                labels,
            )?,
            wait_p92: g(
                "rtt_wait_p92_seconds",
                "92nd percentile completed-weeks wait of the RTT waiting list at the week end, \
                 in seconds",
                labels,
            )?,
            within_18_weeks: g(
                "rtt_within_18w_ratio",
                "Share (0 to 1) of the RTT waiting list waiting under 18 weeks at the week end",
                labels,
            )?,
            over_52_weeks: g(
                "rtt_over_52w_pathways",
                "Pathways on the RTT waiting list waiting 52 weeks or more at the week end",
                labels,
            )?,
            outpatient_dna: with_provider_side
                .then(|| {
                    g(
                        "outpatient_dna_ratio",
                        "Outpatient DNAs / (attendances + DNAs) of appointments in the week",
                        labels,
                    )
                })
                .transpose()?,
            followups_overdue: with_provider_side
                .then(|| {
                    g(
                        "followups_overdue",
                        "Outpatient follow-ups overdue at the end of the week",
                        labels,
                    )
                })
                .transpose()?,
            advice_response: g(
                "advice_response_mean_seconds",
                "Mean A&G response time (UK calendar days, as seconds) of requests first \
                 answered in the week",
                labels,
            )?,
            advice_conversion: g(
                "advice_conversion_ratio",
                "A&G requests answered in the week that became a referral, of those answered",
                labels,
            )?,
            referrals: g(
                "referrals_received",
                "Referrals received in the week, by priority",
                &with_priority,
            )?,
        })
    }

    fn all(&self) -> Vec<&GaugeVec> {
        [
            Some(&self.waiting_list),
            Some(&self.wait_median),
            Some(&self.wait_p92),
            Some(&self.within_18_weeks),
            Some(&self.over_52_weeks),
            self.outpatient_dna.as_ref(),
            self.followups_overdue.as_ref(),
            Some(&self.advice_response),
            Some(&self.advice_conversion),
            Some(&self.referrals),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The queries that fill this level for `week`: `dims` are the label
    /// columns (in label order), `filter` keeps the rows that have them.
    fn queries(&self, week: &str, dims: &str, filter: &str, waits_scope: &str) -> Vec<Query<'_>> {
        let at = format!("week = DATE '{week}' AND {filter}");
        let mut queries = vec![
            Query {
                sql: format!(
                    "SELECT {dims}, CAST(waiting_list AS DOUBLE), \
                     median_wait_weeks * {WEEK_SECONDS}, p92_wait_weeks * {WEEK_SECONDS}, \
                     pct_within_18_weeks / 100.0, CAST(over_52_weeks AS DOUBLE) \
                     FROM waits_weekly WHERE {at} AND scope = '{waits_scope}'"
                ),
                gauges: vec![
                    &self.waiting_list,
                    &self.wait_median,
                    &self.wait_p92,
                    &self.within_18_weeks,
                    &self.over_52_weeks,
                ],
            },
            Query {
                sql: format!(
                    "SELECT {dims}, \
                     CAST(sum(advice_response_days_total) AS DOUBLE) * {DAY_SECONDS} \
                     / CAST(nullif(sum(advice_responded), 0) AS DOUBLE), \
                     CAST(sum(advice_converted) AS DOUBLE) \
                     / CAST(nullif(sum(advice_responded), 0) AS DOUBLE) \
                     FROM demand_weekly WHERE {at} GROUP BY {dims}"
                ),
                gauges: vec![&self.advice_response, &self.advice_conversion],
            },
            // Every priority of every entity with a waiting list, 0 where
            // no referral came: "none this week" is a number, not a gap.
            Query {
                sql: format!(
                    "SELECT {dims}, priority, CAST(sum(n) AS DOUBLE) FROM (\
                       SELECT {dims}, priority, referrals_received AS n \
                       FROM demand_weekly WHERE {at} AND priority IS NOT NULL \
                       UNION ALL \
                       SELECT {dims}, each_priority, 0 FROM waits_weekly \
                       CROSS JOIN (VALUES {priorities}) AS p(each_priority) \
                       WHERE {at} AND scope = '{waits_scope}'\
                     ) GROUP BY {dims}, priority",
                    priorities = Priority::ALL
                        .iter()
                        .map(|p| format!("('{}')", p.wire_name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                gauges: vec![&self.referrals],
            },
        ];
        if let Some(dna) = &self.outpatient_dna {
            queries.push(Query {
                sql: format!(
                    "SELECT {dims}, CAST(sum(did_not_attend) AS DOUBLE) \
                     / CAST(nullif(sum(attended) + sum(did_not_attend), 0) AS DOUBLE) \
                     FROM capacity_weekly WHERE {at} AND setting = 'outpatient' GROUP BY {dims}"
                ),
                gauges: vec![dna],
            });
        }
        if let Some(overdue) = &self.followups_overdue {
            queries.push(Query {
                sql: format!(
                    "SELECT {dims}, CAST(sum(overdue) AS DOUBLE) \
                     FROM followups_weekly WHERE {at} GROUP BY {dims}"
                ),
                gauges: vec![overdue],
            });
        }
        queries
    }
}

/// One SQL statement whose leading text columns are the gauges' labels (in
/// order) and whose remaining columns are their values, one gauge each. A
/// null value sets no series.
struct Query<'a> {
    sql: String,
    gauges: Vec<&'a GaugeVec>,
}

/// The rows of one [`Query`]: label values, then one value per gauge.
type Rows = Vec<(Vec<String>, Vec<Option<f64>>)>;

/// A row as read: labels and values, any of them null.
type RawRow = (Vec<Option<String>>, Vec<Option<f64>>);

/// The domain gauges, and what the last refresh saw.
#[derive(Debug)]
pub struct DomainMetrics {
    by_treatment_function: Families,
    by_practice: Families,
    gp_dna: GaugeVec,
    week_start: Gauge,
    practices: IntGauge,
    max_practices: usize,
    /// The watched tables' versions at the last successful refresh.
    refreshed_at: tokio::sync::Mutex<Option<BTreeMap<&'static str, u64>>>,
    /// Whether "too many practices" has been logged since the count was
    /// last within the bound.
    over_bound_logged: AtomicBool,
}

impl DomainMetrics {
    /// Registers every gauge on `registry` (empty until the first refresh).
    /// By-practice series are kept while a week has at most `max_practices`
    /// practices ([`DEFAULT_MAX_PRACTICES`] is the server's choice).
    pub fn register(registry: &Registry, max_practices: usize) -> Result<Self, prometheus::Error> {
        let by_treatment_function = Families::register(
            registry,
            "pathflow_",
            &["treatment_function"],
            "by treatment function",
            true,
        )?;
        let by_practice = Families::register(
            registry,
            "pathflow_practice_",
            &["practice", "treatment_function"],
            "by practice and treatment function",
            false,
        )?;
        let gp_dna = gauge_vec(
            registry,
            "pathflow_gp_dna_ratio".into(),
            "GP DNAs / (attendances + DNAs) of appointments in the week, by practice",
            &["practice"],
        )?;
        let week_start = Gauge::new(
            "pathflow_domain_week_start_timestamp_seconds",
            "Start (Monday 00:00 UTC) of the ISO week the domain metrics describe",
        )?;
        registry.register(Box::new(week_start.clone()))?;
        let practices = IntGauge::new(
            "pathflow_domain_practices",
            "Distinct practices in the week the domain metrics describe (by-practice series \
             are served only up to a bound)",
        )?;
        registry.register(Box::new(practices.clone()))?;
        Ok(DomainMetrics {
            by_treatment_function,
            by_practice,
            gp_dna,
            week_start,
            practices,
            max_practices,
            refreshed_at: tokio::sync::Mutex::new(None),
            over_bound_logged: AtomicBool::new(false),
        })
    }

    /// Refreshes every gauge if a watched table has a new version since the
    /// last refresh; `Ok(false)` when nothing moved or a watched table does
    /// not exist yet. On error the gauges keep their last values and the
    /// next call tries again.
    pub async fn refresh(&self, engine: &Engine) -> Result<bool, QueryError> {
        let mut refreshed_at = self.refreshed_at.lock().await;
        let mut versions = BTreeMap::new();
        for name in WATCHED_TABLES {
            match engine.tables().get(name) {
                Some(s) => versions.insert(name, s.version),
                None => return Ok(false),
            };
        }
        if refreshed_at.as_ref() == Some(&versions) {
            return Ok(false);
        }
        let timeout = engine.limits().timeout();
        let update = tokio::time::timeout(timeout, self.read(engine))
            .await
            .map_err(|_| QueryError::Timeout(timeout))??;
        self.publish(update);
        *refreshed_at = Some(versions);
        Ok(true)
    }

    /// Refreshes every `interval` while the returned task runs (abort it to
    /// stop); a failure is logged when its message changes.
    pub fn spawn(
        self: Arc<Self>,
        engine: Arc<Engine>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                match self.refresh(&engine).await {
                    Ok(_) => last_error = None,
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_deref() != Some(&message) {
                            eprintln!(
                                "serve: cannot refresh the domain metrics: {message}; \
                                 they keep their last values"
                            );
                        }
                        last_error = Some(message);
                    }
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Reads everything the gauges will show, without touching them.
    async fn read(&self, engine: &Engine) -> Result<Update, QueryError> {
        let session = engine.session(&Principal::internal());
        let as_of = query(
            engine,
            &session,
            "SELECT CAST(max(as_of) AS VARCHAR) FROM referrals",
        )
        .await?;
        let as_of = text_cells(&as_of)?.into_iter().flatten().next();
        let Some(as_of) = as_of else {
            return Ok(Update::default());
        };
        let as_of: NaiveDate = as_of
            .parse()
            .map_err(|e| QueryError::Internal(format!("referrals.as_of {as_of:?}: {e}")))?;
        let week = Week::of(as_of).plus(-1).monday();
        let day = week.format("%Y-%m-%d").to_string();

        let practices = self.count_practices(engine, &session, &day).await?;
        let with_practices = practices <= self.max_practices;

        let tf = "treatment_function IS NOT NULL";
        let mut queries =
            self.by_treatment_function
                .queries(&day, "treatment_function", tf, "specialty");
        if with_practices {
            queries.extend(self.by_practice.queries(
                &day,
                "practice, treatment_function",
                &format!("practice IS NOT NULL AND {tf}"),
                "practice_specialty",
            ));
            queries.push(Query {
                sql: format!(
                    "SELECT practice, CAST(sum(did_not_attend) AS DOUBLE) \
                     / CAST(nullif(sum(attended) + sum(did_not_attend), 0) AS DOUBLE) \
                     FROM capacity_weekly WHERE week = DATE '{day}' AND setting = 'gp' \
                     AND practice IS NOT NULL GROUP BY practice"
                ),
                gauges: vec![&self.gp_dna],
            });
        }
        let mut sets = Vec::new();
        for q in queries {
            let batches = query(engine, &session, &q.sql).await?;
            let rows = rows(&batches, q.gauges.len())?;
            sets.push((q.gauges.into_iter().cloned().collect(), rows));
        }
        let week_start = week
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp() as f64);
        Ok(Update {
            week_start,
            practices: Some(practices),
            with_practices,
            sets,
        })
    }

    /// Distinct practices with a row in any gold table in the week.
    async fn count_practices(
        &self,
        engine: &Engine,
        session: &QuerySession,
        day: &str,
    ) -> Result<usize, QueryError> {
        let from = |table: &str| format!("SELECT practice FROM {table} WHERE week = DATE '{day}'");
        let sql = format!(
            "SELECT CAST(count(DISTINCT practice) AS DOUBLE) FROM ({} UNION ALL {} UNION ALL {} \
             UNION ALL {})",
            from("demand_weekly"),
            from("capacity_weekly"),
            from("waits_weekly"),
            from("followups_weekly"),
        );
        let batches = query(engine, session, &sql).await?;
        let n = rows(&batches, 1)?
            .first()
            .and_then(|(_, v)| v[0])
            .unwrap_or(0.0);
        Ok(n as usize)
    }

    /// Replaces every series with `update`'s, so label sets that are gone
    /// vanish. Reads are done first, so a scrape sees the gap between reset
    /// and set for microseconds only.
    fn publish(&self, update: Update) {
        for g in self
            .by_treatment_function
            .all()
            .into_iter()
            .chain(self.by_practice.all())
            .chain([&self.gp_dna])
        {
            g.reset();
        }
        match update.week_start {
            Some(t) => self.week_start.set(t),
            None => self.week_start.set(0.0),
        }
        self.practices.set(update.practices.unwrap_or(0) as i64);
        for (gauges, rows) in &update.sets {
            for (labels, values) in rows {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                for (gauge, value) in gauges.iter().zip(values) {
                    if let Some(v) = value {
                        gauge.with_label_values(&labels).set(*v);
                    }
                }
            }
        }
        if update.practices.is_none() || update.with_practices {
            self.over_bound_logged.store(false, Ordering::Relaxed);
        } else if !self.over_bound_logged.swap(true, Ordering::Relaxed) {
            eprintln!(
                "serve: {} practices in the week exceed the bound of {} for by-practice domain \
                 metrics; serving them by treatment function only",
                update.practices.unwrap_or(0),
                self.max_practices
            );
        }
    }
}

/// What one refresh read: the week, and each query's gauges with its rows.
#[derive(Default)]
struct Update {
    week_start: Option<f64>,
    practices: Option<usize>,
    with_practices: bool,
    sets: Vec<(Vec<GaugeVec>, Rows)>,
}

/// Plans `sql` for the server itself and collects the result, unaudited.
async fn query(
    engine: &Engine,
    session: &QuerySession,
    sql: &str,
) -> Result<Vec<RecordBatch>, QueryError> {
    let plan = engine.plan(session, &Principal::internal(), sql).await?;
    let frame = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(QueryError::from_datafusion)?;
    frame
        .collect()
        .await
        .map_err(|e| QueryError::from_execution(e, engine.limits().query_memory_mb))
}

/// The first column of `batches` as text.
fn text_cells(batches: &[RecordBatch]) -> Result<Vec<Option<String>>, QueryError> {
    Ok(rows_of(batches, 1, 0)?
        .into_iter()
        .map(|(mut l, _)| l.pop().flatten())
        .collect())
}

/// Rows whose last `values` columns are numbers and the others non-null
/// labels (rows with a null label are dropped: they have no series).
fn rows(batches: &[RecordBatch], values: usize) -> Result<Rows, QueryError> {
    let width = batches.first().map_or(values, |b| b.num_columns());
    let labels = width.checked_sub(values).ok_or_else(|| {
        QueryError::Internal(format!("{width} columns, {values} values expected"))
    })?;
    Ok(rows_of(batches, labels, values)?
        .into_iter()
        .filter_map(|(l, v)| l.into_iter().collect::<Option<Vec<_>>>().map(|l| (l, v)))
        .collect())
}

fn rows_of(
    batches: &[RecordBatch],
    labels: usize,
    values: usize,
) -> Result<Vec<RawRow>, QueryError> {
    let cast = |b: &RecordBatch, i: usize, t: &DataType| {
        arrow::compute::cast(b.column(i), t)
            .map_err(|e| QueryError::Internal(format!("domain metrics column {i}: {e}")))
    };
    let mut out = Vec::new();
    for b in batches {
        let text = (0..labels)
            .map(|i| cast(b, i, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let nums = (labels..labels + values)
            .map(|i| cast(b, i, &DataType::Float64))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            let l = text
                .iter()
                .map(|c| {
                    let c = c.as_string::<i32>();
                    c.is_valid(r).then(|| c.value(r).to_string())
                })
                .collect();
            let v = nums
                .iter()
                .map(|c| {
                    let c = c.as_primitive::<Float64Type>();
                    (c.is_valid(r) && c.value(r).is_finite()).then(|| c.value(r))
                })
                .collect();
            out.push((l, v));
        }
    }
    Ok(out)
}
