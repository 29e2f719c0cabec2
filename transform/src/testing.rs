//! Helpers for the tests and benchmarks of the workspace (not for
//! deployments): bronze commits of events without Kafka, and tables read
//! back as sorted rows so two derivations can be compared.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use pathflow_schemas::Event;

use crate::bronze::BronzeBatchBuilder;
use crate::commit::{BronzeConfig, BronzeWriter, Offsets, ResumeAt};
use crate::derive::{Derived, sql_session};

/// Commits events to the bronze table under `location` as the next offsets
/// of partition 0 of a made-up topic (no broker is involved), keeping one
/// writer open across commits as `pathflow transform` does.
pub struct Appender {
    writer: BronzeWriter,
    topic: String,
    next: i64,
}

impl Appender {
    /// Opens (or creates) the bronze table and finds where `topic` ends.
    ///
    /// # Panics
    /// On any failure: this is for tests.
    pub async fn open(location: &Path, topic: &str) -> Self {
        let bronze = location.join(crate::BRONZE_TABLE);
        let mut writer =
            BronzeWriter::open(&BronzeConfig::new(bronze.to_str().unwrap(), "testing"))
                .await
                .unwrap();
        let tp = (topic.to_string(), 0);
        let next = match writer.track([tp.clone()]).await.unwrap()[&tp] {
            ResumeAt::Offset(o) => o,
            ResumeAt::Beginning => 0,
        };
        Self {
            writer,
            topic: topic.to_string(),
            next,
        }
    }

    /// Commits `events` as the next offsets.
    pub async fn append(&mut self, events: &[Event]) {
        let mut builder = BronzeBatchBuilder::new();
        for e in events {
            builder.push_event(e, &self.topic, 0, self.next).unwrap();
            self.next += 1;
        }
        let offsets: Offsets = [((self.topic.clone(), 0), self.next - 1)]
            .into_iter()
            .collect();
        self.writer
            .commit(vec![builder.finish().unwrap()], &offsets)
            .await
            .unwrap();
    }
}

/// Commits `events` to the bronze table under `location` as the next offsets
/// of partition 0 of topic `topic` (see [`Appender`]).
pub async fn commit_events(location: &Path, topic: &str, events: &[Event]) {
    Appender::open(location, topic).await.append(events).await;
}

/// Every row of `sql`'s result in its order, each as its values joined by
/// `|` (nulls empty).
pub async fn query_rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            let values: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, i).unwrap())
                .collect();
            out.push(values.join("|"));
        }
    }
    out
}

/// Every row of `table`, each as its values joined by `|`, sorted.
pub async fn table_rows(ctx: &SessionContext, table: &str) -> Vec<String> {
    let mut rows = query_rows(ctx, &format!("SELECT * FROM {table}")).await;
    rows.sort();
    rows
}

/// Every derived table's sorted rows, by table name.
pub async fn derived_rows(location: &Path) -> BTreeMap<&'static str, Vec<String>> {
    let ctx = sql_session(location.to_str().unwrap(), &Default::default())
        .await
        .unwrap();
    let mut all = BTreeMap::new();
    for d in Derived::all() {
        all.insert(d.name(), table_rows(&ctx, d.name()).await);
    }
    all
}

/// Panics naming the first table whose rows differ, with a few rows that
/// only one side has.
pub fn assert_same_tables(
    left: &BTreeMap<&'static str, Vec<String>>,
    right: &BTreeMap<&'static str, Vec<String>>,
    what: &str,
) {
    for (table, rows) in left {
        let other = &right[table];
        if rows != other {
            let only_left: Vec<&String> =
                rows.iter().filter(|r| !other.contains(r)).take(3).collect();
            let only_right: Vec<&String> =
                other.iter().filter(|r| !rows.contains(r)).take(3).collect();
            panic!(
                "{what}: table {table} differs ({} vs {} rows); only on the left: \
                 {only_left:#?}; only on the right: {only_right:#?}",
                rows.len(),
                other.len()
            );
        }
    }
}
