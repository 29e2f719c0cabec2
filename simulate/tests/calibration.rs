//! The headline rates, computed from the output files as an analyst would,
//! fall within ±10% of the national rates the generator is calibrated to.

mod common;

use common::{Run, Table, date};
use pathflow_simulate::config::targets;

#[test]
fn headline_rates_match_national_calibration() {
    let run = Run::new(|c| {
        c.population = 100_000;
        c.weeks = 26;
    });
    let (first, last) = run.period();
    let in_period = |field: &str| date(field).is_some_and(|d| first <= d && d <= last);
    let months = f64::from(run.cfg.weeks) * 7.0 / targets::DAYS_PER_MONTH;
    let pop = f64::from(run.cfg.population);

    // GP appointments: CSV practices plus FHIR practices.
    let (mut gp_seen, mut gp_dna) = (0u64, 0u64);
    let gp = Table::read(&run.out().join("gp/appointments.csv"));
    let (start, status) = (gp.col("slot_start"), gp.col("status"));
    for r in gp.rows.iter().filter(|r| in_period(&r[start])) {
        match &r[status] {
            "Attended" => gp_seen += 1,
            "DNA" => gp_dna += 1,
            _ => {}
        }
    }
    let bundles = run.files("gp/fhir", ".json");
    assert!(!bundles.is_empty(), "some practices export FHIR");
    for path in bundles {
        let bundle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Appointment" && in_period(r["start"].as_str().unwrap()) {
                match r["status"].as_str().unwrap() {
                    "fulfilled" => gp_seen += 1,
                    "noshow" => gp_dna += 1,
                    _ => {}
                }
            }
        }
    }

    let referrals = Table::read_all(&run.files("pas", "referrals.csv"));
    let received = referrals.col("received_date");
    let clock_starts = referrals
        .rows
        .iter()
        .filter(|r| in_period(&r[received]))
        .count() as f64;

    let op = Table::read_all(&run.files("pas", "outpatient_appointments.csv"));
    let (start, contact, status) = (
        op.col("appointment_start"),
        op.col("contact_type"),
        op.col("attendance_status"),
    );
    let (mut first_att, mut fu_att, mut op_dna) = (0.0, 0.0, 0.0);
    for r in op.rows.iter().filter(|r| in_period(&r[start])) {
        match (&r[contact], &r[status]) {
            ("1", "5") => first_att += 1.0,
            ("2", "5") => fu_att += 1.0,
            (_, "3") => op_dna += 1.0,
            _ => {}
        }
    }

    let ag = Table::read(&run.out().join("ers/advice_and_guidance.csv"));
    let requested = ag.col("requested_at");
    let ag_requests = ag.rows.iter().filter(|r| in_period(&r[requested])).count() as f64;

    let fus = Table::read_all(&run.files("pas", "followups.csv"));
    let (req, pifu) = (fus.col("requested_date"), fus.col("pifu"));
    let fu_rows: Vec<_> = fus.rows.iter().filter(|r| in_period(&r[req])).collect();
    let pifu_share =
        fu_rows.iter().filter(|r| &r[pifu] == "Y").count() as f64 / fu_rows.len() as f64;

    let gp_total = (gp_seen + gp_dna) as f64;
    let measured = [
        (
            "GP appointments per patient per month",
            gp_total / pop / months,
            targets::GP_APPOINTMENTS_PER_PATIENT_MONTH,
        ),
        (
            "GP DNA rate",
            gp_dna as f64 / gp_total,
            targets::GP_DNA_RATE,
        ),
        (
            "RTT clock starts per 1,000 per month",
            clock_starts / (pop / 1000.0) / months,
            targets::CLOCK_STARTS_PER_1000_MONTH,
        ),
        (
            "follow-up attendances per first attendance",
            fu_att / first_att,
            targets::FOLLOWUPS_PER_FIRST,
        ),
        (
            "outpatient DNA rate",
            op_dna / (first_att + fu_att + op_dna),
            targets::OP_DNA_RATE,
        ),
        (
            "A&G share of referral demand",
            ag_requests / (ag_requests + clock_starts),
            targets::AG_SHARE,
        ),
        ("PIFU share of follow-ups", pifu_share, targets::PIFU_SHARE),
    ];
    let report: Vec<String> = measured
        .iter()
        .map(|(name, got, want)| format!("{name}: {got:.4} (target {want})"))
        .collect();
    println!("{}", report.join("\n"));
    for (name, got, want) in measured {
        assert!(
            (got - want).abs() <= 0.10 * want,
            "{name} is {got:.4}, more than 10% from {want}\n{}",
            report.join("\n")
        );
    }
}
