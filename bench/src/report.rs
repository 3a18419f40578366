//! Collects per-run values and prints the Markdown table.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The three columns of a table: the baseline every ratio is taken against,
/// a reference, and the subject (sockfwd) whose targets are checked.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    /// Column titles: baseline, reference, subject.
    pub titles: [&'static str; 3],
    /// Whether the table also shows the subject's ratio to the reference.
    pub subject_to_reference: bool,
}

/// Index of the baseline column.
pub const BASELINE: usize = 0;
/// Index of the reference column (socat, the minimal relay).
pub const REFERENCE: usize = 1;
/// Index of the subject column (sockfwd).
pub const SUBJECT: usize = 2;

/// Median of an already sorted, non-empty slice (0 if empty).
pub fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median, minimum and maximum of a series.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Stats {
    /// None for an empty series.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self {
            median: median_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }

    fn cell(&self, prec: usize) -> String {
        let f = |x: f64| format_num(x, prec);
        if self.n < 2 || f(self.min) == f(self.max) {
            f(self.median)
        } else {
            format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
        }
    }
}

/// Fixed decimals, with thin thousands grouping for large integers.
fn format_num(x: f64, prec: usize) -> String {
    let s = format!("{x:.prec$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && digits.len() > 4 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A target, checked against the subject (sockfwd) column.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Median ratio to direct at least this.
    RatioAtLeast(f64),
    /// Median ratio to direct at most this.
    RatioAtMost(f64),
    /// Median ratio to the reference column (taken per run) at least this.
    RefRatioAtLeast(f64),
    /// Median value at least this.
    AtLeast(f64),
    /// Median value at most this.
    AtMost(f64),
    /// Median value strictly below this.
    Below(f64),
    /// Every run exactly this.
    Exactly(f64),
}

/// One table row.
pub struct Row {
    /// Key the values were recorded under.
    pub key: &'static str,
    /// Text of the first column.
    pub label: String,
    /// Unit, for target display.
    pub unit: &'static str,
    /// Decimals.
    pub prec: usize,
    /// Whether the ratio columns apply.
    pub ratio: bool,
    /// The target, if an issue sets one.
    pub target: Option<Target>,
}

/// Per-run values of every figure, per column, and the per-run ratios to the baseline.
#[derive(Default)]
pub struct Results {
    values: HashMap<&'static str, [Vec<f64>; 3]>,
    ratios: HashMap<&'static str, [Vec<f64>; 3]>,
    /// Per-run subject ÷ reference.
    ref_ratios: HashMap<&'static str, Vec<f64>>,
}

impl Results {
    /// Records one run of a figure for the columns measured; the ratios use the
    /// baseline value of this same run.
    pub fn record(&mut self, key: &'static str, run: [Option<f64>; 3]) {
        let values = self.values.entry(key).or_default();
        let ratios = self.ratios.entry(key).or_default();
        let direct = run[BASELINE];
        for (i, v) in run.iter().enumerate() {
            if let Some(v) = *v {
                values[i].push(v);
                if let Some(d) = direct.filter(|d| *d > 0.0) {
                    ratios[i].push(v / d);
                }
            }
        }
        if let (Some(s), Some(r)) = (run[SUBJECT], run[REFERENCE].filter(|r| *r > 0.0)) {
            self.ref_ratios.entry(key).or_default().push(s / r);
        }
    }

    /// Stats of one column's values of a figure.
    pub fn stats(&self, key: &str, col: usize) -> Option<Stats> {
        self.values.get(key).and_then(|v| Stats::of(v.get(col)?))
    }

    fn ratio(&self, key: &str, col: usize) -> Option<Stats> {
        self.ratios.get(key).and_then(|v| Stats::of(v.get(col)?))
    }

    fn ref_ratio(&self, key: &str) -> Option<Stats> {
        self.ref_ratios.get(key).and_then(|v| Stats::of(v))
    }

    fn verdict(&self, row: &Row, cols: &Columns) -> (String, &'static str) {
        let [base, reference, _] = cols.titles;
        let Some(t) = row.target else {
            return (String::new(), "");
        };
        let unit = if row.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", row.unit)
        };
        let ratio = self.ratio(row.key, SUBJECT);
        let value = self.stats(row.key, SUBJECT);
        let (text, met) = match t {
            Target::RatioAtLeast(x) => (format!("≥ {x}× {base}"), ratio.map(|r| r.median >= x)),
            Target::RatioAtMost(x) => (format!("≤ {x}× {base}"), ratio.map(|r| r.median <= x)),
            Target::RefRatioAtLeast(x) => (
                format!("≥ {x}× {reference}"),
                self.ref_ratio(row.key).map(|r| r.median >= x),
            ),
            Target::AtLeast(x) => (format!("≥ {x}{unit}"), value.map(|v| v.median >= x)),
            Target::AtMost(x) => (format!("≤ {x}{unit}"), value.map(|v| v.median <= x)),
            Target::Below(x) => (format!("< {x}{unit}"), value.map(|v| v.median < x)),
            Target::Exactly(x) => (
                format!("{x}{unit}"),
                value.map(|v| v.min == x && v.max == x),
            ),
        };
        (
            text,
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
        )
    }

    /// The Markdown table for `rows` (rows without any value are left out).
    pub fn table(&self, rows: &[Row], cols: &Columns) -> String {
        let [base, reference, subject] = cols.titles;
        let mut out = String::new();
        let extra = if cols.subject_to_reference {
            format!(" {subject} ÷ {reference} |")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| figure | {base} | {reference} | {subject} | {reference} ÷ {base} | {subject} ÷ {base} |{extra} target ({subject}) | met |"
        );
        let extra_align = if cols.subject_to_reference {
            "---:|"
        } else {
            ""
        };
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|{extra_align}---|:-:|");
        for row in rows {
            let cells: Vec<Option<Stats>> = (0..3).map(|c| self.stats(row.key, c)).collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let cell =
                |s: &Option<Stats>, prec| s.map(|s| s.cell(prec)).unwrap_or_else(|| "—".into());
            let ratio = |p| {
                if row.ratio {
                    cell(&self.ratio(row.key, p), 2)
                } else {
                    "—".into()
                }
            };
            let (target, met) = self.verdict(row, cols);
            let extra = if !cols.subject_to_reference {
                String::new()
            } else if row.ratio {
                format!(" {} |", cell(&self.ref_ratio(row.key), 2))
            } else {
                " — |".into()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |{extra} {} | {} |",
                row.label,
                cell(&cells[0], row.prec),
                cell(&cells[1], row.prec),
                cell(&cells[2], row.prec),
                ratio(REFERENCE),
                ratio(SUBJECT),
                target,
                met
            );
        }
        out
    }

    /// (met, missed) target counts for the rows shown.
    pub fn tally(&self, rows: &[Row], cols: &Columns) -> (usize, usize) {
        rows.iter()
            .fold((0, 0), |(m, x), row| match self.verdict(row, cols).1 {
                "yes" => (m + 1, x),
                "**no**" => (m, x + 1),
                _ => (m, x),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_cells() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(s.cell(1), "2.5 (1.0–10.0)");
        assert_eq!(format_num(12345.0, 0), "12,345");
        assert_eq!(format_num(1234.5, 1), "1234.5");
        assert_eq!(format_num(-98765.25, 2), "-98,765.25");
    }

    #[test]
    fn ratios_use_the_same_run() {
        let mut r = Results::default();
        r.record("x", [Some(10.0), Some(5.0), Some(2.0)]);
        r.record("x", [Some(20.0), Some(5.0), Some(8.0)]);
        let row = Row {
            key: "x",
            label: "x".into(),
            unit: "",
            prec: 1,
            ratio: true,
            target: Some(Target::RatioAtLeast(0.29)),
        };
        let cols = Columns {
            titles: ["direct", "socat", "sockfwd"],
            subject_to_reference: false,
        };
        assert!((r.ratio("x", SUBJECT).unwrap().median - 0.3).abs() < 1e-9);
        assert_eq!(r.verdict(&row, &cols).1, "yes");
        let t = r.table(&[row], &cols);
        assert!(t.contains("| 0.30 (0.20–0.40) |"), "{t}");
    }

    #[test]
    fn ratios_to_the_reference_use_the_same_run_and_show_met_or_missed() {
        let mut r = Results::default();
        r.record("tp", [Some(100.0), Some(50.0), Some(40.0)]);
        r.record("tp", [Some(100.0), Some(40.0), Some(40.0)]);
        r.record("tp", [Some(100.0), Some(60.0), Some(57.0)]);
        let row = |target| Row {
            key: "tp",
            label: "tp".into(),
            unit: "",
            prec: 1,
            ratio: true,
            target: Some(target),
        };
        let cols = Columns {
            titles: ["raw", "min", "sf"],
            subject_to_reference: true,
        };
        // Per run: 0.8, 1.0, 0.95; median 0.95.
        assert_eq!(
            r.verdict(&row(Target::RefRatioAtLeast(0.9)), &cols).1,
            "yes"
        );
        assert_eq!(
            r.verdict(&row(Target::RefRatioAtLeast(0.96)), &cols).1,
            "**no**"
        );
        let t = r.table(&[row(Target::RefRatioAtLeast(0.9))], &cols);
        assert!(t.contains("| sf ÷ min |"), "{t}");
        assert!(t.contains("| 0.95 (0.80–1.00) | ≥ 0.9× min | yes |"), "{t}");
        assert_eq!(r.verdict(&row(Target::AtLeast(40.0)), &cols).1, "yes");
        assert_eq!(r.verdict(&row(Target::AtLeast(41.0)), &cols).1, "**no**");
    }
}
