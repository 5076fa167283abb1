//! Samples per measured line, their percentiles, the result file (one line
//! per measurement, tab-separated) and the side-by-side table of two runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// One measured line: its samples in the line's unit.
#[derive(Default)]
pub struct Line {
    pub unit: &'static str,
    pub values: Vec<f64>,
}

/// Every line of one run, in the order they were first recorded.
#[derive(Default)]
pub struct Results {
    order: Vec<String>,
    lines: BTreeMap<String, Line>,
}

impl Results {
    pub fn add(&mut self, name: &str, unit: &'static str, value: f64) {
        let line = self.lines.entry(name.to_string()).or_insert_with(|| {
            self.order.push(name.to_string());
            Line {
                unit,
                values: Vec::new(),
            }
        });
        line.values.push(value);
    }

    pub fn time(&mut self, name: &str, d: Duration) {
        self.add(name, "ms", d.as_secs_f64() * 1000.0);
    }

    pub fn merge(&mut self, other: Results) {
        for name in other.order {
            let line = &other.lines[&name];
            for v in &line.values {
                self.add(&name, line.unit, *v);
            }
        }
    }

    /// `name \t unit \t p50 \t p95 \t max \t n` per line.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut out = String::new();
        for name in &self.order {
            let line = &self.lines[name];
            let s = Summary::of(&line.values);
            writeln!(
                out,
                "{name}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}",
                line.unit, s.p50, s.p95, s.max, s.n
            )?;
        }
        std::fs::write(path, out).with_context(|| format!("write {}", path.display()))
    }
}

pub struct Summary {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// Nearest-rank percentiles.
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().unwrap_or(f64::NAN)
        };
        Summary {
            p50: rank(0.50),
            p95: rank(0.95),
            max: v.last().copied().unwrap_or(f64::NAN),
            n: v.len(),
        }
    }
}

struct Row {
    unit: String,
    p50: f64,
    p95: f64,
    max: f64,
}

fn read(path: &Path) -> anyhow::Result<Vec<(String, Row)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut rows = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split('\t').collect();
        let [name, unit, p50, p95, max, _n] = f[..] else {
            anyhow::bail!("{}: bad line {l:?}", path.display());
        };
        rows.push((
            name.to_string(),
            Row {
                unit: unit.to_string(),
                p50: p50.parse()?,
                p95: p95.parse()?,
                max: max.parse()?,
            },
        ));
    }
    Ok(rows)
}

/// The sequential RunPodSandbox and StopPodSandbox p50s less the
/// conflist's plugins' own ADD and DEL p50s: what the runtime adds around
/// the configured network (for containerd, its loopback plugin call too).
fn cni_overhead(rows: &mut Vec<(String, Row)>, cni: &[(String, Row)]) {
    let p50 = |rows: &[(String, Row)], prefix: &str| {
        rows.iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, r)| r.p50)
    };
    let pairs = [
        (
            "RunPodSandbox",
            "CNI plugins ADD (conflist)",
            "RunPodSandbox minus the plugins' ADD",
        ),
        (
            "StopPodSandbox (empty pod)",
            "CNI plugins DEL (conflist)",
            "StopPodSandbox (empty pod) minus the plugins' DEL",
        ),
    ];
    for (rpc, plugins, name) in pairs {
        if let (Some(a), Some(b)) = (p50(rows, rpc), p50(cni, plugins)) {
            let d = a - b;
            rows.push((
                name.into(),
                Row {
                    unit: "ms".into(),
                    p50: d,
                    p95: d,
                    max: d,
                },
            ));
        }
    }
}

/// A markdown table: every line of `a` (and the lines only `b` has), p50
/// of each side (p95 and max after it) and the ratio a/b of the p50s; the
/// lines of `cni` (the plugins alone) at the end, with the runtimes' pod
/// setup and teardown less the plugins' time.
pub fn compare(
    a: &Path,
    b: &Path,
    cni: Option<&Path>,
    a_name: &str,
    b_name: &str,
) -> anyhow::Result<String> {
    let mut left = read(a)?;
    let mut right = read(b)?;
    let plugins = cni.map(read).transpose()?.unwrap_or_default();
    cni_overhead(&mut left, &plugins);
    cni_overhead(&mut right, &plugins);
    let right: BTreeMap<String, Row> = right.into_iter().collect();
    let mut out = String::new();
    writeln!(
        out,
        "| line | unit | {a_name} p50 (p95, max) | {b_name} p50 (p95, max) | ratio |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    let cell = |r: Option<&Row>| match r {
        Some(r) if r.p50 == r.max => format!("{:.1}", r.p50),
        Some(r) => format!("{:.1} ({:.1}, {:.1})", r.p50, r.p95, r.max),
        None => "-".into(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for (name, l) in &left {
        seen.insert(name.clone());
        let r = right.get(name);
        let ratio = r
            .filter(|r| r.p50 > 0.0)
            .map(|r| format!("{:.2}", l.p50 / r.p50))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "| {name} | {} | {} | {} | {ratio} |",
            l.unit,
            cell(Some(l)),
            cell(r)
        )?;
    }
    for (name, r) in &right {
        if !seen.contains(name) {
            writeln!(out, "| {name} | {} | - | {} | - |", r.unit, cell(Some(r)))?;
        }
    }
    for (name, r) in &plugins {
        writeln!(
            out,
            "| {name} (no runtime) | {} | {} | {} | - |",
            r.unit,
            cell(Some(r)),
            cell(Some(r))
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.p50, s.p95, s.max, s.n), (10.0, 19.0, 20.0, 20));
        let s = Summary::of(&[3.0]);
        assert_eq!((s.p50, s.p95, s.max), (3.0, 3.0, 3.0));
    }
}
