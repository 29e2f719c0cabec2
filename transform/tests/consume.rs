//! `pathflow transform` against a real Kafka-protocol broker (tansu in CI):
//! events produced to the family topics land in the bronze table exactly
//! once, through a run stopped mid-way as a crash would stop it and a
//! restart; the metrics count the commits and rows.
//!
//! Needs `PATHFLOW_TEST_BROKERS` (`scripts/test` starts tansu and sets it).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, Int64Array};
use datafusion::prelude::SessionContext;
use deltalake::{DeltaTableBuilder, ensure_table_uri};
use pathflow_ingest::kafka::{KafkaConfig, ensure_topics, event_json};
use pathflow_schemas::sample::one_of_each;
use pathflow_schemas::{Event, EventId};
use pathflow_transform::run::{TransformConfig, TransformMetrics, run};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn brokers() -> Option<String> {
    match std::env::var("PATHFLOW_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "PATHFLOW_TEST_BROKERS is not set; on CI the Kafka tests must run: use scripts/test"
            )
        }
        _ => None,
    }
}

/// `n` events: the samples of every type again and again, each with its own id.
fn events(n: usize) -> Vec<Event> {
    let samples = one_of_each();
    (0..n)
        .map(|i| {
            let mut e = samples[i % samples.len()].clone();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            id[8] = 0x7f;
            e.envelope.event_id = EventId::from_digest(&id);
            e
        })
        .collect()
}

/// Runs `sql` over the bronze table at `dir` with DataFusion; the first column of the first row.
async fn scalar(dir: &str, sql: &str) -> i64 {
    let url = ensure_table_uri(dir).unwrap();
    let table = DeltaTableBuilder::from_url(url)
        .unwrap()
        .load()
        .await
        .unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("events", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn events_land_in_bronze_exactly_once_through_a_crash_and_restart() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("tr{nanos}");
    let mut kafka = KafkaConfig::new(&brokers);
    kafka.topic_prefix = prefix.clone();
    kafka.partitions = 3;
    kafka.replication = 1;
    ensure_topics(&kafka).await.unwrap();

    let all = events(6_000);
    // One message a record batch, so this test holds on a broker that cannot
    // serve a fetch starting inside a batch (tansu's memory engine; see
    // COMMIT_PROTOCOL.md): a restart resumes at such offsets.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    // Enqueued all at once, then every delivery awaited.
    let mut deliveries = Vec::with_capacity(all.len());
    for e in &all {
        let topic = kafka.topic(e.family());
        let payload = event_json(e);
        let record = FutureRecord::to(&topic)
            .key(e.payload.key().as_str())
            .payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    // And one message that is not an event: counted, skipped, its offset advanced.
    producer
        .send(
            FutureRecord::to(&kafka.topic(pathflow_schemas::Family::Referral))
                .key("x")
                .payload("not an event"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("tables");
    let cfg = TransformConfig::parse(
        &format!(
            r#"[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
group_id = "transform-test-{nanos}"
session_timeout_ms = 6000
[tables]
location = "{}"
[commit]
max_rows = 500
max_latency_ms = 300
"#,
            location.display()
        ),
        Path::new("transform.toml"),
    )
    .unwrap();
    let bronze = cfg.bronze_location();

    // A first run, stopped without warning once some batches are committed.
    let first = TransformMetrics::new();
    let task = {
        let (cfg, metrics) = (cfg.clone(), first.clone());
        tokio::spawn(async move { run(&cfg, &metrics, std::future::pending()).await })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&first.render(), "pathflow_transform_rows_written_total") < 1_500 {
        assert!(
            Instant::now() < deadline,
            "nothing committed: {}",
            first.render()
        );
        assert!(
            !task.is_finished(),
            "the transform stopped: {:?}",
            task.await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let after_first = metric(&first.render(), "pathflow_transform_rows_written_total");
    assert!(
        after_first < all.len() as u64,
        "the first run read everything"
    );

    // The restart goes on from the table's offsets and stops cleanly when told.
    let second = TransformMetrics::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let (cfg, metrics) = (cfg.clone(), second.clone());
        tokio::spawn(async move {
            run(&cfg, &metrics, async {
                let _ = stopped.await;
            })
            .await
        })
    };
    // Done when the table holds every event (read from the table itself: a
    // commit the first run made just before it was stopped may not be in its metrics).
    let deadline = Instant::now() + Duration::from_secs(120);
    while scalar(&bronze, "SELECT count(*) FROM events").await < all.len() as i64 {
        assert!(Instant::now() < deadline, "{}", second.render());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Give it a moment to read anything it should not, then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let n = all.len() as i64;
    assert_eq!(scalar(&bronze, "SELECT count(*) FROM events").await, n);
    assert_eq!(
        scalar(&bronze, "SELECT count(DISTINCT event_id) FROM events").await,
        n
    );
    assert_eq!(
        scalar(
            &bronze,
            "SELECT count(*) FROM (SELECT DISTINCT kafka_topic, kafka_partition, kafka_offset FROM events)"
        )
        .await,
        n
    );
    let text = second.render();
    assert_eq!(
        metric(&text, "pathflow_transform_rejected_messages_total"),
        1
    );
    assert!(
        metric(&text, "pathflow_transform_commits_total") >= 1,
        "{text}"
    );
    assert!(
        text.contains("pathflow_transform_consumer_lag_messages{partition="),
        "{text}"
    );
    assert!(metric(&text, "pathflow_transform_newest_event_timestamp_seconds") > 1_600_000_000);

    // A reader that is not pathflow sees the same table.
    match other_reader(&bronze) {
        Some((rows, ids, partitioning)) => {
            assert_eq!((rows, ids), (all.len(), all.len()));
            assert_eq!(partitioning, "event_date");
        }
        None => assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the deltalake package is needed (.ci/run installs it)"
        ),
    }
}

/// Rows, distinct event ids and partition columns of the table at
/// `location`, as the Python `deltalake` package reads it; `None` when it is
/// not installed.
fn other_reader(location: &str) -> Option<(usize, usize, String)> {
    let script = r#"
import sys
try:
    import deltalake
except ImportError:
    sys.exit(3)
table = deltalake.DeltaTable(sys.argv[1])
rows = table.to_pyarrow_table(columns=["event_id"])
print(rows.num_rows, len(set(rows.column("event_id").to_pylist())), ",".join(table.metadata().partition_columns))
sys.stdout.flush()
# deltalake's native threads can abort the interpreter's own shutdown
# ("terminate called without an active exception"): leave at once.
import os
os._exit(0)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, location])
        .output()
        .ok()?;
    if out.status.code() == Some(3) {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python deltalake failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fields = text.split_whitespace();
    Some((
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
        fields.next()?.to_string(),
    ))
}
