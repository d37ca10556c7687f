//! Reading the Prometheus text the binaries serve on `/metrics`, for tests.

use std::net::SocketAddr;

use crate::error::Result;
use crate::traffic::http_get;

/// The `/metrics` text served on `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    Ok(http_get(addr, "/metrics", &[]).await?.text())
}

/// The value of one series, named exactly as exposed (`name` or `name{label="value",…}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The sum of every `name` series whose labels include each `(label, value)` of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            // Anchored on `{` or `,`, so `cluster` does not match `source_cluster`.
            labels.iter().all(|(k, v)| {
                let pair = format!("{k}=\"{v}\"");
                l.contains(&format!("{{{pair}")) || l.contains(&format!(",{pair}"))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP requests Requests.
# TYPE requests counter
requests_total{code="200",cluster="east"} 3
requests_total{code="200",cluster="west"} 4
requests_total{code="503",cluster="west"} 1
requests_total{code="200",source_cluster="west",cluster="east"} 5
requests_total_other 9
up 1
"#;

    #[test]
    fn sums_matching_series() {
        assert_eq!(sum(TEXT, "requests_total", &[]), 13.0);
        assert_eq!(sum(TEXT, "requests_total", &[("code", "200")]), 12.0);
        // A label is matched whole: `cluster` is not `source_cluster`.
        assert_eq!(sum(TEXT, "requests_total", &[("cluster", "west")]), 5.0);
        assert_eq!(
            sum(TEXT, "requests_total", &[("source_cluster", "west")]),
            5.0
        );
        assert_eq!(
            sum(
                TEXT,
                "requests_total",
                &[("code", "503"), ("cluster", "west")]
            ),
            1.0
        );
        assert_eq!(sum(TEXT, "missing", &[]), 0.0);
    }

    #[test]
    fn reads_one_series() {
        assert_eq!(sample(TEXT, "up"), Some(1.0));
        assert_eq!(
            sample(TEXT, r#"requests_total{code="200",cluster="west"}"#),
            Some(4.0)
        );
        assert_eq!(sample(TEXT, "requests"), None);
    }
}
