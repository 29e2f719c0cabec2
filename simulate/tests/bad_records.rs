//! The injected bad records are exactly those listed in `bad_records.csv`,
//! each really is bad in the way it says, and every other row is well formed
//! with a valid NHS number: the answer key connector tests rely on.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Run;
use pathflow_schemas::NhsNumber;

fn split(line: &str) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    reader
        .records()
        .next()
        .and_then(Result::ok)
        .map(|r| r.iter().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn bad_records_are_exactly_the_listed_ones() {
    let run = Run::new(|c| {
        c.population = 30_000;
        c.weeks = 8;
        c.run_in_weeks = 10;
        c.bad_record_rate = 0.02;
    });
    let key = std::fs::read_to_string(run.out().join("bad_records.csv")).unwrap();
    let mut listed: BTreeMap<String, BTreeMap<u64, (String, String)>> = BTreeMap::new();
    for line in key.lines().skip(1) {
        let f = split(line);
        listed
            .entry(f[0].clone())
            .or_default()
            .insert(f[1].parse().unwrap(), (f[2].clone(), f[3].clone()));
    }
    let kinds: BTreeSet<&str> = listed
        .values()
        .flat_map(|m| m.values().map(|(k, _)| k.as_str()))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "bad_check_digit",
            "broken_quoting",
            "duplicated_row",
            "impossible_date",
            "missing_field",
            "unknown_code"
        ])
    );

    for (file, bad) in &listed {
        let text = std::fs::read_to_string(run.out().join(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header = split(lines[0]);
        let nhs = header.iter().position(|h| h == "nhs_number");
        for (i, line) in lines.iter().enumerate().skip(1) {
            let number = i as u64 + 1;
            let fields = split(line);
            let at = |name: &str| {
                header
                    .iter()
                    .position(|h| h == name)
                    .map(|c| fields[c].as_str())
                    .unwrap_or("")
            };
            match bad.get(&number) {
                Some((kind, field)) => {
                    let ok = match kind.as_str() {
                        "bad_check_digit" => NhsNumber::parse(at(field)).is_err(),
                        "unknown_code" => matches!(at(field), "999" | "8" | "Carrier Pigeon"),
                        "missing_field" => at(field).is_empty(),
                        "impossible_date" => at(field).contains("-02-30"),
                        "broken_quoting" => fields.len() == header.len() + 1,
                        "duplicated_row" => lines[i - 1] == *line,
                        other => panic!("unknown kind {other}"),
                    };
                    assert!(
                        ok,
                        "{file}:{number} is listed as {kind} in {field} but is not: {line}"
                    );
                }
                None if bad
                    .get(&(number + 1))
                    .is_some_and(|(k, _)| k == "duplicated_row") => {}
                None => {
                    assert_eq!(
                        fields.len(),
                        header.len(),
                        "{file}:{number} is not listed but has the wrong field count"
                    );
                    if let Some(c) = nhs.filter(|c| !fields[*c].is_empty()) {
                        assert!(
                            NhsNumber::parse(&fields[c]).is_ok(),
                            "{file}:{number} has an invalid NHS number but is not listed"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn identifiers_are_synthetic() {
    let run = Run::new(|c| {
        c.population = 10_000;
        c.weeks = 2;
        c.run_in_weeks = 4;
        c.bad_record_rate = 0.0;
    });
    let opt_out =
        std::fs::read_to_string(run.out().join("reference/national_data_opt_out.csv")).unwrap();
    let numbers: Vec<&str> = opt_out.lines().skip(1).collect();
    let share = numbers.len() as f64 / 10_000.0;
    assert!((0.04..0.07).contains(&share), "opt-out share {share}");
    for n in numbers {
        let n = NhsNumber::parse(n).unwrap();
        assert!(n.is_test_range());
    }
    let postcodes =
        std::fs::read_to_string(run.out().join("reference/postcode_deprivation.csv")).unwrap();
    assert!(
        postcodes.lines().skip(1).all(|l| l.starts_with("QX")),
        "postcodes use the unused area QX"
    );
}
