//! The bronze table and the exactly-once commit protocol (COMMIT_PROTOCOL.md),
//! checked through what a reader sees: rows counted by SQL, the committed
//! offsets read back from the table, the files in its directory and its log.
//! No Kafka here: messages are built from the schema crate's sample events.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, Date32Array, Int16Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use chrono::Duration;
use datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableBuilder, ensure_table_uri};
use pathflow_schemas::Event;
use pathflow_schemas::sample::one_of_each;
use pathflow_transform::bronze::{MessageRef, RejectReason, to_batch};
use pathflow_transform::commit::{
    BronzeConfig, BronzeWriter, CommitError, Offsets, ResumeAt, app_id,
};

const TOPIC: &str = "pathflow.referral";
const GROUP: &str = "transform-test";

/// The sample events, spread over three days so the table has three partitions.
fn events() -> Vec<Event> {
    one_of_each()
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.envelope.occurred_at += Duration::days((i % 3) as i64);
            e.envelope.recorded_at = e.envelope.occurred_at;
            e
        })
        .collect()
}

fn payloads(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap())
        .collect()
}

/// A bronze batch of `payloads` as if read from `topic`/`partition` from `first` on.
fn batch(topic: &str, partition: i32, first: i64, payloads: &[Vec<u8>]) -> RecordBatch {
    let messages = payloads.iter().enumerate().map(|(i, p)| MessageRef {
        topic,
        partition,
        offset: first + i as i64,
        payload: Some(p),
    });
    let (batch, rejections) = to_batch(messages).unwrap();
    assert!(rejections.is_empty(), "{rejections:?}");
    batch
}

fn offsets(entries: &[(&str, i32, i64)]) -> Offsets {
    entries
        .iter()
        .map(|&(t, p, o)| ((t.to_string(), p), o))
        .collect()
}

fn config(dir: &Path) -> BronzeConfig {
    BronzeConfig::new(dir.to_str().unwrap(), GROUP)
}

async fn load(dir: &Path) -> DeltaTable {
    let url = ensure_table_uri(dir.to_str().unwrap()).unwrap();
    DeltaTableBuilder::from_url(url)
        .unwrap()
        .load()
        .await
        .unwrap()
}

/// Runs `sql` over the table at `dir` (registered as `events`) with DataFusion.
async fn query(dir: &Path, sql: &str) -> Vec<RecordBatch> {
    let table = load(dir).await;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    let provider = table.table_provider().await.unwrap();
    ctx.register_table("events", provider).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn count(dir: &Path) -> i64 {
    let batches = query(dir, "SELECT count(*) FROM events").await;
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Parquet files under `dir`, committed or not.
fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += parquet_files(&path);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            n += 1;
        }
    }
    n
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
}

#[test]
fn bronze_rows_carry_envelope_patient_data_and_kafka_coordinates() {
    let events = events();
    let batch = batch(TOPIC, 2, 100, &payloads(&events));
    assert_eq!(batch.num_rows(), events.len());
    assert_eq!(batch.schema(), pathflow_schemas::bronze::events_schema());

    // Row 0 is referral.created: it carries the patient.
    let first = &events[0];
    assert_eq!(strings(&batch, "event_type").value(0), "referral.created");
    assert_eq!(strings(&batch, "family").value(0), "referral");
    assert_eq!(
        strings(&batch, "event_id").value(0),
        first.envelope.event_id.as_str()
    );
    assert_eq!(
        strings(&batch, "entity_id").value(0),
        first.payload.key().as_str()
    );
    let patient = first.payload.patient().unwrap();
    assert_eq!(strings(&batch, "patient_id").value(0), patient.id.as_str());
    assert_eq!(strings(&batch, "age_band").value(0), "45-49");
    assert_eq!(strings(&batch, "sex").value(0), "female");
    assert_eq!(strings(&batch, "treatment_function").value(0), "110");
    let decile = batch
        .column_by_name("deprivation_decile")
        .unwrap()
        .as_any()
        .downcast_ref::<Int16Array>()
        .unwrap();
    assert_eq!(decile.value(0), 3);
    let data: serde_json::Value = serde_json::from_str(strings(&batch, "data").value(0)).unwrap();
    assert_eq!(data["priority"], "urgent");
    assert_eq!(data["pathway_id"], first.payload.key().as_str());

    // Row 1 (referral.triaged) has no patient attributes.
    assert!(strings(&batch, "patient_id").is_null(1));
    assert!(decile.is_null(1));

    // event_date is the UTC date of occurred_at: row 1 is a day after row 0.
    let dates = batch
        .column_by_name("event_date")
        .unwrap()
        .as_any()
        .downcast_ref::<Date32Array>()
        .unwrap();
    assert_eq!(
        dates.value_as_date(0),
        Some(first.envelope.occurred_at.date_naive())
    );
    assert_eq!(dates.value(1), dates.value(0) + 1);

    let offsets = batch
        .column_by_name("kafka_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(offsets.value(0), 100);
    assert_eq!(
        offsets.value(events.len() - 1),
        100 + events.len() as i64 - 1
    );
    assert_eq!(strings(&batch, "kafka_topic").value(3), TOPIC);
}

#[test]
fn malformed_payloads_come_back_as_rejections_without_their_content() {
    let good = payloads(&events()[..1]).remove(0);
    let not_json = b"Smith,9434765919,1980-06-15".to_vec();
    let unknown_type =
        br#"{"event_type":"referral.9434765919","data":{"nhs_number":"9434765919"}}"#.to_vec();
    // A real event whose patient pseudonym was replaced by a raw NHS number.
    let raw_id = String::from_utf8(good.clone())
        .unwrap()
        .replace(
            events()[0].payload.patient().unwrap().id.as_str(),
            "9434765919",
        )
        .into_bytes();
    let empty = Vec::new();
    let messages = [
        (0, Some(&good)),
        (1, Some(&not_json)),
        (2, Some(&unknown_type)),
        (3, Some(&raw_id)),
        (4, Some(&empty)),
        (5, None),
    ]
    .map(|(offset, payload)| MessageRef {
        topic: TOPIC,
        partition: 0,
        offset,
        payload: payload.map(|p| p.as_slice()),
    });

    let (batch, rejections) = to_batch(messages).unwrap();
    assert_eq!(batch.num_rows(), 1);
    let at: Vec<(i64, &str)> = rejections
        .iter()
        .map(|r| (r.offset, r.reason.label()))
        .collect();
    assert_eq!(
        at,
        [
            (1, "not_json"),
            (2, "not_an_event"),
            (3, "not_an_event"),
            (4, "empty_payload"),
            (5, "empty_payload"),
        ]
    );
    for r in &rejections {
        assert_eq!((r.topic.as_str(), r.partition), (TOPIC, 0));
        for shown in [r.to_string(), format!("{r:?}")] {
            assert!(!shown.contains("9434765919"), "{shown}");
            assert!(!shown.contains("Smith"), "{shown}");
        }
    }
    // The reason still says where and what kind of thing went wrong.
    match &rejections[2].reason {
        RejectReason::NotAnEvent {
            column, problem, ..
        } => {
            assert!(*column > 0);
            assert!(!problem.is_empty());
        }
        other => panic!("expected NotAnEvent, got {other:?}"),
    }
}

#[tokio::test]
async fn commit_then_reopen_gives_the_same_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let resume = writer.track([(TOPIC.to_string(), 0)]).await.unwrap();
    assert_eq!(resume[&(TOPIC.to_string(), 0)], ResumeAt::Beginning);

    let done = writer
        .commit(
            vec![
                batch(TOPIC, 0, 0, &p[..5]),
                batch(TOPIC, 1, 40, &p[5..]),
                batch("pathflow.advice", 0, 7, &p[..2]),
            ],
            &offsets(&[(TOPIC, 0, 4), (TOPIC, 1, 60), ("pathflow.advice", 0, 8)]),
        )
        .await
        .unwrap();
    assert_eq!(done.rows, p.len() + 2);
    let committed = writer.committed_offsets();
    assert_eq!(committed, done.offsets);

    // Reopen through a file:// URL rather than the plain path.
    let url = format!("file://{}", dir.path().canonicalize().unwrap().display());
    let mut reopened = BronzeWriter::open(&BronzeConfig::new(url, GROUP))
        .await
        .unwrap();
    let partitions = [
        (TOPIC.to_string(), 0),
        (TOPIC.to_string(), 1),
        ("pathflow.advice".to_string(), 0),
        ("pathflow.followup".to_string(), 0),
    ];
    let resume = reopened.track(partitions.clone()).await.unwrap();
    assert_eq!(reopened.committed_offsets(), committed);
    assert_eq!(
        resume.values().copied().collect::<Vec<_>>(),
        [
            ResumeAt::Offset(9),
            ResumeAt::Beginning,
            ResumeAt::Offset(5),
            ResumeAt::Offset(61),
        ]
    );

    // Another consumer group's offsets are its own.
    let mut other = BronzeWriter::open(&BronzeConfig::new(
        dir.path().to_str().unwrap(),
        "another-group",
    ))
    .await
    .unwrap();
    other.track(partitions).await.unwrap();
    assert!(other.committed_offsets().is_empty());
}

#[tokio::test]
async fn committed_rows_are_readable_by_sql_and_partitioned_by_event_date() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let done = writer
        .commit(
            vec![batch(TOPIC, 3, 0, &p)],
            &offsets(&[(TOPIC, 3, p.len() as i64 - 1)]),
        )
        .await
        .unwrap();
    assert_eq!(done.version, 1, "version 0 is the table's creation");
    assert_eq!(done.files, 3, "one file per event date");

    assert_eq!(count(dir.path()).await, p.len() as i64);
    let per_day = query(
        dir.path(),
        "SELECT CAST(event_date AS VARCHAR) AS d, count(*) AS n FROM events GROUP BY event_date ORDER BY event_date",
    )
    .await;
    let days: Vec<String> = per_day
        .iter()
        .flat_map(|b| {
            // DataFusion casts to Utf8View: read it back as plain Utf8.
            let d = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let d = d.as_any().downcast_ref::<StringArray>().unwrap();
            (0..b.num_rows())
                .map(|i| d.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(days, ["2025-04-07", "2025-04-08", "2025-04-09"]);

    let table = load(dir.path()).await;
    let metadata = table.snapshot().unwrap().metadata().clone();
    assert_eq!(metadata.partition_columns(), &["event_date".to_string()]);
    let uris: Vec<String> = table.get_file_uris().unwrap().collect();
    for day in &days {
        assert!(
            uris.iter()
                .any(|u| u.contains(&format!("event_date={day}/"))),
            "{uris:?}"
        );
    }

    // The offsets are in the same log entry as the files: one commit, one file.
    let log =
        std::fs::read_to_string(dir.path().join("_delta_log/00000000000000000001.json")).unwrap();
    let actions: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let adds = actions.iter().filter(|a| a.get("add").is_some()).count();
    let txns: Vec<&serde_json::Value> = actions.iter().filter_map(|a| a.get("txn")).collect();
    assert_eq!(adds, 3);
    assert_eq!(txns.len(), 1);
    assert_eq!(txns[0]["appId"], app_id(GROUP, TOPIC, 3));
    assert_eq!(
        txns[0]["appId"],
        format!("pathflow-transform:{GROUP}:{TOPIC}:3")
    );
    assert_eq!(txns[0]["version"], p.len() as i64 - 1);
}

#[tokio::test]
async fn a_crash_after_writing_parquet_before_committing_leaves_the_table_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let (head, tail) = p.split_at(6);
    {
        let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
        writer
            .commit(vec![batch(TOPIC, 0, 0, head)], &offsets(&[(TOPIC, 0, 5)]))
            .await
            .unwrap();
        let staged = writer
            .stage(
                vec![batch(TOPIC, 0, 6, tail)],
                &offsets(&[(TOPIC, 0, 5 + tail.len() as i64)]),
            )
            .await
            .unwrap();
        assert!(staged.files().count() > 0);
        // The process dies here: the files are written, the commit never happens.
    }
    let committed_files = load(dir.path()).await.get_file_uris().unwrap().count();
    assert!(
        parquet_files(dir.path()) > committed_files,
        "the staged files are on disk"
    );
    assert_eq!(count(dir.path()).await, head.len() as i64);

    // The restarted process resumes from the table's offsets and redoes the batch.
    let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let resume = writer.track([(TOPIC.to_string(), 0)]).await.unwrap();
    assert_eq!(resume[&(TOPIC.to_string(), 0)], ResumeAt::Offset(6));
    assert_eq!(writer.version(), 1);
    writer
        .commit(
            vec![batch(TOPIC, 0, 6, tail)],
            &offsets(&[(TOPIC, 0, 5 + tail.len() as i64)]),
        )
        .await
        .unwrap();
    assert_eq!(count(dir.path()).await, p.len() as i64);
    let distinct = query(
        dir.path(),
        "SELECT count(DISTINCT kafka_offset) AS n FROM events",
    )
    .await;
    let n = distinct[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, p.len() as i64, "no offset written twice");
}

#[tokio::test]
async fn a_second_writer_cannot_commit_offsets_already_committed() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let tp = (TOPIC.to_string(), 0);
    let mut a = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let mut b = BronzeWriter::open(&config(dir.path())).await.unwrap();
    a.track([tp.clone()]).await.unwrap();
    b.track([tp.clone()]).await.unwrap();

    // Both own partition 0 for a moment (a rebalance): both read offsets 0..=9.
    a.commit(
        vec![batch(TOPIC, 0, 0, &p[..10])],
        &offsets(&[(TOPIC, 0, 9)]),
    )
    .await
    .unwrap();
    let err = b
        .commit(
            vec![batch(TOPIC, 0, 0, &p[..10])],
            &offsets(&[(TOPIC, 0, 9)]),
        )
        .await
        .unwrap_err();
    match &err {
        CommitError::Conflict { moved } => {
            assert_eq!(moved.len(), 1);
            assert_eq!(moved[0].expected, None);
            assert_eq!(moved[0].found, Some(9));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("committed offset + 1"), "{err}");
    assert_eq!(count(dir.path()).await, 10, "no row written twice");
    // The refused writer now knows where the table is.
    assert_eq!(b.committed_offsets(), BTreeMap::from([(tp.clone(), 9)]));

    // A writer that already sees the commit refuses before writing anything.
    let files_before = parquet_files(dir.path());
    let err = b
        .commit(
            vec![batch(TOPIC, 0, 5, &p[5..10])],
            &offsets(&[(TOPIC, 0, 9)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommitError::AlreadyCommitted {
                committed: 9,
                attempted: 9,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(parquet_files(dir.path()), files_before);

    // From the committed offset on, the second writer goes ahead.
    b.commit(
        vec![batch(TOPIC, 0, 10, &p[10..])],
        &offsets(&[(TOPIC, 0, 18)]),
    )
    .await
    .unwrap();
    assert_eq!(count(dir.path()).await, p.len() as i64);
}

#[tokio::test]
async fn concurrent_commits_to_other_partitions_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let mut a = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let mut b = BronzeWriter::open(&config(dir.path())).await.unwrap();
    a.commit(
        vec![batch(TOPIC, 0, 0, &p[..4])],
        &offsets(&[(TOPIC, 0, 3)]),
    )
    .await
    .unwrap();
    let done = b
        .commit(
            vec![batch(TOPIC, 1, 0, &p[4..])],
            &offsets(&[(TOPIC, 1, 14)]),
        )
        .await
        .unwrap();
    assert_eq!(done.version, 2, "b's commit went on top of a's");
    assert_eq!(count(dir.path()).await, p.len() as i64);
    b.track([(TOPIC.to_string(), 0)]).await.unwrap();
    assert_eq!(
        b.committed_offsets(),
        offsets(&[(TOPIC, 0, 3), (TOPIC, 1, 14)])
    );
}

#[tokio::test]
async fn rows_outside_the_offsets_being_committed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = payloads(&events());
    let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
    // Rows up to offset 4, but only offsets up to 3 declared.
    let err = writer
        .commit(
            vec![batch(TOPIC, 0, 0, &p[..5])],
            &offsets(&[(TOPIC, 0, 3)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommitError::RowOutsideOffsets {
                row: 4,
                offset: 4,
                ..
            }
        ),
        "{err}"
    );
    // Rows from a partition that is not declared at all.
    let err = writer
        .commit(
            vec![batch(TOPIC, 1, 0, &p[..1])],
            &offsets(&[(TOPIC, 0, 3)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommitError::RowOutsideOffsets { partition: 1, .. }),
        "{err}"
    );
    assert_eq!(writer.version(), 0);
    assert_eq!(count(dir.path()).await, 0);
}

#[tokio::test]
async fn a_run_of_rejected_messages_still_advances_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = BronzeWriter::open(&config(dir.path())).await.unwrap();
    // Offsets 0..=2 were all dead-lettered: no rows, but they are consumed.
    let done = writer
        .commit(Vec::new(), &offsets(&[(TOPIC, 0, 2)]))
        .await
        .unwrap();
    assert_eq!((done.rows, done.files), (0, 0));
    let mut reopened = BronzeWriter::open(&config(dir.path())).await.unwrap();
    let resume = reopened.track([(TOPIC.to_string(), 0)]).await.unwrap();
    assert_eq!(resume[&(TOPIC.to_string(), 0)], ResumeAt::Offset(3));
    assert_eq!(count(dir.path()).await, 0);
}

#[tokio::test]
async fn a_replay_into_an_empty_location_gives_the_same_rows() {
    let p = payloads(&events());
    let all_rows = "SELECT * FROM events ORDER BY kafka_topic, kafka_partition, kafka_offset";

    // The original run: three commits of different sizes.
    let first = tempfile::tempdir().unwrap();
    let mut writer = BronzeWriter::open(&config(first.path())).await.unwrap();
    for (from, to) in [(0, 3), (3, 4), (4, 19)] {
        writer
            .commit(
                vec![batch(TOPIC, 0, from as i64, &p[from..to])],
                &offsets(&[(TOPIC, 0, to as i64 - 1)]),
            )
            .await
            .unwrap();
    }
    // Replaying into the same table writes nothing.
    let err = writer
        .commit(vec![batch(TOPIC, 0, 0, &p)], &offsets(&[(TOPIC, 0, 18)]))
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::AlreadyCommitted { .. }), "{err}");

    // The replay from offset 0: everything in one commit, somewhere new.
    let second = tempfile::tempdir().unwrap();
    let mut replay = BronzeWriter::open(&config(second.path())).await.unwrap();
    replay
        .commit(vec![batch(TOPIC, 0, 0, &p)], &offsets(&[(TOPIC, 0, 18)]))
        .await
        .unwrap();

    let rows = |batches: Vec<RecordBatch>| {
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    };
    let original = rows(query(first.path(), all_rows).await);
    let replayed = rows(query(second.path(), all_rows).await);
    assert_eq!(original.num_rows(), p.len());
    assert_eq!(original, replayed);
    assert_eq!(writer.committed_offsets(), replay.committed_offsets());
}
