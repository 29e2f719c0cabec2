//! The query engine as a user meets it, over tables of a simulated ICB:
//! what each role can see, what is refused, the limits, and new commits
//! becoming visible.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pathflow_query::testing::{self, engine, rows, token};
use pathflow_query::{Engine, Interface, Principal, QueryError, Role};

/// One set of tables for the tests that only read.
fn shared_tables() -> &'static Path {
    static TABLES: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    testing::tables_once(&TABLES, 16_000, 6)
}

const ANALYST: &str = "test-analyst-token";
const PAIR: &str = "test-clinical-pair-token";
const COMMISSIONER: &str = "test-commissioner-token";

async fn run(engine: &Engine, who: &Principal, sql: &str) -> Vec<String> {
    let out = engine
        .run(who, sql, Interface::Internal)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows(&out)
}

fn who(engine: &Engine, secret: &str) -> Principal {
    engine.authenticate(secret, Interface::Internal).unwrap()
}

/// The practice and treatment function with the most referrals.
async fn busiest_pair(engine: &Engine, analyst: &Principal) -> (String, String) {
    let top = run(
        engine,
        analyst,
        "SELECT practice, treatment_function FROM referrals \
         WHERE practice IS NOT NULL AND treatment_function IS NOT NULL \
         GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1",
    )
    .await;
    let (p, t) = top[0].split_once('|').unwrap();
    (p.to_string(), t.to_string())
}

#[tokio::test]
async fn a_clinical_pair_sees_only_its_scope_however_it_asks() {
    let location = shared_tables();
    let (e, _) = engine(
        location,
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |_| {},
    )
    .await;
    let analyst = who(&e, ANALYST);
    let (practice, tf) = busiest_pair(&e, &analyst).await;
    let practices = run(
        &e,
        &analyst,
        "SELECT DISTINCT practice FROM referrals WHERE practice IS NOT NULL",
    )
    .await;
    assert!(
        practices.len() > 1,
        "the scope must leave practices out: {practices:?}"
    );
    let (e, _) = engine(
        location,
        vec![
            token("analyst", ANALYST, Role::Analyst, &[], &[]),
            token("pair", PAIR, Role::ClinicalPair, &[&practice], &[&tf]),
        ],
        |_| {},
    )
    .await;
    let pair = who(&e, PAIR);
    let in_scope = format!("{practice}|{tf}");

    let tables = run(
        &e,
        &pair,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert_eq!(
        tables.len(),
        9,
        "every table is readable, scoped: {tables:?}"
    );
    for table in &tables {
        // Every row in scope, and exactly the analyst's rows for the pair.
        let sql = format!("SELECT DISTINCT practice, treatment_function FROM {table}");
        let seen = run(&e, &pair, &sql).await;
        assert!(
            seen.iter().all(|r| *r == in_scope),
            "{table}: rows out of scope: {seen:?}"
        );
        let count = format!("SELECT count(*) FROM {table}");
        let theirs = run(&e, &pair, &count).await;
        let filtered =
            format!("{count} WHERE practice = '{practice}' AND treatment_function = '{tf}'");
        assert_eq!(theirs, run(&e, &analyst, &filtered).await, "{table}");
    }
    let referrals = run(&e, &pair, "SELECT count(*) FROM referrals").await;
    assert_ne!(referrals, ["0"], "the pair has referrals to see");

    // Rows with no practice exist, and the pair sees none of them.
    let unscoped = "SELECT count(*) FROM events WHERE practice IS NULL";
    assert_ne!(run(&e, &analyst, unscoped).await, ["0"]);
    assert_eq!(run(&e, &pair, unscoped).await, ["0"]);

    // However the query is shaped, nothing out of scope comes back.
    let out_of_scope = format!("NOT (practice = '{practice}' AND treatment_function = '{tf}')");
    for sql in [
        format!("SELECT count(*) FROM (SELECT * FROM events) e WHERE {out_of_scope}"),
        format!(
            "SELECT count(*) FROM referrals r JOIN events e ON e.entity_id = r.pathway_id \
             WHERE NOT (e.practice = '{practice}' AND e.treatment_function = '{tf}')"
        ),
        format!(
            "SELECT count(*) FROM (SELECT practice, treatment_function FROM referrals \
             UNION ALL SELECT practice, treatment_function FROM appointments \
             UNION ALL SELECT practice, treatment_function FROM waits_weekly) u WHERE {out_of_scope}"
        ),
        format!(
            "WITH all_events AS (SELECT * FROM datafusion.public.events) \
             SELECT count(*) FROM all_events WHERE {out_of_scope}"
        ),
        format!(
            "SELECT count(*) FROM demand_weekly WHERE practice IN \
             (SELECT practice FROM events WHERE {out_of_scope})"
        ),
        format!(
            "SELECT count(*) FROM events WHERE EXISTS \
             (SELECT 1 FROM referrals WHERE {out_of_scope})"
        ),
    ] {
        assert_eq!(run(&e, &pair, &sql).await, ["0"], "{sql}");
    }
}

#[tokio::test]
async fn a_commissioner_reads_gold_tables_only() {
    let (e, _) = engine(
        shared_tables(),
        vec![token("icb", COMMISSIONER, Role::Commissioner, &[], &[])],
        |_| {},
    )
    .await;
    let icb = who(&e, COMMISSIONER);
    let tables = run(
        &e,
        &icb,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert_eq!(
        tables,
        [
            "capacity_weekly",
            "demand_weekly",
            "followups_weekly",
            "waits_weekly"
        ]
    );
    // Postgres' catalog, as psql's \d asks it, lists the same four.
    let relations = run(
        &e,
        &icb,
        "SELECT c.relname FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' ORDER BY 1",
    )
    .await;
    assert_eq!(relations, tables);
    assert_ne!(
        run(&e, &icb, "SELECT count(*) FROM waits_weekly").await,
        ["0"]
    );
    for sql in [
        "SELECT * FROM referrals",
        "SELECT count(*) FROM events",
        "SELECT * FROM datafusion.public.appointments",
        "SELECT w.week FROM waits_weekly w JOIN followups f ON f.practice = w.practice",
        "WITH x AS (SELECT * FROM advice) SELECT count(*) FROM x",
        "SELECT count(*) FROM demand_weekly UNION ALL SELECT count(*) FROM events",
    ] {
        match e.run(&icb, sql, Interface::Internal).await {
            Err(err @ QueryError::Refused { .. }) => {
                assert_eq!(err.http_status(), 403, "{sql}");
                assert!(err.to_string().contains("gold tables only"), "{err}");
            }
            other => panic!("{sql}: expected 403, got {other:?}"),
        }
    }
    let cols = run(
        &e,
        &icb,
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema = 'public'",
    )
    .await;
    assert_eq!(cols.len(), 4, "{cols:?}");
}

#[tokio::test]
async fn the_attack_list_is_refused_and_nothing_is_written() {
    let location = shared_tables();
    let (e, _) = engine(
        location,
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |_| {},
    )
    .await;
    let analyst = who(&e, ANALYST);
    let scratch = tempfile::tempdir().unwrap();
    let target = |name: &str| scratch.path().join(name).display().to_string();
    let events_dir = location.join("events").display().to_string();
    let a_parquet = testing::files_under(&location.join("events"))
        .into_iter()
        .find(|(p, _)| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap()
        .0
        .display()
        .to_string();
    let before = testing::files_under(location);
    let attacks = [
        "DROP TABLE referrals".to_string(),
        "DROP VIEW referrals".to_string(),
        "CREATE TABLE copy AS SELECT * FROM referrals".to_string(),
        "CREATE VIEW v AS SELECT * FROM referrals".to_string(),
        "CREATE SCHEMA s".to_string(),
        "ALTER TABLE referrals RENAME TO r".to_string(),
        "INSERT INTO referrals SELECT * FROM referrals".to_string(),
        "DELETE FROM events".to_string(),
        "UPDATE referrals SET practice = 'X'".to_string(),
        "TRUNCATE events".to_string(),
        format!(
            "COPY (SELECT * FROM events) TO '{}' STORED AS CSV",
            target("out.csv")
        ),
        format!(
            "COPY events TO '{}' STORED AS PARQUET",
            target("out.parquet")
        ),
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        format!("CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '{events_dir}'"),
        format!(
            "CREATE EXTERNAL TABLE w (a INT) STORED AS CSV LOCATION '{}'",
            target("w.csv")
        ),
        "SELECT * FROM '/etc/passwd'".to_string(),
        format!("SELECT * FROM '{a_parquet}'"),
        "SELECT * FROM 'file:///etc/passwd'".to_string(),
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
        format!("SELECT * FROM read_parquet('{a_parquet}')"),
        format!("SELECT * FROM parquet_metadata('{a_parquet}')"),
        "SELECT 1; DROP TABLE referrals".to_string(),
        "SELECT count(*) FROM events; SELECT count(*) FROM referrals".to_string(),
        "SET datafusion.execution.target_partitions = 1".to_string(),
        format!("EXPLAIN COPY events TO '{}'", target("e.csv")),
        format!("EXPLAIN ANALYZE COPY events TO '{}'", target("f.csv")),
        "WITH x AS (SELECT 1) INSERT INTO referrals SELECT * FROM referrals".to_string(),
        "BEGIN".to_string(),
        "PREPARE p AS SELECT 1".to_string(),
    ];
    for sql in &attacks {
        let result = e.run(&analyst, sql, Interface::Internal).await;
        let err = result.err().unwrap_or_else(|| panic!("not refused: {sql}"));
        assert!(
            !err.to_string().is_empty() && err.http_status() >= 400,
            "{sql}: {err}"
        );
    }
    assert_eq!(testing::files_under(location), before, "the tables changed");
    assert_eq!(
        testing::files_under(scratch.path()),
        vec![],
        "a file was written"
    );
    // Still answering afterwards.
    assert_ne!(
        run(&e, &analyst, "SELECT count(*) FROM referrals").await,
        ["0"]
    );
    // The refusals were counted by reason.
    let metrics = e.metrics().render();
    assert!(
        metrics.contains("pathflow_query_refusals_total{reason=\"ddl\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reason=\"multiple_statements\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_query_is_cancelled_and_others_keep_answering() {
    let (e, _) = engine(
        shared_tables(),
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |cfg| {
            cfg.limits.query_timeout_ms = 3_000;
            cfg.limits.max_concurrent_queries = 4;
        },
    )
    .await;
    let analyst = who(&e, ANALYST);
    let runaway = {
        let (e, who) = (e.clone(), analyst.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = e
                .run(
                    &who,
                    "SELECT sum(a.kafka_offset * b.kafka_offset - c.kafka_offset) \
                     FROM events a CROSS JOIN events b CROSS JOIN events c",
                    Interface::Http,
                )
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other clients, while the runaway runs.
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    let watching = Instant::now();
    while !runaway.is_finished() {
        assert!(
            watching.elapsed() < Duration::from_secs(20),
            "the runaway query was not cancelled"
        );
        let started = Instant::now();
        let out = e
            .run(
                &analyst,
                "SELECT count(*) FROM waits_weekly",
                Interface::Http,
            )
            .await
            .unwrap();
        assert_eq!(out.rows, 1);
        slowest = slowest.max(started.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (result, took) = runaway.await.unwrap();
    match result {
        Err(QueryError::Timeout(limit)) => assert_eq!(limit, Duration::from_secs(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(6), "cancelled late: {took:?}");
    assert!(answered >= 5, "only {answered} small queries answered");
    assert!(
        slowest < Duration::from_secs(2),
        "a small query took {slowest:?}"
    );
    assert_eq!(e.metrics().in_flight.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_result_size_and_concurrency_limits_say_which_limit() {
    let (e, _) = engine(
        shared_tables(),
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |cfg| {
            cfg.limits.query_memory_mb = 1;
            cfg.limits.max_result_rows = 100;
        },
    )
    .await;
    let analyst = who(&e, ANALYST);
    match e
        .run(
            &analyst,
            "SELECT event_id, count(*) FROM events GROUP BY event_id ORDER BY 2 DESC",
            Interface::Http,
        )
        .await
    {
        Err(err @ QueryError::Memory(..)) => {
            assert!(err.to_string().contains("query_memory_mb"), "{err}")
        }
        other => panic!("expected the memory limit, got {other:?}"),
    }
    match e
        .run(&analyst, "SELECT * FROM referrals", Interface::Http)
        .await
    {
        Err(err @ QueryError::TooLarge { .. }) => {
            assert!(err.to_string().contains("max_result_rows"), "{err}");
            assert_eq!(err.http_status(), 413);
        }
        other => panic!("expected the row limit, got {other:?}"),
    }
    assert_eq!(
        e.run(
            &analyst,
            "SELECT * FROM referrals LIMIT 100",
            Interface::Http
        )
        .await
        .unwrap()
        .rows,
        100
    );

    // One query at a time: a second waits, then is told the server is busy.
    let (e, _) = engine(
        shared_tables(),
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |cfg| {
            cfg.limits.max_concurrent_queries = 1;
            cfg.limits.queue_timeout_ms = 200;
            cfg.limits.query_timeout_ms = 2_000;
        },
    )
    .await;
    let slow = {
        let (e, who) = (e.clone(), analyst.clone());
        tokio::spawn(async move {
            e.run(
                &who,
                "SELECT sum(a.kafka_offset - b.kafka_offset) FROM events a CROSS JOIN events b \
                 CROSS JOIN events c",
                Interface::Http,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    match e.run(&analyst, "SELECT 1", Interface::Http).await {
        Err(err @ QueryError::Busy(1)) => assert_eq!(err.http_status(), 503),
        other => panic!("expected busy, got {other:?}"),
    }
    let _ = slow.await;

    // A client that goes away mid-query is still audited, as cancelled.
    let gone = {
        let (e, who) = (e.clone(), analyst.clone());
        tokio::spawn(async move {
            e.run(
                &who,
                "SELECT sum(a.kafka_offset - b.kafka_offset) FROM events a CROSS JOIN events b",
                Interface::Http,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    gone.abort();
    let _ = gone.await;
    let metrics = e.metrics().render();
    assert!(metrics.contains("outcome=\"cancelled\""), "{metrics}");
    assert_eq!(e.metrics().in_flight.get(), 0);
}

#[tokio::test]
async fn a_commit_is_visible_within_two_seconds_and_a_query_reads_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let events = testing::simulated_events(dir.path(), 2_000, 4, 3);
    let location = dir.path().join("tables");
    let (first, second) = events.split_at(events.len() / 2);
    testing::write_tables(&location, first).await;
    let (e, _reloader) = engine(
        &location,
        vec![token("analyst", ANALYST, Role::Analyst, &[], &[])],
        |_| {},
    )
    .await;
    let analyst = who(&e, ANALYST);
    let count = "SELECT count(*) FROM events";
    assert_eq!(run(&e, &analyst, count).await, [first.len().to_string()]);

    // A query planned now resolves this version of every table it names.
    let session = e.session(&analyst);
    let planned = e
        .plan(
            &session,
            &analyst,
            "SELECT (SELECT count(*) FROM events) AS a, count(*) AS b FROM events",
        )
        .await
        .unwrap();
    let version = e.tables().get("events").unwrap().version;

    pathflow_query::testing::write_tables(&location, second).await;
    let committed = Instant::now();
    loop {
        if run(&e, &analyst, count).await == [events.len().to_string()] {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(2),
            "the commit is not visible after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(e.tables().get("events").unwrap().version > version);
    let gold = "SELECT sum(referrals_received) FROM demand_weekly";
    assert_ne!(run(&e, &analyst, gold).await, [""]);

    // The query planned before the commit runs after it, on its version.
    let frame = session.ctx.execute_logical_plan(planned).await.unwrap();
    let out = frame.collect().await.unwrap();
    let read: Vec<i64> = (0..2)
        .map(|c| {
            let column = out[0].column(c).as_any();
            column
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0)
        })
        .collect();
    let n = first.len() as i64;
    assert_eq!(read, [n, n], "both reads at the version planned");
}

/// The server reads the tables pathflow writes as plain Parquet over each
/// version's file list (`scan.rs`); every table must answer exactly as
/// `deltalake`'s own provider does, and a partition filter must read only
/// its partitions' files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_reader_answers_as_deltalake_does_and_prunes_partitions() {
    use datafusion::prelude::SessionContext;
    use pathflow_query::catalog::{LiveTables, Reader, known_tables};

    let location = shared_tables();
    let tables = LiveTables::new(location.to_str().unwrap(), Default::default());
    assert!(tables.reload(&mut Default::default()).await.is_empty());
    for (name, _) in known_tables() {
        let snapshot = tables.get(name).unwrap();
        let Reader::Files { files } = snapshot.reader.clone() else {
            panic!("{name} is read by deltalake: {:?}", snapshot.reader);
        };
        let url = deltalake::ensure_table_uri(location.join(name).to_str().unwrap()).unwrap();
        let mut table = deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap();
        table.load().await.unwrap();
        assert_eq!(table.version(), Some(snapshot.version));
        let ctx = SessionContext::new_with_config_rt(Default::default(), tables.runtime());
        table.update_datafusion_session(&ctx.state()).unwrap();
        ctx.register_table("delta", table.table_provider().await.unwrap())
            .unwrap();
        ctx.register_table("plain", std::sync::Arc::clone(&snapshot.provider))
            .unwrap();
        let one = |sql: String| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx
                    .sql(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string()
            }
        };
        assert_eq!(
            snapshot.provider.schema(),
            ctx.table_provider("delta").await.unwrap().schema(),
            "{name}: schema"
        );
        let column = name_of_partition(name);
        // Rows both ways (EXCEPT is distinct, so counts are compared too).
        let counts = one(
            "SELECT (SELECT count(*) FROM delta) AS d, (SELECT count(*) FROM plain) AS p, \
             (SELECT count(*) FROM (SELECT * FROM delta EXCEPT SELECT * FROM plain)) AS only_d, \
             (SELECT count(*) FROM (SELECT * FROM plain EXCEPT SELECT * FROM delta)) AS only_p"
                .to_string(),
        )
        .await;
        let values: Vec<&str> = counts
            .lines()
            .nth(3)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(values[1], values[2], "{name}: row counts\n{counts}");
        assert_eq!(&values[3..5], &["0", "0"], "{name}: rows differ\n{counts}");
        assert_ne!(values[1], "0", "{name} has rows");

        // The busiest partition, filtered by its value (qualified, as a
        // query may write it): the same answer, from that partition's files.
        let top = one(format!(
            "SELECT CAST({column} AS VARCHAR) AS v FROM delta GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ))
        .await;
        let value = top
            .lines()
            .nth(3)
            .unwrap()
            .trim_matches(|c| c == '|' || c == ' ');
        for filter in [
            format!("plain.{column} = DATE '{value}'"),
            format!("{column} >= DATE '{value}'"),
        ] {
            let q = |t: &str| {
                format!(
                    "SELECT {column}, count(*) AS n FROM {t} WHERE {} GROUP BY 1 ORDER BY 1",
                    filter.replace("plain.", &format!("{t}."))
                )
            };
            assert_eq!(
                one(q("plain")).await,
                one(q("delta")).await,
                "{name}: {filter}"
            );
        }
        let plan = one(format!(
            "EXPLAIN SELECT * FROM plain WHERE {column} = DATE '{value}'"
        ))
        .await;
        let read = plan.matches(".parquet").count();
        assert!(read >= 1, "{name}: {plan}");
        assert!(
            read < files || files == 1,
            "{name}: {read} of {files} files read for one partition\n{plan}"
        );
    }
}

fn name_of_partition(table: &str) -> &'static str {
    match table {
        "events" => "event_date",
        "demand_weekly" | "capacity_weekly" | "waits_weekly" | "followups_weekly" => "week",
        _ => "anchor_week",
    }
}

/// The query bench's dashboard queries (`benches/queries.sql`) give the
/// same rows through the engine, whose optimizer turns their conditional
/// sums into `FILTER`s, as through a plain DataFusion session over the same
/// table versions.
#[tokio::test]
async fn the_dashboard_queries_answer_as_written_after_the_engines_rewrites() {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::prelude::SessionContext;
    use pathflow_query::catalog::known_tables;

    let location = shared_tables();
    let tokens = vec![token("analyst", ANALYST, Role::Analyst, &[], &[])];
    let (engine, reloader) = engine(location, tokens, |_| {}).await;
    let analyst = who(&engine, ANALYST);
    let plain = SessionContext::new_with_config_rt(Default::default(), engine.tables().runtime());
    for (name, _) in known_tables() {
        let snapshot = engine.tables().get(name).unwrap();
        plain
            .register_table(name, std::sync::Arc::clone(&snapshot.provider))
            .unwrap();
    }
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/queries.sql"))
            .unwrap();
    // Each query runs from its `-- name: ` line to the next.
    let mut queries: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        match (line.strip_prefix("-- name: "), queries.last_mut()) {
            (Some(name), _) => queries.push((name.trim(), String::new())),
            (None, Some((_, sql))) => {
                sql.push_str(line);
                sql.push('\n');
            }
            (None, None) => {}
        }
    }
    for (_, sql) in &mut queries {
        *sql = sql.trim().trim_end_matches(';').to_string();
    }
    assert!(queries.len() >= 10, "{} queries", queries.len());
    let options = FormatOptions::default().with_null("");
    let (mut rewritten, mut answered) = (0, 0);
    for (name, sql) in &queries {
        let ours = run(&engine, &analyst, sql).await;
        let batches = plain.sql(sql).await.unwrap().collect().await.unwrap();
        let mut theirs = Vec::new();
        for batch in &batches {
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for r in 0..batch.num_rows() {
                let cells: Vec<String> =
                    formatters.iter().map(|f| f.value(r).to_string()).collect();
                theirs.push(cells.join("|"));
            }
        }
        theirs.sort();
        assert_eq!(ours, theirs, "{name}");
        // (The test tables hold 6 weeks: the last-quarter queries are empty.)
        answered += usize::from(!ours.is_empty());
        let plan = run(&engine, &analyst, &format!("EXPLAIN {sql}"))
            .await
            .join("\n");
        if plan.contains("FILTER (WHERE") {
            rewritten += 1;
        }
    }
    // referral_demand_by_practice, gp_dna_rate_by_practice,
    // overdue_followups_now, long_waiters_by_specialty, advice_and_guidance.
    assert!(rewritten >= 5, "{rewritten} queries ran with FILTER");
    assert!(answered >= 10, "{answered} queries had rows");
    reloader.abort();
}
