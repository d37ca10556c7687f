//! Output: tables, JSON/YAML, and the traffic split shared by `simulate` and `explain`.

use meridian_api::split::{Group, Split};
use serde::Serialize;

/// How results are printed (`-o`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON (one line) or YAML.
pub(crate) fn print_structured<T: Serialize>(value: &T, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        _ => println!("{}", serde_json::to_string(value)?),
    }
    Ok(())
}

/// A left-aligned table with two spaces between columns, kubectl style.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &all {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row of the JSON form: `{"locality","priority","percent"}`.
#[derive(Debug, Serialize)]
pub(crate) struct ShareJson {
    /// `region/zone[/subzone]`.
    pub locality: String,
    /// Envoy priority after compaction.
    pub priority: u32,
    /// Percent of traffic, two decimals.
    pub percent: f64,
}

/// The JSON form of a split: `{"localities":[...],"panic":bool}`.
#[derive(Debug, Serialize)]
pub(crate) struct SplitJson {
    /// One entry per input group, in input order.
    pub localities: Vec<ShareJson>,
    /// Whether any priority that receives traffic is in panic.
    pub panic: bool,
}

/// Percents rounded to two decimals, the rounding residue given to the largest share so
/// that the printed figures still sum to 100 when the real ones do.
pub(crate) fn rounded_percents(split: &Split) -> Vec<f64> {
    let mut out: Vec<f64> = split
        .groups
        .iter()
        .map(|g| (g.percent * 100.0).round() / 100.0)
        .collect();
    let real: f64 = split.groups.iter().map(|g| g.percent).sum();
    let printed: f64 = out.iter().sum();
    if let Some((i, _)) = out.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
        out[i] = ((out[i] + real - printed) * 100.0).round() / 100.0;
    }
    out
}

/// Whether any priority that receives traffic is in panic.
pub(crate) fn in_panic(split: &Split) -> bool {
    split.priorities.iter().any(|p| p.panic && p.load > 0)
}

/// The JSON form of `split` over `groups`.
pub(crate) fn split_json(groups: &[Group], split: &Split) -> SplitJson {
    let localities = groups
        .iter()
        .zip(&split.groups)
        .zip(rounded_percents(split))
        .map(|((g, s), percent)| ShareJson {
            locality: g.locality.to_string(),
            priority: s.priority,
            percent,
        })
        .collect();
    SplitJson {
        localities,
        panic: in_panic(split),
    }
}

/// A fixed-width table with the reason for every share.
pub(crate) fn split_table(groups: &[Group], split: &Split) -> String {
    let header = [
        "LOCALITY", "PRIORITY", "REASON", "HEALTHY", "HEALTH", "WEIGHT", "PANIC", "PERCENT",
    ];
    let mut rows = Vec::new();
    for ((g, s), percent) in groups
        .iter()
        .zip(&split.groups)
        .zip(rounded_percents(split))
    {
        let mut locality = g.locality.to_string();
        if !g.labels.is_empty() {
            let labels: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            locality = format!("{locality} {{{}}}", labels.join(","));
        }
        if g.drain > 0 {
            locality = format!("{locality} (drained {}%)", f64::from(g.drain) / 10.0);
        }
        rows.push(vec![
            locality,
            format!("P{}", s.priority),
            s.tier.to_string(),
            format!("{}/{}", g.healthy, g.total),
            format!("{}%", s.health),
            format!("{}", (s.weight * 100.0).round() / 100.0),
            if s.panic { "yes".into() } else { "no".into() },
            format!("{percent:.2}%"),
        ]);
    }
    let mut out = table(&header, rows);
    let loads: Vec<String> = split
        .priorities
        .iter()
        .enumerate()
        .map(|(i, p)| format!("P{i}={}%{}", p.load, if p.panic { " (panic)" } else { "" }))
        .collect();
    out.push_str(&format!(
        "priority load: {}; normalized total health {}%{}\n",
        loads.join(" "),
        split.normalized_total_health,
        if split.total_panic {
            "; every priority in panic: split by host count"
        } else {
            ""
        }
    ));
    out
}
