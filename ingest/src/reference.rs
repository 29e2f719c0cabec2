//! Reference lookups a connector loads at start: the National Data Opt-out
//! list (patients whose records are dropped before Kafka) and the postcode →
//! IMD deprivation decile lookup, from the CSV files `pathflow simulate` writes
//! under `reference/` or their real equivalents. Used beside [`crate::pseudonymise`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use pathflow_schemas::{Decile, KeyId, NhsNumber, PseudoId};

use crate::pseudonymise::Pseudonymiser;

/// Why a reference file could not be loaded. Messages name the file and line
/// and say what to fix; they never repeat an NHS number or a postcode.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be opened or read.
    #[error(
        "cannot read reference file {}: {error}; check the path in the config",
        path.display()
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        error: std::io::Error,
    },
    /// The file is not well-formed CSV at some line.
    #[error("reference file {}{}: {problem}", path.display(), at_line(*line))]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line where reading failed, when the CSV reader knows it.
        line: Option<u64>,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The header line lacks a required column.
    #[error(
        "reference file {}: the header (line 1) has no column `{column}`; the file must start with the header line `{header}`",
        path.display()
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column that is missing.
        column: &'static str,
        /// The header line the file should start with.
        header: &'static str,
    },
    /// One field of one row is invalid.
    #[error("reference file {} line {line}, field `{field}`: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The row's line (1 is the header).
        line: u64,
        /// The column.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A postcode appears twice with different deciles.
    #[error(
        "reference file {} line {line}, field `postcode`: this postcode is already on line {first_line} with a different decile; keep the right row and remove the other",
        path.display()
    )]
    ConflictingPostcode {
        /// The file.
        path: PathBuf,
        /// The second occurrence.
        line: u64,
        /// The first occurrence.
        first_line: u64,
    },
}

fn at_line(line: Option<u64>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

const OPT_OUT_HEADER: &str = "nhs_number";
const DEPRIVATION_HEADER: &str = "postcode,imd_decile";

/// The NHS numbers of patients who opted out of sharing for planning (the
/// National Data Opt-out). Their records are dropped at the connector.
///
/// `Debug` shows only the count. There is no `Default`: an empty list must
/// come from a file that says so, not from a forgotten setting.
#[derive(Clone)]
pub struct OptOutList {
    /// The ten digits as a number: an eighth of the memory of strings, and
    /// nothing printable by accident.
    numbers: HashSet<u64>,
    /// The patients' pseudonyms under one key, made the first time they are
    /// asked for (for events that arrive already pseudonymised).
    pseudonyms: std::sync::OnceLock<(KeyId, HashSet<PseudoId>)>,
}

impl fmt::Debug for OptOutList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptOutList")
            .field("len", &self.numbers.len())
            .finish()
    }
}

impl OptOutList {
    /// Reads a CSV file with the header `nhs_number` and one NHS number a row.
    ///
    /// Any row that is not a valid NHS number is an error, not a skip: a list
    /// that cannot be read exactly must stop the connector rather than let an
    /// opted-out patient through.
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let mut reader = open(path)?;
        let [column] = columns(&mut reader, path, ["nhs_number"], OPT_OUT_HEADER)?;
        let mut numbers = HashSet::new();
        let mut record = csv::StringRecord::new();
        while next_record(&mut reader, &mut record, path)? {
            let line = line_of(&record);
            let invalid = |problem: String| ReferenceError::Invalid {
                path: path.to_path_buf(),
                line,
                field: "nhs_number",
                problem,
            };
            let text = record.get(column).unwrap_or("").trim();
            if text.is_empty() {
                return Err(invalid(
                    "it is empty; fill it in or remove the row".to_string(),
                ));
            }
            // NhsNumberError never repeats the input, so the message is safe to log.
            let nhs = NhsNumber::parse(text).map_err(|e| {
                invalid(format!(
                    "{e}; fix or remove the row (the connector will not start on an opt-out list it cannot read exactly)"
                ))
            })?;
            numbers.insert(as_number(&nhs));
        }
        Ok(Self {
            numbers,
            pseudonyms: Default::default(),
        })
    }

    /// True if this patient opted out.
    pub fn contains(&self, nhs: &NhsNumber) -> bool {
        self.numbers.contains(&as_number(nhs))
    }

    /// True if `patient`, a pseudonym made under `pseudonymiser`'s key, is
    /// that of a patient who opted out. The list's pseudonyms are made once
    /// per key (an HMAC per listed patient) and kept.
    pub fn contains_pseudonym(&self, patient: &PseudoId, pseudonymiser: &Pseudonymiser) -> bool {
        let make = || -> HashSet<PseudoId> {
            self.numbers
                .iter()
                .filter_map(|n| NhsNumber::parse(&format!("{n:010}")).ok())
                .map(|nhs| pseudonymiser.patient(&nhs))
                .collect()
        };
        let (key, ids) = self
            .pseudonyms
            .get_or_init(|| (pseudonymiser.key_id().clone(), make()));
        if key == pseudonymiser.key_id() {
            ids.contains(patient)
        } else {
            make().contains(patient)
        }
    }

    /// How many distinct NHS numbers the list holds.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// True if the list holds no NHS numbers.
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
}

impl FromIterator<NhsNumber> for OptOutList {
    /// Builds a list in memory, for tests of connectors.
    fn from_iter<I: IntoIterator<Item = NhsNumber>>(iter: I) -> Self {
        Self {
            numbers: iter.into_iter().map(|n| as_number(&n)).collect(),
            pseudonyms: Default::default(),
        }
    }
}

fn as_number(nhs: &NhsNumber) -> u64 {
    nhs.expose_digits()
        .bytes()
        .fold(0, |n, digit| n * 10 + u64::from(digit - b'0'))
}

/// Postcode → Index of Multiple Deprivation decile.
///
/// Postcodes are matched without regard to case or spaces. A postcode that is
/// not in the lookup (new builds are often missing) has no decile; `Debug`
/// shows only the count.
#[derive(Clone)]
pub struct DeprivationLookup {
    /// Keyed by [`normalise_postcode`].
    deciles: HashMap<String, Decile>,
}

impl fmt::Debug for DeprivationLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeprivationLookup")
            .field("postcodes", &self.deciles.len())
            .finish()
    }
}

impl DeprivationLookup {
    /// Reads a CSV file with the header `postcode,imd_decile` (columns in any order).
    ///
    /// A row with an empty or malformed postcode, a decile outside 1 to 10, or
    /// a postcode already given a different decile is an error.
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let mut reader = open(path)?;
        let [postcode_col, decile_col] = columns(
            &mut reader,
            path,
            ["postcode", "imd_decile"],
            DEPRIVATION_HEADER,
        )?;
        let mut deciles: HashMap<String, (Decile, u64)> = HashMap::new();
        let mut record = csv::StringRecord::new();
        while next_record(&mut reader, &mut record, path)? {
            let line = line_of(&record);
            let invalid = |field: &'static str, problem: String| ReferenceError::Invalid {
                path: path.to_path_buf(),
                line,
                field,
                problem,
            };
            let postcode = normalise_postcode(record.get(postcode_col).unwrap_or(""));
            if postcode.is_empty() {
                return Err(invalid(
                    "postcode",
                    "it is empty; fill it in or remove the row".to_string(),
                ));
            }
            if !postcode.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "postcode",
                    "a postcode may contain only letters, digits and spaces".to_string(),
                ));
            }
            let decile = parse_decile(record.get(decile_col).unwrap_or(""))
                .map_err(|problem| invalid("imd_decile", problem))?;
            match deciles.get(&postcode) {
                Some(&(seen, first_line)) if seen != decile => {
                    return Err(ReferenceError::ConflictingPostcode {
                        path: path.to_path_buf(),
                        line,
                        first_line,
                    });
                }
                // A repeated row with the same decile says nothing new.
                Some(_) => {}
                None => {
                    deciles.insert(postcode, (decile, line));
                }
            }
        }
        Ok(Self {
            deciles: deciles.into_iter().map(|(p, (d, _))| (p, d)).collect(),
        })
    }

    /// The decile of `postcode` ("QX1 2AB", "qx12ab" and " QX1  2AB " are one
    /// postcode), or `None` when the lookup does not have it.
    pub fn decile(&self, postcode: &str) -> Option<Decile> {
        self.deciles.get(&normalise_postcode(postcode)).copied()
    }

    /// How many postcodes the lookup holds.
    pub fn len(&self) -> usize {
        self.deciles.len()
    }

    /// True if the lookup holds no postcodes.
    pub fn is_empty(&self) -> bool {
        self.deciles.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, Decile)> for DeprivationLookup {
    /// Builds a lookup in memory, for tests of connectors; later pairs win.
    fn from_iter<I: IntoIterator<Item = (&'a str, Decile)>>(iter: I) -> Self {
        Self {
            deciles: iter
                .into_iter()
                .map(|(p, d)| (normalise_postcode(p), d))
                .collect(),
        }
    }
}

/// Upper case without any whitespace, the one form postcodes are compared in.
fn normalise_postcode(postcode: &str) -> String {
    postcode
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn parse_decile(text: &str) -> Result<Decile, String> {
    const RULE: &str = "an IMD decile is a whole number from 1 (most deprived) to 10 (least)";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {RULE}"));
    }
    // Out-of-range numbers are echoed to help the fix; other text is not, as a
    // shifted column could put a postcode here.
    match text.parse::<u64>() {
        Ok(n) => u8::try_from(n)
            .ok()
            .and_then(|n| Decile::new(n).ok())
            .ok_or_else(|| format!("{RULE}; got {n}")),
        Err(_) => Err(format!("{RULE}; got text that is not a whole number")),
    }
}

fn open(path: &Path) -> Result<csv::Reader<File>, ReferenceError> {
    let file = File::open(path).map_err(|error| ReferenceError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file))
}

/// The index of each of `names` in the header, or which one is missing.
fn columns<const N: usize>(
    reader: &mut csv::Reader<File>,
    path: &Path,
    names: [&'static str; N],
    header: &'static str,
) -> Result<[usize; N], ReferenceError> {
    let found = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let mut indexes = [0; N];
    for (index, name) in indexes.iter_mut().zip(names) {
        *index = found
            .iter()
            .position(|h| h == name)
            .ok_or(ReferenceError::MissingColumn {
                path: path.to_path_buf(),
                column: name,
                header,
            })?;
    }
    Ok(indexes)
}

fn next_record(
    reader: &mut csv::Reader<File>,
    record: &mut csv::StringRecord,
    path: &Path,
) -> Result<bool, ReferenceError> {
    reader.read_record(record).map_err(|e| csv_error(path, e))
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

/// Describes a CSV error in our words: the csv crate's own messages are fine
/// today, but a deserialisation message could quote a field.
fn csv_error(path: &Path, error: csv::Error) -> ReferenceError {
    let line = error.position().map(csv::Position::line);
    let problem = match error.kind() {
        csv::ErrorKind::Io(e) => e.to_string(),
        csv::ErrorKind::Utf8 { .. } => "it is not valid UTF-8; save the file as UTF-8".to_string(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "it has {len} fields but the header has {expected_len}; look for a stray comma or quote"
        ),
        _ => "it is not well-formed CSV".to_string(),
    };
    ReferenceError::Malformed {
        path: path.to_path_buf(),
        line,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `contents` to `name` in a fresh directory that lives as long as the guard.
    fn file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        (dir, path)
    }

    fn nhs(text: &str) -> NhsNumber {
        NhsNumber::parse(text).unwrap()
    }

    #[test]
    fn opt_out_list_loads_and_matches() {
        let (_dir, path) = file(
            "national_data_opt_out.csv",
            "nhs_number\n9990000018\n943 476 5919\n\n9990000018\n",
        );
        let list = OptOutList::load(&path).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains(&nhs("9990000018")));
        assert!(list.contains(&nhs("9434765919")));
        assert!(!list.contains(&nhs("9990000026")));
        let shown = format!("{list:?}");
        assert_eq!(shown, "OptOutList { len: 2 }");
    }

    #[test]
    fn opt_out_header_only_is_an_empty_list() {
        let (_dir, path) = file("opt_out.csv", "nhs_number\r\n");
        let list = OptOutList::load(&path).unwrap();
        assert!(list.is_empty());
    }

    #[test]
    fn opt_out_invalid_number_names_file_and_line_not_the_value() {
        let (_dir, path) = file("opt_out.csv", "nhs_number\n9990000018\n9990000019\n");
        let message = OptOutList::load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("line 3, field `nhs_number`"), "{message}");
        assert!(message.contains("check digit"), "{message}");
        assert!(!message.contains("9990000019"), "{message}");
        assert!(!message.contains("999000001"), "{message}");

        let (_dir, path) = file("opt_out.csv", "nhs_number\n9990000018\n   \n");
        let message = OptOutList::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("line 3, field `nhs_number`: it is empty"),
            "{message}"
        );
    }

    #[test]
    fn opt_out_without_header_is_an_error_that_does_not_echo_line_1() {
        let (_dir, path) = file("opt_out.csv", "9990000018\n9434765919\n");
        let message = OptOutList::load(&path).unwrap_err().to_string();
        assert!(message.contains("no column `nhs_number`"), "{message}");
        assert!(
            message.contains("start with the header line `nhs_number`"),
            "{message}"
        );
        assert!(!message.contains("9990000018"), "{message}");

        let (_dir, path) = file("opt_out.csv", "");
        let message = OptOutList::load(&path).unwrap_err().to_string();
        assert!(message.contains("no column `nhs_number`"), "{message}");
    }

    #[test]
    fn opt_out_stray_column_is_malformed_with_line() {
        let (_dir, path) = file("opt_out.csv", "nhs_number\n9990000018\n9434765919,x\n");
        let message = OptOutList::load(&path).unwrap_err().to_string();
        assert!(message.contains("line 3"), "{message}");
        assert!(
            message.contains("2 fields but the header has 1"),
            "{message}"
        );
        assert!(!message.contains("9434765919"), "{message}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.csv");
        for message in [
            OptOutList::load(&path).unwrap_err().to_string(),
            DeprivationLookup::load(&path).unwrap_err().to_string(),
        ] {
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("check the path"), "{message}");
        }
    }

    #[test]
    fn byte_order_mark_before_the_header_is_accepted() {
        let (_dir, path) = file("opt_out.csv", "\u{feff}nhs_number\n9990000018\n");
        assert_eq!(OptOutList::load(&path).unwrap().len(), 1);
    }

    #[test]
    fn deprivation_normalises_postcodes_on_load_and_lookup() {
        let (_dir, path) = file(
            "postcode_deprivation.csv",
            "postcode,imd_decile\nqx1 2ab,3\nQX1 0AA, 10\nQX10AA,10\n",
        );
        let lookup = DeprivationLookup::load(&path).unwrap();
        assert_eq!(lookup.len(), 2);
        let three = Decile::new(3).unwrap();
        for written in ["qx1 2ab", "QX12AB", " QX1  2AB ", "Qx1\t2aB"] {
            assert_eq!(lookup.decile(written), Some(three), "{written}");
        }
        assert_eq!(lookup.decile("qx10aa"), Some(Decile::new(10).unwrap()));
        assert_eq!(lookup.decile("QX9 9ZZ"), None);
        assert_eq!(lookup.decile(""), None);
    }

    #[test]
    fn deprivation_columns_may_come_in_any_order() {
        let (_dir, path) = file("dep.csv", "imd_decile,postcode\n7,QX1 2AB\n");
        let lookup = DeprivationLookup::load(&path).unwrap();
        assert_eq!(lookup.decile("QX12AB"), Some(Decile::new(7).unwrap()));
    }

    #[test]
    fn deprivation_bad_rows_name_file_line_and_field() {
        let cases = [
            ("QX1 2AB,11\n", "line 2, field `imd_decile`", "got 11"),
            ("QX1 2AB,0\n", "line 2, field `imd_decile`", "got 0"),
            ("QX1 2AB,300\n", "line 2, field `imd_decile`", "got 300"),
            ("QX1 2AB,\n", "line 2, field `imd_decile`", "it is empty"),
            (
                "QX1 2AB,QX9 9ZZ\n",
                "line 2, field `imd_decile`",
                "not a whole number",
            ),
            (" ,4\n", "line 2, field `postcode`", "it is empty"),
            (
                "QX1-2AB,4\n",
                "line 2, field `postcode`",
                "only letters, digits",
            ),
        ];
        for (row, place, problem) in cases {
            let (_dir, path) = file("dep.csv", &format!("postcode,imd_decile\n{row}"));
            let message = DeprivationLookup::load(&path).unwrap_err().to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(place), "{row}: {message}");
            assert!(message.contains(problem), "{row}: {message}");
            assert!(!message.contains("QX9 9ZZ"), "{message}");
        }
    }

    #[test]
    fn deprivation_conflicting_duplicate_is_an_error() {
        let (_dir, path) = file(
            "dep.csv",
            "postcode,imd_decile\nQX1 2AB,3\nQX1 0AA,4\nqx12ab,5\n",
        );
        let message = DeprivationLookup::load(&path).unwrap_err().to_string();
        assert!(message.contains("line 4, field `postcode`"), "{message}");
        assert!(message.contains("already on line 2"), "{message}");
    }

    #[test]
    fn deprivation_missing_column_says_which_header() {
        let (_dir, path) = file("dep.csv", "postcode,decile\nQX1 2AB,3\n");
        let message = DeprivationLookup::load(&path).unwrap_err().to_string();
        assert!(message.contains("no column `imd_decile`"), "{message}");
        assert!(message.contains("`postcode,imd_decile`"), "{message}");
    }

    #[test]
    fn in_memory_builders_match_loaded_behaviour() {
        let list: OptOutList = [nhs("9990000018")].into_iter().collect();
        assert!(list.contains(&nhs("999 000 0018")));
        let lookup: DeprivationLookup =
            [("qx1 2ab", Decile::new(2).unwrap())].into_iter().collect();
        assert_eq!(lookup.decile("QX12AB"), Decile::new(2).ok());
        assert_eq!(format!("{lookup:?}"), "DeprivationLookup { postcodes: 1 }");
    }
}
