//! Disclosure control for files that leave the system: the OpenSAFELY rule,
//! as a pure function over Arrow batches. [`crate::extract`] applies it to
//! an extract's result before writing; nothing here reads or writes files.
//!
//! Which columns are counts is declared ([`DisclosureSpec`]), never guessed
//! from values. The rule, in order:
//!
//! 1. **Primary suppression.** Every count of 7 or fewer (including 0) is
//!    redacted: it becomes null.
//! 2. **Secondary suppression.** A declared total and the cells it sums form
//!    a *group*: a total column with its part columns, in one row; or, for
//!    each count column, a total row with the rows it sums (rows sharing its
//!    `within` values). Treating every shown count as exactly known (a
//!    reader knows only rounded values, so this is conservative), the
//!    redacted cells are unknowns and each group is one linear equation
//!    `total = sum of parts`. A redacted cell is *recoverable* when those
//!    equations fix its value: by subtraction within one group (the group
//!    has exactly one redacted cell) or by chains of them across rows and
//!    columns. While any redacted cell is recoverable, one more cell in one
//!    of its groups is redacted: the smallest shown part, or the total when
//!    every part is already redacted. This repeats until no redacted cell
//!    can be recovered.
//! 3. **Rounding.** Every count left is rounded to the nearest multiple of
//!    5 (each cell on its own: a rounded total need not equal the sum of its
//!    rounded parts).
//! 4. **Rates and percentages** are recomputed from the rounded counts
//!    (`numerator / denominator * scale`); null when either count is
//!    redacted or the denominator is 0.
//!
//! Recoverability is decided exactly: the equations' matrix is reduced over
//! a prime field, and an unknown is fixed by them iff its reduced row is the
//! unit vector. For totals over one or two dimensions the matrix is totally
//! unimodular, so the prime field gives the rational answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

/// Counts at or below this are redacted.
pub const REDACT_AT_OR_BELOW: i64 = 7;
/// Counts left are rounded to a multiple of this.
pub const ROUND_TO: i64 = 5;

/// Which columns of a result are counts, rates and totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosureSpec {
    /// Columns holding counts (integers): redacted or rounded.
    #[serde(default)]
    pub count_columns: Vec<String>,
    /// Columns holding rates or percentages, recomputed from rounded counts.
    #[serde(default)]
    pub rate_columns: Vec<RateColumn>,
    /// Count columns that are the sum of other count columns in their row.
    #[serde(default)]
    pub total_columns: Vec<TotalColumn>,
    /// Rows that are the sum of other rows, marked by a label.
    #[serde(default)]
    pub total_rows: Option<TotalRows>,
}

/// A rate column: `numerator / denominator * scale` (100 for a percentage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateColumn {
    pub column: String,
    /// A declared count column.
    pub numerator: String,
    /// A declared count column.
    pub denominator: String,
    #[serde(default = "default_scale")]
    pub scale: f64,
}

fn default_scale() -> f64 {
    1.0
}

/// A count column that is the sum of `parts` (count columns) in each row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalColumn {
    pub column: String,
    pub parts: Vec<String>,
}

/// Rows whose `column` reads `value` (e.g. `specialty = 'Total'`) hold, in
/// each count column, the sum of the other rows with the same values in the
/// `within` columns (e.g. the same provider; none: every other row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalRows {
    pub column: String,
    pub value: String,
    #[serde(default)]
    pub within: Vec<String>,
}

/// Why disclosure control could not be applied; nothing should be written.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DisclosureError {
    #[error(
        "disclosure control: column {0:?} is declared but not in the result (result columns: {1})"
    )]
    MissingColumn(String, String),
    #[error(
        "disclosure control: count column {column:?} is {data_type}, not an integer; cast it to BIGINT in the SQL"
    )]
    NotACount { column: String, data_type: String },
    #[error("disclosure control: {0}")]
    Spec(String),
    #[error("disclosure control: {0}")]
    Arrow(String),
}

/// What disclosure control did, for the manifest and the notes sheet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DisclosureReport {
    /// Counts of 7 or fewer, redacted.
    pub redacted_small: usize,
    /// Counts redacted so that no redacted count can be recovered from totals.
    pub redacted_secondary: usize,
    /// Counts shown, rounded to the nearest 5.
    pub rounded: usize,
}

impl DisclosureSpec {
    /// Checks the declarations against each other (not against a result).
    pub fn validate(&self) -> Result<(), DisclosureError> {
        let counts: BTreeSet<&str> = self.count_columns.iter().map(String::as_str).collect();
        if counts.len() != self.count_columns.len() {
            return Err(DisclosureError::Spec(
                "a column is listed twice in count_columns".into(),
            ));
        }
        for r in &self.rate_columns {
            for (role, c) in [("numerator", &r.numerator), ("denominator", &r.denominator)] {
                if !counts.contains(c.as_str()) {
                    return Err(DisclosureError::Spec(format!(
                        "rate column {:?}: its {role} {c:?} must be one of count_columns",
                        r.column
                    )));
                }
            }
            if counts.contains(r.column.as_str()) {
                return Err(DisclosureError::Spec(format!(
                    "{:?} is declared both a count and a rate",
                    r.column
                )));
            }
        }
        for t in &self.total_columns {
            if t.parts.is_empty() {
                return Err(DisclosureError::Spec(format!(
                    "total column {:?} has no parts",
                    t.column
                )));
            }
            for c in std::iter::once(&t.column).chain(&t.parts) {
                if !counts.contains(c.as_str()) {
                    return Err(DisclosureError::Spec(format!(
                        "total column {:?}: {c:?} must be one of count_columns",
                        t.column
                    )));
                }
            }
        }
        Ok(())
    }

    /// The rule as applied with this declaration, one sentence a line, for
    /// the manifest and the notes sheet.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "Counts ({}) of {REDACT_AT_OR_BELOW} or fewer, including zero, are redacted (left blank).",
                self.count_columns.join(", ")
            ),
            format!(
                "Every other count is rounded to the nearest multiple of {ROUND_TO}, each on its own, so totals need not equal the sum of their rounded parts."
            ),
        ];
        for t in &self.total_columns {
            lines.push(format!(
                "{} is the total of {}: where a redacted count could be recovered from it by subtraction, a further count is redacted.",
                t.column,
                t.parts.join(", ")
            ));
        }
        if let Some(t) = &self.total_rows {
            let within = if t.within.is_empty() {
                String::new()
            } else {
                format!(" with the same {}", t.within.join(", "))
            };
            lines.push(format!(
                "Rows with {} = {:?} total the other rows{within}: where a redacted count could be recovered from them by subtraction, a further count is redacted.",
                t.column, t.value
            ));
        }
        for r in &self.rate_columns {
            lines.push(format!(
                "{} is computed from the rounded counts as {} / {} x {}; blank where either count is redacted or the denominator is 0.",
                r.column, r.numerator, r.denominator, r.scale
            ));
        }
        lines
    }
}

/// Applies the rule to `batches` (all of `schema`), returning one batch
/// with count columns as nullable Int64 and rate columns as Float64.
pub fn apply(
    spec: &DisclosureSpec,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(RecordBatch, DisclosureReport), DisclosureError> {
    spec.validate()?;
    let batch =
        concat_batches(schema, batches).map_err(|e| DisclosureError::Arrow(e.to_string()))?;
    let column_index = |name: &str| {
        schema.index_of(name).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            DisclosureError::MissingColumn(name.to_string(), names.join(", "))
        })
    };
    let n = batch.num_rows();

    // The counts, by declared column, and whether each cell is redacted.
    let mut values: BTreeMap<&str, Vec<Option<i64>>> = BTreeMap::new();
    for name in &spec.count_columns {
        let column = batch.column(column_index(name)?);
        values.insert(name.as_str(), read_counts(name, column)?);
    }
    let mut cells: Vec<Cell> = Vec::new();
    let mut cell_of: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for (name, vs) in &values {
        for (row, v) in vs.iter().enumerate() {
            if let Some(v) = v {
                cell_of.insert((name, row), cells.len());
                cells.push(Cell {
                    value: *v,
                    redacted: *v <= REDACT_AT_OR_BELOW,
                });
            }
        }
    }
    let redacted_small = cells.iter().filter(|c| c.redacted).count();

    let groups = groups(spec, &batch, &column_index, &cell_of, n)?;
    protect(&mut cells, &groups);
    let redacted_total = cells.iter().filter(|c| c.redacted).count();

    // Rounded counts, and rates from them.
    let shown = |name: &str, row: usize| -> Option<i64> {
        let &i = cell_of.get(&(name, row))?;
        let c = &cells[i];
        (!c.redacted).then(|| round(c.value))
    };
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in &spec.count_columns {
        let i = column_index(name)?;
        let array: Int64Array = (0..n).map(|r| shown(name, r)).collect();
        columns[i] = Arc::new(array);
        fields[i] = Field::new(name, DataType::Int64, true);
    }
    for rate in &spec.rate_columns {
        let i = column_index(&rate.column)?;
        let array: Float64Array = (0..n)
            .map(|r| {
                let num = shown(&rate.numerator, r)?;
                let den = shown(&rate.denominator, r)?;
                (den != 0).then(|| num as f64 / den as f64 * rate.scale)
            })
            .collect();
        columns[i] = Arc::new(array);
        fields[i] = Field::new(&rate.column, DataType::Float64, true);
    }
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DisclosureError::Arrow(e.to_string()))?;
    let report = DisclosureReport {
        redacted_small,
        redacted_secondary: redacted_total - redacted_small,
        rounded: cells.len() - redacted_total,
    };
    Ok((out, report))
}

/// A count rounded to the nearest multiple of [`ROUND_TO`] (never a tie:
/// counts are integers and the step is odd).
pub fn round(v: i64) -> i64 {
    (v as f64 / ROUND_TO as f64).round() as i64 * ROUND_TO
}

#[derive(Debug, Clone)]
struct Cell {
    value: i64,
    redacted: bool,
}

/// One equation: the cell `total` equals the sum of the cells `parts`.
#[derive(Debug, Clone)]
struct Group {
    total: usize,
    parts: Vec<usize>,
}

impl Group {
    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.total).chain(self.parts.iter().copied())
    }
}

fn read_counts(name: &str, column: &ArrayRef) -> Result<Vec<Option<i64>>, DisclosureError> {
    let integral = match column.data_type() {
        t if t.is_integer() => true,
        DataType::Decimal128(_, 0) | DataType::Decimal256(_, 0) => true,
        DataType::Null => true,
        _ => false,
    };
    if !integral {
        return Err(DisclosureError::NotACount {
            column: name.to_string(),
            data_type: column.data_type().to_string(),
        });
    }
    let cast = cast(column, &DataType::Int64).map_err(|e| DisclosureError::Arrow(e.to_string()))?;
    Ok(cast.as_primitive::<Int64Type>().iter().collect())
}

/// The equations the declared totals make. A null count takes no part.
fn groups(
    spec: &DisclosureSpec,
    batch: &RecordBatch,
    column_index: &dyn Fn(&str) -> Result<usize, DisclosureError>,
    cell_of: &BTreeMap<(&str, usize), usize>,
    n: usize,
) -> Result<Vec<Group>, DisclosureError> {
    let mut out = Vec::new();
    let cell = |name: &str, row: usize| cell_of.get(&(name, row)).copied();
    for t in &spec.total_columns {
        for row in 0..n {
            if let Some(total) = cell(&t.column, row) {
                let parts = t.parts.iter().filter_map(|p| cell(p, row)).collect();
                out.push(Group { total, parts });
            }
        }
    }
    if let Some(t) = &spec.total_rows {
        let options = FormatOptions::default().with_null("");
        let text = |name: &str| -> Result<Vec<String>, DisclosureError> {
            let column = batch.column(column_index(name)?);
            let f = ArrayFormatter::try_new(column.as_ref(), &options)
                .map_err(|e| DisclosureError::Arrow(e.to_string()))?;
            Ok((0..n).map(|r| f.value(r).to_string()).collect())
        };
        let label = text(&t.column)?;
        let within: Vec<Vec<String>> =
            t.within.iter().map(|c| text(c)).collect::<Result<_, _>>()?;
        let key = |r: usize| -> Vec<&str> { within.iter().map(|c| c[r].as_str()).collect() };
        let total_rows: Vec<usize> = (0..n).filter(|&r| label[r] == t.value).collect();
        for &tr in &total_rows {
            let part_rows: Vec<usize> = (0..n)
                .filter(|&r| label[r] != t.value && key(r) == key(tr))
                .collect();
            for name in &spec.count_columns {
                if let Some(total) = cell(name, tr) {
                    let parts = part_rows.iter().filter_map(|&r| cell(name, r)).collect();
                    out.push(Group { total, parts });
                }
            }
        }
    }
    Ok(out)
}

/// Redacts further cells until no redacted cell is fixed by the groups.
fn protect(cells: &mut [Cell], groups: &[Group]) {
    let mut groups_of: Vec<Vec<usize>> = vec![Vec::new(); cells.len()];
    for (g, group) in groups.iter().enumerate() {
        for m in group.members() {
            groups_of[m].push(g);
        }
    }
    while let Some(exposed) = recoverable(cells, groups).into_iter().next() {
        // The cheapest cell to give up: the smallest shown part in one of
        // the exposed cell's groups, else a shown total.
        let pick = |cells: &[Cell], parts_only: bool| {
            groups_of[exposed]
                .iter()
                .flat_map(|&g| {
                    let group = &groups[g];
                    let parts = group.parts.iter().copied();
                    let total = (!parts_only).then_some(group.total);
                    parts.chain(total)
                })
                .filter(|&c| !cells[c].redacted)
                .min_by_key(|&c| (cells[c].value, c))
        };
        match pick(cells, true).or_else(|| pick(cells, false)) {
            Some(c) => cells[c].redacted = true,
            // Every cell the exposed one shares a group with is redacted, yet
            // it is fixed through a chain: give up the exposed cell's
            // neighbours' neighbours by redacting any shown cell in a group
            // that mentions a redacted cell (rare; keeps the loop finite).
            None => {
                let any = groups
                    .iter()
                    .filter(|g| g.members().any(|m| cells[m].redacted))
                    .flat_map(|g| g.members())
                    .filter(|&m| !cells[m].redacted)
                    .min_by_key(|&c| (cells[c].value, c));
                match any {
                    Some(c) => cells[c].redacted = true,
                    None => break,
                }
            }
        }
    }
}

const P: u64 = (1 << 61) - 1;

fn mul(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) % P as u128) as u64
}

fn inverse(a: u64) -> u64 {
    // Fermat: a^(p-2).
    let (mut base, mut exp, mut acc) = (a, P - 2, 1u64);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}

/// The redacted cells whose values the groups fix, given every shown cell.
fn recoverable(cells: &[Cell], groups: &[Group]) -> Vec<usize> {
    let unknowns: Vec<usize> = (0..cells.len()).filter(|&c| cells[c].redacted).collect();
    if unknowns.is_empty() {
        return Vec::new();
    }
    let index: BTreeMap<usize, usize> = unknowns.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    // Each group's row over the unknowns: +1 for the total, -1 for a part.
    let mut rows: Vec<BTreeMap<usize, u64>> = groups
        .iter()
        .map(|g| {
            let mut row = BTreeMap::new();
            if let Some(&i) = index.get(&g.total) {
                row.insert(i, 1);
            }
            for p in &g.parts {
                if let Some(&i) = index.get(p) {
                    let e = row.entry(i).or_insert(0);
                    *e = (*e + P - 1) % P;
                }
            }
            row.retain(|_, v| *v != 0);
            row
        })
        .filter(|r| !r.is_empty())
        .collect();
    // Reduced row echelon form, sparse.
    let mut pivots: Vec<(usize, BTreeMap<usize, u64>)> = Vec::new();
    for mut row in rows.drain(..) {
        for (col, prow) in &pivots {
            if let Some(&f) = row.get(col) {
                for (&k, &v) in prow {
                    let e = row.entry(k).or_insert(0);
                    *e = (*e + P - mul(f, v)) % P;
                }
                row.retain(|_, v| *v != 0);
            }
        }
        let Some((&col, &lead)) = row.iter().next() else {
            continue;
        };
        let inv = inverse(lead);
        for v in row.values_mut() {
            *v = mul(*v, inv);
        }
        for (_, prow) in pivots.iter_mut() {
            if let Some(&f) = prow.get(&col) {
                for (&k, &v) in &row {
                    let e = prow.entry(k).or_insert(0);
                    *e = (*e + P - mul(f, v)) % P;
                }
                prow.retain(|_, v| *v != 0);
            }
        }
        pivots.push((col, row));
    }
    let mut fixed: Vec<usize> = pivots
        .iter()
        .filter(|(_, row)| row.len() == 1)
        .map(|(col, _)| unknowns[*col])
        .collect();
    fixed.sort_unstable();
    fixed
}

#[cfg(test)]
// Grids read more clearly indexed by (row, column).
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};

    fn spec(counts: &[&str]) -> DisclosureSpec {
        DisclosureSpec {
            count_columns: counts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ints(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
        let i = batch.schema().index_of(name).unwrap();
        batch.column(i).as_primitive::<Int64Type>().iter().collect()
    }

    /// The redacted cells of a two-way table with row and column totals
    /// that the totals fix, found independently of `recoverable`: rows and
    /// columns are nodes, redacted cells edges. A cell on a cycle is not
    /// fixed (add +1/-1 alternately round the cycle: every total holds); a
    /// cell that is a bridge is (sum the equations of one side).
    fn bridges(redacted: &[Vec<bool>]) -> Vec<(usize, usize)> {
        let (rows, cols) = (redacted.len(), redacted[0].len());
        let connected = |skip: (usize, usize)| {
            let mut seen = vec![false; rows + cols];
            let mut stack = vec![skip.0];
            seen[skip.0] = true;
            while let Some(node) = stack.pop() {
                let next: Vec<usize> = if node < rows {
                    (0..cols)
                        .filter(|&c| redacted[node][c] && (node, c) != skip)
                        .map(|c| rows + c)
                        .collect()
                } else {
                    let c = node - rows;
                    (0..rows)
                        .filter(|&r| redacted[r][c] && (r, c) != skip)
                        .collect()
                };
                for m in next {
                    if !seen[m] {
                        seen[m] = true;
                        stack.push(m);
                    }
                }
            }
            seen[rows + skip.1]
        };
        let mut exposed = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                if redacted[r][c] && !connected((r, c)) {
                    exposed.push((r, c));
                }
            }
        }
        exposed
    }

    /// The acceptance table: counts 0 to 20 in a 3 x 7 grid by area and
    /// week, with a total column and a total row.
    fn table() -> (SchemaRef, RecordBatch, DisclosureSpec) {
        let weeks: Vec<String> = (1..=7).map(|w| format!("w{w}")).collect();
        let mut area = Vec::new();
        let mut cols: Vec<Vec<i32>> = vec![Vec::new(); 8];
        let grid: Vec<Vec<i32>> = (0..3)
            .map(|r| (0..7).map(|c| r * 7 + c).collect())
            .collect();
        for (r, row) in grid.iter().enumerate() {
            area.push(format!("area{r}"));
            for (c, v) in row.iter().enumerate() {
                cols[c].push(*v);
            }
            cols[7].push(row.iter().sum());
        }
        area.push("Total".into());
        for c in 0..8 {
            let s: i32 = cols[c].iter().sum();
            cols[c].push(s);
        }
        let mut fields = vec![Field::new("area", DataType::Utf8, false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(area))];
        for (c, w) in weeks
            .iter()
            .chain(std::iter::once(&"total".to_string()))
            .enumerate()
        {
            fields.push(Field::new(w, DataType::Int32, false));
            arrays.push(Arc::new(Int32Array::from(cols[c].clone())));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        let mut counts: Vec<&str> = weeks.iter().map(String::as_str).collect();
        counts.push("total");
        let mut s = spec(&counts);
        s.total_columns = vec![TotalColumn {
            column: "total".into(),
            parts: weeks.clone(),
        }];
        s.total_rows = Some(TotalRows {
            column: "area".into(),
            value: "Total".into(),
            within: vec![],
        });
        (schema, batch, s)
    }

    #[test]
    fn counts_0_to_20_with_totals_are_redacted_rounded_and_not_recoverable() {
        let (schema, batch, spec) = table();
        let (out, report) = apply(&spec, &schema, std::slice::from_ref(&batch)).unwrap();
        let names: Vec<String> = spec.count_columns.clone();
        let mut redacted = vec![vec![false; names.len()]; batch.num_rows()];
        for (c, name) in names.iter().enumerate() {
            let before = batch
                .column(schema.index_of(name).unwrap())
                .as_primitive::<arrow::datatypes::Int32Type>()
                .values()
                .to_vec();
            for (r, after) in ints(&out, name).into_iter().enumerate() {
                let v = before[r] as i64;
                match after {
                    None => redacted[r][c] = true,
                    Some(a) => {
                        assert!(v > 7, "{name} row {r}: {v} is shown as {a}");
                        assert_eq!(a % 5, 0, "{name} row {r}: {a} not a multiple of 5");
                        assert!((a - v).abs() <= 2, "{name} row {r}: {v} rounded to {a}");
                    }
                }
            }
        }
        // Every count 0..=7 is redacted.
        for r in 0..3 {
            for c in 0..7 {
                if r * 7 + c <= 7 {
                    assert!(redacted[r][c], "count {} shown", r * 7 + c);
                }
            }
        }
        // Independently: no redacted cell is fixed by the row and column
        // totals; with the small counts alone redacted, some would be.
        assert_eq!(bridges(&redacted), Vec::<(usize, usize)>::new());
        let small_only: Vec<Vec<bool>> = (0..batch.num_rows())
            .map(|r| {
                names
                    .iter()
                    .map(|name| {
                        let c = batch.column(schema.index_of(name).unwrap());
                        c.as_primitive::<arrow::datatypes::Int32Type>().value(r) <= 7
                    })
                    .collect()
            })
            .collect();
        assert!(!bridges(&small_only).is_empty());
        assert_eq!(report.redacted_small, 8);
        assert!(report.redacted_secondary > 0);
    }

    #[test]
    fn one_small_cell_beside_a_total_takes_the_next_smallest_with_it() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
            Field::new("c", DataType::Int64, false),
            Field::new("all", DataType::Int64, false),
        ]));
        let col = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
        let batch =
            RecordBatch::try_new(schema.clone(), vec![col(3), col(40), col(12), col(55)]).unwrap();
        let mut s = spec(&["a", "b", "c", "all"]);
        s.total_columns = vec![TotalColumn {
            column: "all".into(),
            parts: vec!["a".into(), "b".into(), "c".into()],
        }];
        let (out, report) = apply(&s, &schema, &[batch]).unwrap();
        assert_eq!(ints(&out, "a"), [None]);
        assert_eq!(ints(&out, "c"), [None], "the next smallest goes too");
        assert_eq!(ints(&out, "b"), [Some(40)]);
        assert_eq!(ints(&out, "all"), [Some(55)]);
        assert_eq!((report.redacted_small, report.redacted_secondary), (1, 1));
    }

    #[test]
    fn without_totals_only_small_counts_go_and_rates_use_rounded_counts() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("seen", DataType::Int64, true),
            Field::new("referred", DataType::Int64, true),
            Field::new("pct", DataType::Float64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(12), Some(103), Some(9), None])),
                Arc::new(Int64Array::from(vec![Some(5), Some(52), Some(9), Some(3)])),
                Arc::new(Float64Array::from(vec![0.41, 0.50, 1.0, 0.0])),
                Arc::new(StringArray::from(vec!["x", "y", "z", "w"])),
            ],
        )
        .unwrap();
        let mut s = spec(&["seen", "referred"]);
        s.rate_columns = vec![RateColumn {
            column: "pct".into(),
            numerator: "referred".into(),
            denominator: "seen".into(),
            scale: 100.0,
        }];
        let (out, _) = apply(&s, &schema, &[batch]).unwrap();
        assert_eq!(ints(&out, "seen"), [Some(10), Some(105), Some(10), None]);
        assert_eq!(ints(&out, "referred"), [None, Some(50), Some(10), None]);
        let pct: Vec<Option<f64>> = out
            .column(2)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .iter()
            .collect();
        assert_eq!(pct[0], None);
        assert!((pct[1].unwrap() - 5000.0 / 105.0).abs() < 1e-9);
        assert_eq!(pct[2], Some(100.0));
        assert_eq!(pct[3], None);
        assert_eq!(out.column(3).as_string::<i32>().value(0), "x");
    }

    #[test]
    fn rounding_goes_to_the_nearest_multiple_of_5() {
        let got: Vec<i64> = [8, 9, 10, 12, 13, 17, 18, 20, 1002].map(round).to_vec();
        assert_eq!(got, [10, 10, 10, 10, 15, 15, 20, 20, 1000]);
    }

    #[test]
    fn counts_are_declared_and_must_be_integers() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Float64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Float64Array::from(vec![3.0]))],
        )
        .unwrap();
        let e = apply(&spec(&["n"]), &schema, std::slice::from_ref(&batch)).unwrap_err();
        assert!(e.to_string().contains("cast it to BIGINT"), "{e}");
        let e = apply(&spec(&["m"]), &schema, &[batch]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"m\" is declared but not in the result"),
            "{e}"
        );
        let mut s = spec(&["n"]);
        s.rate_columns = vec![RateColumn {
            column: "r".into(),
            numerator: "n".into(),
            denominator: "d".into(),
            scale: 1.0,
        }];
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("denominator \"d\"")
        );
    }

    #[test]
    fn totals_within_a_group_protect_each_provider_separately() {
        // Two providers, each with specialties and a Total row.
        let schema = Arc::new(Schema::new(vec![
            Field::new("provider", DataType::Utf8, false),
            Field::new("specialty", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["A", "A", "A", "A", "B", "B", "B"])),
                Arc::new(StringArray::from(vec![
                    "110", "120", "130", "Total", "110", "120", "Total",
                ])),
                Arc::new(Int64Array::from(vec![4, 30, 21, 55, 50, 60, 110])),
            ],
        )
        .unwrap();
        let mut s = spec(&["n"]);
        s.total_rows = Some(TotalRows {
            column: "specialty".into(),
            value: "Total".into(),
            within: vec!["provider".into()],
        });
        let (out, report) = apply(&s, &schema, &[batch]).unwrap();
        assert_eq!(
            ints(&out, "n"),
            [
                None,
                Some(30),
                None,
                Some(55),
                Some(50),
                Some(60),
                Some(110)
            ]
        );
        assert_eq!(report.redacted_secondary, 1);
    }
}
