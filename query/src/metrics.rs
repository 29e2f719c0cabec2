//! The query server's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Registered on one [`Registry`], served at `/metrics`, with the
/// registries of any other stages running in the same process
/// ([`QueryMetrics::beside`]), so one endpoint carries the whole pipeline.
#[derive(Debug, Clone)]
pub struct QueryMetrics {
    registry: Registry,
    /// Other stages' registries (the demo's ingest and transform), rendered
    /// after this one's.
    others: Vec<Registry>,
    /// Seconds per query by interface (http, postgres), role and outcome.
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Rows returned by interface and role.
    pub rows: IntCounterVec,
    /// Statements refused before they ran, by reason.
    pub refusals: IntCounterVec,
    /// Requests without a valid token, by interface.
    pub unauthorized: IntCounterVec,
    /// The version of each table queries currently see.
    pub table_version: IntGaugeVec,
}

impl QueryMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let duration = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "pathflow_query_duration_seconds",
                    "Time from receiving a query to its last row, by interface, role and outcome",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ]),
                &["interface", "role", "outcome"],
            )
            .expect("valid histogram"),
        );
        let in_flight = reg(
            &registry,
            IntGauge::new("pathflow_query_in_flight", "Queries running now").expect("valid gauge"),
        );
        let rows = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "pathflow_query_rows_returned_total",
                    "Rows returned to clients, by interface and role",
                ),
                &["interface", "role"],
            )
            .expect("valid counter"),
        );
        let refusals = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "pathflow_query_refusals_total",
                    "Statements refused before running, by reason",
                ),
                &["reason"],
            )
            .expect("valid counter"),
        );
        let unauthorized = reg(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "pathflow_query_unauthorized_total",
                    "Requests without a valid token, by interface",
                ),
                &["interface"],
            )
            .expect("valid counter"),
        );
        let table_version = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "pathflow_query_table_version",
                    "The Delta version of each table that new queries read",
                ),
                &["table"],
            )
            .expect("valid gauge"),
        );
        QueryMetrics {
            registry,
            others: Vec::new(),
            duration,
            in_flight,
            rows,
            refusals,
            unauthorized,
            table_version,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves `other` (another stage's registry in this process) on the same
    /// `/metrics`. Stages prefix their names (`pathflow_ingest_`,
    /// `pathflow_transform_`, `pathflow_query_`), so families never collide.
    pub fn beside(mut self, other: Registry) -> Self {
        self.others.push(other);
        self
    }

    /// The text exposition format: this registry's families, then the others'.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        for other in &self.others {
            families.extend(other.gather());
        }
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&families, &mut out)
            .expect("metrics encode");
        out
    }
}

impl Default for QueryMetrics {
    fn default() -> Self {
        Self::new()
    }
}
