//! `meridianctl top`: where traffic goes right now. Scrapes each gateway's `/metrics` twice,
//! an interval apart, and prints per (source cluster, service, destination cluster,
//! locality) the request and connection rates, the share, errors and p99 (from histogram
//! bucket deltas), beside the split the gateway's engine computes for that locality
//! (`meridian_api::split`, the engine `simulate` and `explain` run), read from the same
//! gateway's `/config_dump`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::time::{Duration, Instant};

use crate::explain::parse_hostname;
use crate::exposition::{self, Sample};
use crate::render::{self, Output};

/// Arguments of `meridianctl top`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only this global service, `<name>.<namespace>.global` (its pinned VIPs included).
    service: Option<String>,
    /// Only the traffic sent by this cluster's gateway.
    #[arg(long)]
    cluster: Option<String>,
    /// A gateway's `/config_dump` listener (it serves `/metrics` too), e.g.
    /// http://127.0.0.1:15000 through `kubectl port-forward`; repeat for each cluster.
    #[arg(long = "gateway", value_name = "URL", required = true)]
    gateways: Vec<String>,
    /// Seconds between the two scrapes a rate is computed from, and between refreshes.
    #[arg(long, default_value = "2", value_parser = parse_interval)]
    interval: f64,
    /// Print one view (after one interval) and exit, instead of refreshing.
    #[arg(long)]
    once: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: seconds between 0.1 and 3600")),
    }
}

/// Series names read from a gateway.
const REQUESTS: &str = "meridian_gateway_requests_total";
const CONNECTIONS: &str = "meridian_gateway_connections_total";
const RESPONSES: &str = "meridian_gateway_responses_total";
const DURATION_BUCKETS: &str = "meridian_gateway_request_duration_seconds_bucket";

/// A row's identity: traffic from a cluster to a destination cluster and locality.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    source: String,
    service: String,
    cluster: String,
    locality: String,
}

/// Cumulative counters of one row at one scrape.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: f64,
    connections: f64,
    errors: f64,
    /// Cumulative bucket counts by upper bound (`le`), summed over ports.
    buckets: BTreeMap<Bound, f64>,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);
impl Eq for Bound {}
impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What one gateway said at one instant.
#[derive(Debug)]
struct Scrape {
    /// The gateway's cluster.
    cluster: String,
    /// Traffic counters by row.
    counters: BTreeMap<Key, Counters>,
    /// Percent per locality the engine computes, per service.
    splits: BTreeMap<String, BTreeMap<String, f64>>,
    /// The cluster of each locality's endpoints, per service (for rows without traffic).
    clusters: BTreeMap<String, BTreeMap<String, String>>,
    at: Instant,
}

async fn scrape(url: &str) -> anyhow::Result<Scrape> {
    let dump = crate::admin::get_json(url, "/config_dump").await?;
    let text = crate::admin::get_text(url, "/metrics").await?;
    let at = Instant::now();
    let cluster = dump["cluster"]
        .as_str()
        .ok_or_else(|| anyhow!("{url}/config_dump names no cluster: is this a Meridian gateway?"))?
        .to_owned();
    Ok(Scrape {
        counters: counters(&exposition::parse(&text)),
        splits: splits(&dump),
        clusters: locality_clusters(&dump),
        cluster,
        at,
    })
}

/// Sums the series a row is made of; ports are added up.
fn counters(samples: &[Sample]) -> BTreeMap<Key, Counters> {
    let mut out: BTreeMap<Key, Counters> = BTreeMap::new();
    for s in samples {
        let key = || Key {
            source: s.label("source_cluster").to_owned(),
            service: s.label("service").to_owned(),
            cluster: s.label("cluster").to_owned(),
            locality: s.label("locality").to_owned(),
        };
        match s.name.as_str() {
            REQUESTS => out.entry(key()).or_default().requests += s.value,
            // The tunnel server's view of the same flows is the destination's report.
            CONNECTIONS if s.label("reporter") == "source" => {
                out.entry(key()).or_default().connections += s.value;
            }
            RESPONSES if s.label("class") == "5xx" => {
                out.entry(key()).or_default().errors += s.value;
            }
            DURATION_BUCKETS => {
                let le = match s.label("le") {
                    "+Inf" => f64::INFINITY,
                    v => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                };
                *out.entry(key())
                    .or_default()
                    .buckets
                    .entry(Bound(le))
                    .or_default() += s.value;
            }
            _ => {}
        }
    }
    out
}

/// The split of every destination (subset) 0 in the dump: percent per locality.
fn splits(dump: &Value) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (service, s) in dump["splits"].as_object().into_iter().flatten() {
        let mut percents: BTreeMap<String, f64> = BTreeMap::new();
        for g in s["destinations"][0]["groups"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let locality = g["locality"].as_str().unwrap_or_default().to_owned();
            *percents.entry(locality).or_default() += g["percent"].as_f64().unwrap_or(0.0);
        }
        out.insert(service.clone(), percents);
    }
    out
}

/// Per service, the cluster of each locality's endpoints (the first, if several).
fn locality_clusters(dump: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in dump["snapshot"]["services"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let hostname = s["hostname"].as_str().unwrap_or_default();
        let map = out.entry(hostname.to_owned()).or_default();
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if let (Some(l), Some(c)) = (e["locality"].as_str(), e["cluster"].as_str()) {
                map.entry(l.to_owned()).or_insert_with(|| c.to_owned());
            }
        }
    }
    out
}

/// The increase of a counter between two scrapes (a restarted gateway starts from 0).
fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The 0.99 quantile of the observations between two scrapes of a histogram, with
/// Prometheus' `histogram_quantile` interpolation; `None` without observations.
fn p99(before: &BTreeMap<Bound, f64>, after: &BTreeMap<Bound, f64>) -> Option<f64> {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, v)| (le.0, increase(before.get(le).copied().unwrap_or(0.0), *v)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = 0.99 * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in deltas {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * fraction);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One row of the view.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Row {
    /// The cluster whose gateway sent the traffic.
    pub source: String,
    /// The service hostname (a pinned VIP's own).
    pub service: String,
    /// The destination endpoints' cluster.
    pub cluster: String,
    /// Their locality.
    pub locality: String,
    /// HTTP requests per second (attempts, retries included).
    pub requests_per_second: f64,
    /// TCP connections per second.
    pub connections_per_second: f64,
    /// Percent of this source's requests (or connections, for TCP) to the service.
    pub share: f64,
    /// 5xx responses per second.
    pub errors_per_second: f64,
    /// p99 request duration over the interval, seconds.
    pub p99_seconds: Option<f64>,
    /// Percent the engine gives this locality from the source's locality.
    pub split_percent: Option<f64>,
}

/// A gateway and whether it could be read.
#[derive(Debug, Serialize)]
pub(crate) struct Gateway {
    /// The URL given.
    pub url: String,
    /// Its cluster, when read.
    pub cluster: Option<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// The whole view (the `-o json` document).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct View {
    /// Seconds between the scrapes the rates come from.
    pub interval_seconds: f64,
    /// Every gateway asked.
    pub gateways: Vec<Gateway>,
    /// Traffic rows, by source, service, destination.
    pub rows: Vec<Row>,
}

/// Which services a row may show.
struct Filter {
    /// `<name>.<namespace>.global`.
    hostname: Option<String>,
}

impl Filter {
    fn matches(&self, service: &str) -> bool {
        self.hostname.as_deref().is_none_or(|h| {
            service == h || service.strip_suffix(h).is_some_and(|p| p.ends_with('.'))
        })
    }
}

/// The rows of one gateway between two of its scrapes.
fn rows(before: &Scrape, after: &Scrape, filter: &Filter) -> Vec<Row> {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let empty = Counters::default();
    let mut rows: Vec<Row> = Vec::new();
    for (key, now) in &after.counters {
        if key.source != after.cluster || !filter.matches(&key.service) {
            continue;
        }
        let then = before.counters.get(key).unwrap_or(&empty);
        rows.push(Row {
            source: key.source.clone(),
            service: key.service.clone(),
            cluster: key.cluster.clone(),
            locality: key.locality.clone(),
            requests_per_second: increase(then.requests, now.requests) / seconds,
            connections_per_second: increase(then.connections, now.connections) / seconds,
            share: 0.0,
            errors_per_second: increase(then.errors, now.errors) / seconds,
            p99_seconds: p99(&then.buckets, &now.buckets),
            split_percent: None,
        });
    }
    // Localities the engine gives traffic to but that saw none are shown too.
    let services: Vec<String> = rows.iter().map(|r| r.service.clone()).collect();
    for (service, percents) in &after.splits {
        // Those of a service with traffic, or of the service asked for (not its pinned VIPs).
        if !services.contains(service) && filter.hostname.as_ref() != Some(service) {
            continue;
        }
        for (locality, percent) in percents {
            if *percent > 0.0
                && !rows
                    .iter()
                    .any(|r| &r.service == service && &r.locality == locality)
            {
                let cluster = after
                    .clusters
                    .get(service)
                    .and_then(|m| m.get(locality))
                    .cloned()
                    .unwrap_or_else(|| "-".to_owned());
                rows.push(Row {
                    source: after.cluster.clone(),
                    service: service.clone(),
                    cluster,
                    locality: locality.clone(),
                    requests_per_second: 0.0,
                    connections_per_second: 0.0,
                    share: 0.0,
                    errors_per_second: 0.0,
                    p99_seconds: None,
                    split_percent: None,
                });
            }
        }
    }
    // Shares within each service, and the engine's percent for each locality.
    let mut totals: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in &rows {
        let t = totals.entry(r.service.clone()).or_default();
        t.0 += r.requests_per_second;
        t.1 += r.connections_per_second;
    }
    for r in &mut rows {
        let (requests, connections) = totals.get(&r.service).copied().unwrap_or_default();
        r.share = if requests > 0.0 {
            100.0 * r.requests_per_second / requests
        } else if connections > 0.0 {
            100.0 * r.connections_per_second / connections
        } else {
            0.0
        };
        r.split_percent = after
            .splits
            .get(&r.service)
            .map(|p| p.get(&r.locality).copied().unwrap_or(0.0));
    }
    rows.sort_by(|a, b| {
        (&a.service, &a.cluster, &a.locality).cmp(&(&b.service, &b.cluster, &b.locality))
    });
    rows
}

fn table(view: &View) -> String {
    let header = [
        "SOURCE",
        "SERVICE",
        "DESTINATION",
        "LOCALITY",
        "REQ/S",
        "CONN/S",
        "SHARE",
        "SPLIT",
        "ERR/S",
        "P99",
    ];
    let rows = view
        .rows
        .iter()
        .map(|r| {
            vec![
                r.source.clone(),
                r.service.clone(),
                r.cluster.clone(),
                r.locality.clone(),
                format!("{:.1}", r.requests_per_second),
                format!("{:.1}", r.connections_per_second),
                format!("{:.1}%", r.share),
                r.split_percent
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
                format!("{:.1}", r.errors_per_second),
                r.p99_seconds
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s * 1000.0)),
            ]
        })
        .collect();
    let mut out = render::table(&header, rows);
    for g in &view.gateways {
        if let Some(e) = &g.error {
            out.push_str(&format!("gateway {}: {e}\n", g.url));
        }
    }
    out
}

/// Scrapes every gateway; a gateway that cannot be read is reported, not fatal.
async fn scrape_all(urls: &[String]) -> Vec<(String, anyhow::Result<Scrape>)> {
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        out.push((url.clone(), scrape(url).await));
    }
    out
}

/// Runs `meridianctl top`.
pub(crate) async fn run(args: &Args, output: Output) -> anyhow::Result<()> {
    let filter = Filter {
        hostname: match &args.service {
            Some(s) => {
                let (name, ns) = parse_hostname(s)?;
                Some(format!("{name}.{ns}.global"))
            }
            None => None,
        },
    };
    let interval = Duration::from_secs_f64(args.interval);
    let mut before = scrape_all(&args.gateways).await;
    if before.iter().all(|(_, s)| s.is_err()) {
        let errors: Vec<String> = before
            .iter()
            .filter_map(|(u, s)| s.as_ref().err().map(|e| format!("{u}: {e:#}")))
            .collect();
        bail!("no gateway could be read: {}", errors.join("; "));
    }
    if let Some(cluster) = &args.cluster {
        let known: Vec<&str> = before
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok().map(|s| s.cluster.as_str()))
            .collect();
        if !known.contains(&cluster.as_str()) {
            bail!(
                "--cluster {cluster}: no --gateway of that cluster (have: {})",
                known.join(", ")
            );
        }
    }
    loop {
        tokio::time::sleep(interval).await;
        let after = scrape_all(&args.gateways).await;
        let mut view = View {
            interval_seconds: args.interval,
            gateways: Vec::new(),
            rows: Vec::new(),
        };
        for ((url, then), (_, now)) in before.iter().zip(&after) {
            match (then, now) {
                (Ok(then), Ok(now)) => {
                    view.gateways.push(Gateway {
                        url: url.clone(),
                        cluster: Some(now.cluster.clone()),
                        error: None,
                    });
                    if args.cluster.as_ref().is_none_or(|c| c == &now.cluster) {
                        view.rows.extend(rows(then, now, &filter));
                    }
                }
                (_, Err(e)) | (Err(e), _) => view.gateways.push(Gateway {
                    url: url.clone(),
                    cluster: None,
                    error: Some(format!("{e:#}")),
                }),
            }
        }
        match output {
            Output::Table if args.once => print!("{}", table(&view)),
            Output::Table => {
                // Clear the screen and home the cursor: a refreshing view, as top(1).
                println!(
                    "\x1b[2J\x1b[H{}every {}s, Ctrl-C to quit",
                    table(&view),
                    args.interval
                );
            }
            _ => render::print_structured(&view, output)?,
        }
        if args.once {
            return Ok(());
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(counts: &[(f64, f64)]) -> BTreeMap<Bound, f64> {
        counts.iter().map(|(le, c)| (Bound(*le), *c)).collect()
    }

    #[test]
    fn p99_interpolates_within_the_bucket_of_the_rank() {
        let inf = f64::INFINITY;
        let before = buckets(&[(0.1, 10.0), (0.2, 10.0), (inf, 10.0)]);
        // 100 new observations: 50 up to 0.1 s, 50 in (0.1, 0.2].
        let after = buckets(&[(0.1, 60.0), (0.2, 110.0), (inf, 110.0)]);
        let p = p99(&before, &after).unwrap();
        assert!((p - 0.198).abs() < 1e-9, "{p}");
        assert_eq!(p99(&after, &after), None, "no observation in the interval");
        // The rank in +Inf: the highest finite bound, as histogram_quantile says.
        let slow = buckets(&[(0.1, 0.0), (inf, 5.0)]);
        assert_eq!(p99(&BTreeMap::new(), &slow), Some(0.1));
    }

    #[test]
    fn counters_restart_from_zero() {
        assert_eq!(increase(10.0, 15.0), 5.0);
        assert_eq!(increase(10.0, 3.0), 3.0);
    }

    #[test]
    fn service_filter_takes_pinned_vips() {
        let f = Filter {
            hostname: Some("user.demo.global".into()),
        };
        assert!(f.matches("user.demo.global"));
        assert!(f.matches("east.user.demo.global"));
        assert!(!f.matches("xuser.demo.global"));
        assert!(!f.matches("web.demo.global"));
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("NaN").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
