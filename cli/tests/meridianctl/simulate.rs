//! `meridianctl simulate`: the locality split printed for scenarios, and bad input.

use std::io::Write;

use serde_json::Value;

use super::support::meridianctl;

fn scenario(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn split(path: &str) -> Vec<(String, u64, f64)> {
    let out = meridianctl(&["simulate", "-f", path, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let rows: Vec<(String, u64, f64)> = v["localities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["locality"].as_str().unwrap().to_owned(),
                l["priority"].as_u64().unwrap(),
                l["percent"].as_f64().unwrap(),
            )
        })
        .collect();
    let sum: f64 = rows.iter().map(|r| r.2).sum();
    assert!((sum - 100.0).abs() <= 0.1, "percents sum to {sum}");
    rows
}

fn percents(path: &str) -> Vec<f64> {
    split(path).into_iter().map(|r| r.2).collect()
}

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios");

#[test]
fn seed_scenarios() {
    let p = |f: &str| percents(&format!("{SEEDS}/{f}"));
    assert_eq!(p("01-local-zone-10-of-14.yaml"), [100.0, 0.0]);
    assert_eq!(p("02-local-zone-5-of-14.yaml"), [50.0, 50.0]);
    assert_eq!(p("03-local-zone-down.yaml"), [0.0, 100.0]);
    assert_eq!(p("04-health-20-30-no-panic.yaml"), [40.0, 60.0]);
    assert_eq!(p("05-health-20-30-panic.yaml"), [50.0, 50.0]);
    assert_eq!(p("06-distribute-50-50.yaml"), [50.0, 50.0]);
    assert_eq!(p("07-failover-three-regions.yaml"), [0.0, 100.0, 0.0]);
    assert_eq!(p("08-drain-40-percent.yaml"), [37.5, 62.5]);
}

#[test]
fn json_names_priority_and_panic() {
    let rows = split(&format!("{SEEDS}/02-local-zone-5-of-14.yaml"));
    assert_eq!(rows[1], ("sh/200002".to_owned(), 1, 50.0));
    let out = meridianctl(&[
        "simulate",
        "-f",
        &format!("{SEEDS}/05-health-20-30-panic.yaml"),
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["panic"], Value::Bool(true));
}

#[test]
fn table_explains_each_share() {
    let out = meridianctl(&[
        "simulate",
        "-f",
        &format!("{SEEDS}/07-failover-three-regions.yaml"),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("failover[0] region"), "{text}");
    assert!(text.contains("P1=100%"), "{text}");
}

#[test]
fn thirds_still_sum_to_100() {
    let f = scenario(
        "caller: a/z0\nlocalities:\n  - {locality: a/z0, total: 3, healthy: 0}\n  - {locality: a/z1, total: 3, healthy: 3}\n  - {locality: a/z2, total: 3, healthy: 3}\n  - {locality: a/z3, total: 3, healthy: 3}\n",
    );
    assert_eq!(percents(f.path().to_str().unwrap()).len(), 4);
}

/// Every kind of bad input: exit code 2 and one line naming the field; never a panic.
#[test]
fn bad_input_is_one_clear_line() {
    let cases = [
        ("caller: sh/a\nbogus: 1\nlocalities: []\n", "bogus"),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 14, healthy: 15}\n",
            "localities[0].healthy",
        ),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh//a, total: 1, healthy: 1}\n",
            "localities[0].locality",
        ),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1, weight: -1}\n",
            "localities[0].weight",
        ),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: -1, healthy: 1}\n",
            "localities[0].total",
        ),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1, colour: red}\n",
            "colour",
        ),
        (
            "caller: a/b/c/d\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
            "caller",
        ),
        (
            "caller: sh/a\npanicThreshold: 101\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
            "panicThreshold",
        ),
        (
            "caller: sh/a\nlocalityLbSetting: {distribute: [{from: sh, to: {sh/a: 10}}]}\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1}\n",
            "localityLbSetting.distribute[0].to",
        ),
        (
            "caller: sh/a\nlocalities:\n  - {locality: sh/a, total: 1, healthy: 1, drain: 1.5}\n",
            "localities[0].drain",
        ),
        ("caller: sh/a\nlocalities: [\n", ""),
        ("caller: sh/a\n", "localities"),
    ];
    for (text, field) in cases {
        let f = scenario(text);
        let out = meridianctl(&["simulate", "-f", f.path().to_str().unwrap(), "-o", "json"]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{text:?} → {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{text:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line for {text:?}: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(field),
            "{text:?}: {stderr}"
        );
    }
    let out = meridianctl(&["simulate", "-f", "/nonexistent/scenario.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}
