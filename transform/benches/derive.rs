//! Hot paths of the derivation, on a simulated ICB's events: bronze rows
//! read back as events, the fold, and the gold aggregates' incremental
//! update. Run with `cargo bench -p pathflow-transform --bench derive`; the
//! whole-pipeline figures (`cargo bench --bench transform`) are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pathflow_schemas::Event;
use pathflow_transform::bronze::{BronzeBatchBuilder, events_of};
use pathflow_transform::fold::{Fold, Touched};
use pathflow_transform::gold::Gold;

fn events() -> Vec<Event> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let out = dir.path().join("sim");
    let mut cfg = pathflow_simulate::SimConfig::new(out.clone());
    cfg.population = 10_000;
    cfg.weeks = 8;
    cfg.run_in_weeks = 8;
    pathflow_simulate::run(&cfg, &|_| {}).expect("simulate");
    let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
        .expect("a date")
        .to_utc();
    let mut events =
        pathflow_ingest::simulated::events(&out, "bench", recorded_at).expect("events");
    events.sort_by_key(|e| e.envelope.occurred_at);
    events
}

fn benches(c: &mut Criterion) {
    let events = events();
    let n = events.len() as u64;
    let mut builder = BronzeBatchBuilder::new();
    for (i, e) in events.iter().enumerate() {
        builder
            .push_event(e, "t", 0, i as i64)
            .expect("a bronze row");
    }
    let batch = builder.finish().expect("a batch");

    let mut g = c.benchmark_group("derive");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("bronze_rows_to_events", |b| {
        b.iter(|| black_box(events_of(&batch).expect("events")))
    });
    g.bench_function("fold", |b| {
        b.iter(|| {
            let mut fold = Fold::new();
            for e in &events {
                black_box(fold.apply(e));
            }
            fold
        })
    });
    // The gold update of each 1,000-event step after the fold has taken it in.
    g.bench_function("fold_and_gold_in_steps_of_1000", |b| {
        b.iter(|| {
            let mut fold = Fold::new();
            let mut gold = Gold::new();
            for step in events.chunks(1_000) {
                let mut touched: Vec<Touched> = Vec::new();
                for e in step {
                    touched.extend(fold.apply(e));
                }
                let as_of = step.last().map(|e| e.envelope.occurred_at.date_naive());
                black_box(gold.update(&fold, &touched));
                if let Some(d) = as_of {
                    black_box(gold.set_as_of(d));
                }
            }
            gold
        })
    });
    g.finish();
}

criterion_group!(derive, benches);
criterion_main!(derive);
