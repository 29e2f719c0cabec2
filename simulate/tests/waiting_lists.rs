//! Waits emerge from the queue model: a specialty given less first-appointment
//! capacity than demand shows an RTT waiting list that grows week on week and
//! waits that lengthen; a well-resourced one stays flat. Lists are computed
//! from the PAS referral extract, as an analyst would.

mod common;

use chrono::{Duration, NaiveDate};
use common::{Run, Table, date};
use pathflow_schemas::codes::TreatmentFunction;
use pathflow_simulate::Specialty;

struct Weekly {
    size: Vec<usize>,
    median_wait_days: Vec<i64>,
}

/// Open RTT pathways of `tf` at each week end of the period, and their median wait.
fn weekly_list(run: &Run, tf: TreatmentFunction) -> Weekly {
    let t = Table::read_all(&run.files("pas", "referrals.csv"));
    let c = |n| t.col(n);
    let (tfc, redirected, start, stop, triage, outcome, discharged) = (
        c("treatment_function_code"),
        c("redirected_to"),
        c("clock_start_date"),
        c("clock_stop_date"),
        c("triage_date"),
        c("triage_outcome"),
        c("discharge_date"),
    );
    let mut weekly = Weekly {
        size: Vec::new(),
        median_wait_days: Vec::new(),
    };
    for w in 0..run.cfg.weeks {
        let week_end: NaiveDate = run.cfg.start + Duration::weeks(i64::from(w)) + Duration::days(6);
        let after = |field: &str| date(field).is_none_or(|d| d > week_end);
        let mut waits: Vec<i64> = t
            .rows
            .iter()
            .filter(|r| {
                let service = if r[redirected].is_empty() {
                    &r[tfc]
                } else {
                    &r[redirected]
                };
                let nullified =
                    matches!(&r[outcome], "Rejected" | "Returned to referrer with advice")
                        && !after(&r[triage]);
                service == tf.code() && !nullified && after(&r[stop]) && after(&r[discharged])
            })
            .filter_map(|r| {
                date(&r[start])
                    .filter(|d| *d <= week_end)
                    .map(|d| (week_end - d).num_days())
            })
            .collect();
        waits.sort_unstable();
        weekly.size.push(waits.len());
        weekly
            .median_wait_days
            .push(waits.get(waits.len() / 2).copied().unwrap_or(0));
    }
    weekly
}

#[test]
fn under_capacity_list_grows_while_well_resourced_list_stays_flat() {
    let run = Run::new(|c| {
        c.population = 60_000;
        c.weeks = 26;
        c.specialties = vec![
            Specialty {
                tf: TreatmentFunction::TraumaAndOrthopaedics,
                share: 11.0,
                capacity: 0.8,
                backlog_weeks: 18.0,
                two_week_wait: 0.0,
            },
            Specialty {
                tf: TreatmentFunction::Dermatology,
                share: 8.0,
                capacity: 1.3,
                backlog_weeks: 4.0,
                two_week_wait: 0.2,
            },
        ];
    });
    let short = weekly_list(&run, TreatmentFunction::TraumaAndOrthopaedics);
    let ample = weekly_list(&run, TreatmentFunction::Dermatology);
    println!(
        "T&O (capacity 0.8) list: {:?}\nmedian waits (days): {:?}",
        short.size, short.median_wait_days
    );
    println!("Dermatology (capacity 1.3) list: {:?}", ample.size);

    let rises = short.size.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        rises * 10 >= (short.size.len() - 1) * 8,
        "T&O list should grow in at least 80% of weeks: {:?}",
        short.size
    );
    let (first, last) = (short.size[0] as f64, *short.size.last().unwrap() as f64);
    assert!(
        last > first * 1.10,
        "T&O list should grow by over 10% in 26 weeks: {first} -> {last}"
    );
    let (w0, w1) = (
        short.median_wait_days[0],
        *short.median_wait_days.last().unwrap(),
    );
    assert!(
        w1 > w0,
        "T&O median wait should lengthen: {w0} -> {w1} days"
    );

    let mean = ample.size.iter().sum::<usize>() as f64 / ample.size.len() as f64;
    for (w, size) in ample.size.iter().enumerate() {
        let off = (*size as f64 - mean).abs() / mean;
        assert!(
            off < 0.15,
            "Dermatology list should stay flat; week {w} is {size} against a mean of {mean:.0}: {:?}",
            ample.size
        );
    }
}
