//! Hot paths of the generator: deriving a patient's identifiers, generating a
//! practice-week of appointments, writing CSV rows, and NHS number checks.
//! Run with `cargo bench -p pathflow-simulate`; the whole-run figure is in BENCHMARKS.md.

use std::hint::black_box;

use chrono::NaiveDate;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pathflow_schemas::{NhsNumber, Week};
use pathflow_simulate::gp::GpBook;
use pathflow_simulate::population::Icb;
use pathflow_simulate::rng::Rng;

fn benches(c: &mut Criterion) {
    let start = NaiveDate::from_ymd_opt(2025, 4, 7).unwrap();
    let icb = Icb::new(42, 250_000, 1, 0.0, start);

    let mut g = c.benchmark_group("population");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("patient_record", |b| {
        b.iter(|| {
            i = (i + 7919) % 250_000;
            black_box(icb.patient(i))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("gp");
    let mut book = GpBook::new(icb.practices.len());
    let week = Week::of(start);
    let rows = book.week(&icb, 0, week, &mut Rng::new(1, 1)).len();
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("practice_week", |b| {
        let mut rng = Rng::new(1, 2);
        b.iter(|| black_box(book.week(&icb, 0, week, &mut rng)))
    });
    g.finish();

    let mut g = c.benchmark_group("nhs_number");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| black_box(NhsNumber::parse(black_box("999 000 0018"))))
    });
    g.finish();
}

criterion_group!(generator, benches);
criterion_main!(generator);
