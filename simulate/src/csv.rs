//! Streaming CSV writing with the quirks of real extracts, and the injection
//! of realistic bad records (a configurable share) for connector tests.
//! Every injected record is logged with file, line, kind and field, so a test
//! can check that a connector rejected exactly those.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

use crate::rng::Rng;

/// The kinds of bad record the generator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BadKind {
    /// An NHS number whose Modulus 11 check digit is wrong.
    BadCheckDigit,
    /// A code that is in no reference list.
    UnknownCode,
    /// A required field left empty.
    MissingField,
    /// A date that cannot exist (30 February).
    ImpossibleDate,
    /// The same row written twice: valid, but must be counted once.
    DuplicatedRow,
    /// A stray quote and separator inside a field: the row has a column too many.
    BrokenQuoting,
}

impl BadKind {
    const ALL: [BadKind; 6] = [
        BadKind::BadCheckDigit,
        BadKind::UnknownCode,
        BadKind::MissingField,
        BadKind::ImpossibleDate,
        BadKind::DuplicatedRow,
        BadKind::BrokenQuoting,
    ];

    /// The name used in `bad_records.csv` and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            BadKind::BadCheckDigit => "bad_check_digit",
            BadKind::UnknownCode => "unknown_code",
            BadKind::MissingField => "missing_field",
            BadKind::ImpossibleDate => "impossible_date",
            BadKind::DuplicatedRow => "duplicated_row",
            BadKind::BrokenQuoting => "broken_quoting",
        }
    }
}

/// One injected bad record: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BadRecord {
    /// File path relative to the output directory.
    pub file: String,
    /// 1-based line number (the header is line 1).
    pub line: u64,
    /// What is wrong.
    pub kind: BadKind,
    /// The column affected (empty for a duplicated row).
    pub field: String,
}

/// Which columns of a file each kind of corruption touches.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Column holding an NHS number (files without one get no bad check digits).
    pub nhs_number: Option<usize>,
    /// A coded column, and a value that is in no code list.
    pub code: (usize, &'static str),
    /// A required column.
    pub required: usize,
    /// A date or date-time column.
    pub date: usize,
    /// A column whose values never need quoting, for the stray quote.
    pub text: usize,
}

/// What a closed file holds.
#[derive(Debug, Clone)]
pub struct FileSummary {
    /// Path relative to the output directory.
    pub file: String,
    /// Data lines (header excluded); a duplicated row counts twice here.
    pub lines: u64,
    /// Source records; a duplicated row counts once here.
    pub records: u64,
    /// Injected bad records.
    pub bad: Vec<BadRecord>,
}

/// A CSV file written row by row.
pub struct CsvFile {
    out: BufWriter<File>,
    rel: String,
    header: Vec<&'static str>,
    row: Vec<u8>,
    /// (start, end) of each field in `row`; separators lie between them.
    bounds: Vec<(usize, usize)>,
    line: u64,
    rows: u64,
    faults: Option<(Faults, f64, Rng)>,
    bad: Vec<BadRecord>,
}

impl CsvFile {
    /// Creates `root/rel` (and its directories) and writes the header.
    pub fn create(root: &Path, rel: &str, header: &[&'static str]) -> io::Result<Self> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        out.write_all(header.join(",").as_bytes())?;
        out.write_all(b"\r\n")?;
        Ok(CsvFile {
            out,
            rel: rel.to_string(),
            header: header.to_vec(),
            row: Vec::with_capacity(512),
            bounds: Vec::with_capacity(header.len()),
            line: 1,
            rows: 0,
            faults: None,
            bad: Vec::new(),
        })
    }

    /// Injects bad records into a share `rate` of rows, drawing from `rng`.
    pub fn with_faults(mut self, faults: Faults, rate: f64, rng: Rng) -> Self {
        if rate > 0.0 {
            self.faults = Some((faults, rate, rng));
        }
        self
    }

    /// Appends a text field, quoting it when it holds a separator, quote or line break.
    pub fn text(&mut self, value: &str) -> &mut Self {
        let start = self.begin_field();
        if value
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
        {
            self.row.push(b'"');
            for b in value.bytes() {
                if b == b'"' {
                    self.row.push(b'"');
                }
                self.row.push(b);
            }
            self.row.push(b'"');
        } else {
            self.row.extend_from_slice(value.as_bytes());
        }
        self.end_field(start)
    }

    /// Appends an identifier `{prefix}{n}`, `n` zero-padded to `width` digits,
    /// without building a `String` (the generator writes millions of them).
    pub fn id(&mut self, prefix: &str, n: u64, width: usize) -> &mut Self {
        let start = self.begin_field();
        self.row.extend_from_slice(prefix.as_bytes());
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        self.row.extend(std::iter::repeat_n(
            b'0',
            width.saturating_sub(digits.len()),
        ));
        self.row.extend_from_slice(digits.as_bytes());
        self.end_field(start)
    }

    /// Appends the patient columns every source file carries:
    /// `nhs_number, date_of_birth, sex, postcode`.
    pub fn patient(&mut self, p: &crate::population::PatientRecord) -> &mut Self {
        self.text(&p.nhs_number.expose_digits())
            .date(p.date_of_birth)
            .text(p.sex.label())
            .text(&p.postcode)
    }

    /// Appends an integer field.
    pub fn int(&mut self, value: i64) -> &mut Self {
        let start = self.begin_field();
        self.row
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self.end_field(start)
    }

    /// Appends a date as `YYYY-MM-DD`.
    pub fn date(&mut self, d: NaiveDate) -> &mut Self {
        let start = self.begin_field();
        push_date(&mut self.row, d);
        self.end_field(start)
    }

    /// Appends a date-time as `YYYY-MM-DDTHH:MM:SS` (local time, no offset, as source systems write it).
    pub fn datetime(&mut self, t: NaiveDateTime) -> &mut Self {
        let start = self.begin_field();
        push_date(&mut self.row, t.date());
        self.row.push(b'T');
        for (i, part) in [t.hour(), t.minute(), t.second()].into_iter().enumerate() {
            if i > 0 {
                self.row.push(b':');
            }
            push_2(&mut self.row, part);
        }
        self.end_field(start)
    }

    /// Appends an optional date (empty when `None`).
    pub fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => self.date(d),
            None => {
                let start = self.begin_field();
                self.end_field(start)
            }
        }
    }

    /// Appends an optional text (empty when `None`).
    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => {
                let start = self.begin_field();
                self.end_field(start)
            }
        }
    }

    fn begin_field(&mut self) -> usize {
        if !self.bounds.is_empty() {
            self.row.push(b',');
        }
        self.row.len()
    }

    fn end_field(&mut self, start: usize) -> &mut Self {
        self.bounds.push((start, self.row.len()));
        self
    }

    /// Ends the row and writes it unchanged (rows with nothing to corrupt).
    pub fn finish_clean(&mut self) -> io::Result<()> {
        self.write_row()?;
        self.row.clear();
        self.bounds.clear();
        Ok(())
    }

    /// Ends the row and writes it, possibly corrupted.
    pub fn finish(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.bounds.len(), self.header.len(), "{}", self.rel);
        let kind = match &mut self.faults {
            Some((faults, rate, rng)) => {
                let skip = usize::from(faults.nhs_number.is_none());
                rng.chance(*rate)
                    .then(|| BadKind::ALL[skip + rng.below(BadKind::ALL.len() - skip)])
            }
            None => None,
        };
        match kind {
            None => self.write_row()?,
            Some(kind) => self.write_bad(kind)?,
        }
        self.row.clear();
        self.bounds.clear();
        Ok(())
    }

    fn write_row(&mut self) -> io::Result<()> {
        self.out.write_all(&self.row)?;
        self.out.write_all(b"\r\n")?;
        self.line += 1;
        self.rows += 1;
        Ok(())
    }

    fn fields(&self) -> Vec<String> {
        self.bounds
            .iter()
            .map(|&(start, end)| String::from_utf8_lossy(&self.row[start..end]).into_owned())
            .collect()
    }

    fn write_bad(&mut self, kind: BadKind) -> io::Result<()> {
        let Some((faults, _, _)) = self.faults else {
            return Ok(());
        };
        let mut fields = self.fields();
        let column = match kind {
            BadKind::BadCheckDigit => {
                let column = faults.nhs_number.unwrap_or(faults.required);
                let f = &mut fields[column];
                if let Some(last) = f.pop() {
                    let d = last.to_digit(10).unwrap_or(0);
                    f.push(char::from_digit((d + 1) % 10, 10).unwrap_or('0'));
                }
                column
            }
            BadKind::UnknownCode => {
                fields[faults.code.0] = faults.code.1.to_string();
                faults.code.0
            }
            BadKind::MissingField => {
                fields[faults.required].clear();
                faults.required
            }
            BadKind::ImpossibleDate => {
                let f = &mut fields[faults.date];
                let year = f.get(..4).unwrap_or("2025").to_string();
                let rest = f.get(10..).unwrap_or("").to_string();
                *f = format!("{year}-02-30{rest}");
                faults.date
            }
            BadKind::BrokenQuoting => {
                let f = &mut fields[faults.text];
                let cut = f.len() / 2;
                let cut = (0..=cut)
                    .rev()
                    .find(|i| f.is_char_boundary(*i))
                    .unwrap_or(0);
                f.insert_str(cut, "\"x, y");
                faults.text
            }
            BadKind::DuplicatedRow => usize::MAX,
        };
        let text = fields.join(",");
        let copies = if kind == BadKind::DuplicatedRow { 2 } else { 1 };
        for _ in 0..copies {
            self.out.write_all(text.as_bytes())?;
            self.out.write_all(b"\r\n")?;
            self.line += 1;
        }
        self.rows += 1;
        self.bad.push(BadRecord {
            file: self.rel.clone(),
            line: self.line,
            kind,
            field: self
                .header
                .get(column)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        });
        Ok(())
    }

    /// Flushes the file and says what is in it.
    pub fn close(mut self) -> io::Result<FileSummary> {
        self.out.flush()?;
        Ok(FileSummary {
            file: self.rel,
            lines: self.line - 1,
            records: self.rows,
            bad: self.bad,
        })
    }
}

fn push_2(buf: &mut Vec<u8>, n: u32) {
    buf.push(b'0' + (n / 10 % 10) as u8);
    buf.push(b'0' + (n % 10) as u8);
}

/// Appends `YYYY-MM-DD`.
pub fn push_date(buf: &mut Vec<u8>, d: NaiveDate) {
    let y = d.year().clamp(0, 9999) as u32;
    push_2(buf, y / 100);
    push_2(buf, y % 100);
    buf.push(b'-');
    push_2(buf, d.month());
    buf.push(b'-');
    push_2(buf, d.day());
}
