//! The demo's live table: one row per second with where the requests that finished in that
//! second were answered, next to the split the caller's gateway computes (its
//! `/config_dump`), plus per-step totals over the steady part of each step.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_testbed::traffic::{Tally, http_get};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::load::{Event, Phase};

/// How long a row waits for the gateway's `/config_dump` before printing without it.
const DUMP_TIMEOUT: Duration = Duration::from_millis(500);

/// A column of the table: a cluster and the `region/zone` its endpoints carry.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    /// Cluster name.
    pub cluster: String,
    /// `region/zone`, the locality prefix of the cluster's endpoints.
    pub locality: String,
}

/// Consumes the request stream's events and prints the table while the demo works.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<Column>,
    host: String,
    gateway_admin: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    phase: watch::Sender<Phase>,
    started: Instant,
    ticks: Interval,
    second: Tally,
    steady: BTreeMap<usize, Tally>,
    in_flight: BTreeMap<Phase, usize>,
}

impl Table {
    /// A table over `columns` for requests to `host`, reading the split from the gateway
    /// admin address `gateway_admin`. `phase` stamps requests as they are sent.
    pub(crate) fn new(
        columns: Vec<Column>,
        host: &str,
        gateway_admin: SocketAddr,
        events: mpsc::UnboundedReceiver<Event>,
        phase: watch::Sender<Phase>,
    ) -> Table {
        let mut ticks = tokio::time::interval_at(
            Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Table {
            columns,
            host: host.to_owned(),
            gateway_admin,
            events,
            phase,
            started: Instant::now(),
            ticks,
            second: Tally::default(),
            steady: BTreeMap::new(),
            in_flight: BTreeMap::new(),
        }
    }

    /// Stamps requests sent from now on with `phase`.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Prints the column headings.
    pub(crate) fn print_header(&self) {
        let mut line = format!("  {:>5} ", "time");
        for c in &self.columns {
            // Names right-aligned over the counts of the cells below.
            line.push_str(&format!(" {:>4}{:7}", c.cluster, ""));
        }
        line.push_str(&format!(
            " {:>6}   split computed by the caller's gateway",
            "failed"
        ));
        println!("{line}");
    }

    /// Keeps the table going (counting, one row per second) until `work` finishes.
    pub(crate) async fn run_until<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                Some(event) = self.events.recv() => self.record(event),
                _ = self.ticks.tick() => self.print_row().await,
            }
        }
    }

    /// Waits (still printing rows) until every request sent in the steady part of `step`
    /// has finished, and returns where they were answered.
    pub(crate) async fn steady_total(&mut self, step: usize) -> Tally {
        let phase = Phase { step, steady: true };
        // Count what is already queued first, so no request sent in the window is missed.
        while let Ok(event) = self.events.try_recv() {
            self.record(event);
        }
        while self.in_flight.get(&phase).copied().unwrap_or(0) > 0 {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => self.record(event),
                    None => break,
                },
                _ = self.ticks.tick() => self.print_row().await,
            }
        }
        self.steady.get(&step).cloned().unwrap_or_default()
    }

    /// `east 100 (100%) · west 0 (0%) · … · failed 0` for `tally`.
    pub(crate) fn describe(&self, tally: &Tally) -> String {
        let total = tally.answered() + tally.failed;
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let n = tally.from(&c.cluster);
                format!("{} {n} ({:.0}%)", c.cluster, percent(n, total))
            })
            .collect();
        parts.push(format!("failed {}", tally.failed));
        parts.join(" · ")
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Sent(phase) => *self.in_flight.entry(phase).or_default() += 1,
            Event::Done(phase, reply) => {
                if let Some(n) = self.in_flight.get_mut(&phase) {
                    *n = n.saturating_sub(1);
                }
                if phase.steady {
                    self.steady
                        .entry(phase.step)
                        .or_default()
                        .record(reply.clone());
                }
                self.second.record(reply);
            }
        }
    }

    async fn print_row(&mut self) {
        let tally = std::mem::take(&mut self.second);
        let total = tally.answered() + tally.failed;
        let mut line = format!("  {:>4}s ", self.started.elapsed().as_secs());
        for c in &self.columns {
            let n = tally.from(&c.cluster);
            if total == 0 {
                line.push_str(&format!(" {:>4}{:7}", "-", ""));
            } else {
                line.push_str(&format!(" {n:>4} ({:>3.0}%)", percent(n, total)));
            }
        }
        // Anything answered by a cluster outside the table would be a bug worth seeing.
        let others = tally.answered()
            - self
                .columns
                .iter()
                .map(|c| tally.from(&c.cluster))
                .sum::<usize>();
        line.push_str(&format!(" {:>6}   ", tally.failed + others));
        line.push_str(&self.expected_split().await);
        println!("{line}");
    }

    /// The split east's gateway computes right now, per cluster.
    async fn expected_split(&self) -> String {
        let dump = tokio::time::timeout(
            DUMP_TIMEOUT,
            http_get(self.gateway_admin, "/config_dump", &[]),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok());
        let Some(dump) = dump else {
            return "(gateway admin not answering)".into();
        };
        let Some(groups) = dump["splits"][&self.host]["destinations"][0]["groups"].as_array()
        else {
            return format!("(no split for {} yet)", self.host);
        };
        let mut shares: BTreeMap<&str, f64> = BTreeMap::new();
        let mut panic = false;
        for g in groups {
            let locality = g["locality"].as_str().unwrap_or_default();
            panic |= g["panic"].as_bool().unwrap_or(false);
            if let Some(c) = self.columns.iter().find(|c| {
                locality == c.locality || locality.starts_with(&format!("{}/", c.locality))
            }) {
                *shares.entry(c.cluster.as_str()).or_default() +=
                    g["percent"].as_f64().unwrap_or(0.0);
            }
        }
        let mut out: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let p = shares.get(c.cluster.as_str()).copied().unwrap_or(0.0);
                format!("{} {p:.0}%", c.cluster)
            })
            .collect();
        if panic {
            out.push("(panic mode)".into());
        }
        out.join(" · ")
    }
}

fn percent(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    }
}
