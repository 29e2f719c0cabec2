//! Helpers shared by the generator's tests: run a simulation into a temporary
//! directory and read its files back the way a user would.
#![allow(dead_code)]

use std::path::Path;

use chrono::NaiveDate;
use pathflow_simulate::{SimConfig, Summary};

/// A simulation run in a temporary directory (removed when dropped).
pub struct Run {
    pub dir: tempfile::TempDir,
    pub cfg: SimConfig,
    pub summary: Summary,
}

impl Run {
    pub fn new(configure: impl FnOnce(&mut SimConfig)) -> Run {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cfg = SimConfig::new(dir.path().join("out"));
        configure(&mut cfg);
        let summary = pathflow_simulate::run(&cfg, &|_| {}).expect("simulation runs");
        Run { dir, cfg, summary }
    }

    pub fn out(&self) -> &Path {
        &self.cfg.out
    }

    /// First and last day of the period.
    pub fn period(&self) -> (NaiveDate, NaiveDate) {
        let end = self.cfg.start + chrono::Duration::weeks(i64::from(self.cfg.weeks))
            - chrono::Duration::days(1);
        (self.cfg.start, end)
    }

    /// Every file under `dir` (relative to the output) matching `suffix`.
    pub fn files(&self, under: &str, suffix: &str) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.out().join(under)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(suffix) {
                    found.push(p);
                }
            }
        }
        found.sort();
        found
    }
}

/// A CSV file read with a real CSV parser; rows with the wrong field count are kept out.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<csv::StringRecord>,
    pub malformed: usize,
}

impl Table {
    pub fn read(path: &Path) -> Table {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .expect("readable CSV");
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        let mut rows = Vec::new();
        let mut malformed = 0;
        for r in reader.records() {
            let r = r.expect("CSV record");
            if r.len() == header.len() {
                rows.push(r)
            } else {
                malformed += 1
            }
        }
        Table {
            header,
            rows,
            malformed,
        }
    }

    /// Reads and concatenates tables with the same header.
    pub fn read_all(paths: &[std::path::PathBuf]) -> Table {
        let mut all = Table {
            header: Vec::new(),
            rows: Vec::new(),
            malformed: 0,
        };
        for p in paths {
            let t = Table::read(p);
            all.header = t.header;
            all.rows.extend(t.rows);
            all.malformed += t.malformed;
        }
        all
    }

    pub fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.header))
    }
}

/// Parses the date at the start of a date or date-time field.
pub fn date(field: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(field.get(..10)?, "%Y-%m-%d").ok()
}
