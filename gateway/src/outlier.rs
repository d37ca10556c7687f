//! Passive outlier detection per endpoint, with Envoy's semantics and Istio's field names.
//!
//! - `consecutive5xxErrors` (default 5): that many 5xx responses in a row eject the
//!   endpoint; a failed connection counts as a 5xx (Envoy folds local-origin failures in),
//!   which is how TCP ports detect outliers.
//! - `consecutiveGatewayErrors` (default off): 502, 503, 504 and failed connections.
//! - An ejection lasts `baseEjectionTime` (default 30 s) × the endpoint's ejection count
//!   (capped at 300 s, Envoy's `max_ejection_time`); ejected endpoints return at the first
//!   `interval` sweep (default 10 s) after that. The count decays by one at each sweep the
//!   endpoint spends healthy.
//! - `maxEjectionPercent` (default 10): at most that share of the service's endpoints is
//!   ejected at once, but one endpoint may always be ejected (as Envoy does); 0 disables
//!   ejection.
//! - `minHealthPercent` (default 0): while fewer than that percent of the endpoints are
//!   healthy, ejections are ignored and nothing new is ejected.

use std::collections::HashMap;
use std::time::Duration;

use meridian_api::policy::OutlierSettings;
use tokio::time::Instant;

/// Envoy's cap on one ejection.
pub(crate) const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Identifies an endpoint across snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Cluster of the endpoint.
    pub cluster: String,
    /// Its address.
    pub address: String,
}

/// The result of one request or connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A non-5xx response, or a connection that was established.
    Success,
    /// An HTTP 5xx response.
    Status(u16),
    /// The connection could not be established.
    ConnectFailure,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        matches!(self, Outcome::Status(500..=599) | Outcome::ConnectFailure)
    }

    fn is_gateway_error(self) -> bool {
        matches!(self, Outcome::Status(502..=504) | Outcome::ConnectFailure)
    }
}

#[derive(Debug, Clone, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_at: Option<Instant>,
    ejections: u32,
}

/// A current ejection, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct Ejected {
    /// The endpoint.
    pub key: EndpointKey,
    /// How many times it has been ejected (the multiplier).
    pub ejections: u32,
    /// When it returns (at the first sweep after this).
    pub until: Instant,
}

/// Outlier state of one service's endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Detector {
    settings: OutlierSettings,
    hosts: HashMap<EndpointKey, Host>,
    last_sweep: Instant,
}

impl Detector {
    /// A detector with `settings`.
    pub(crate) fn new(settings: OutlierSettings, now: Instant) -> Self {
        Self {
            settings,
            hosts: HashMap::new(),
            last_sweep: now,
        }
    }

    /// Applies new settings (a policy change) keeping the endpoints' state.
    pub(crate) fn set_settings(&mut self, settings: OutlierSettings) {
        self.settings = settings;
    }

    /// Forgets endpoints that are no longer in the service.
    pub(crate) fn retain(&mut self, keep: impl Fn(&EndpointKey) -> bool) {
        self.hosts.retain(|k, _| keep(k));
    }

    /// Whether `key` is ejected (ignoring `minHealthPercent`; see [`Detector::ejections_apply`]).
    pub(crate) fn is_ejected(&self, key: &EndpointKey) -> bool {
        self.hosts.get(key).is_some_and(|h| h.ejected_at.is_some())
    }

    /// How many endpoints are ejected.
    pub(crate) fn ejected_count(&self) -> usize {
        self.hosts
            .values()
            .filter(|h| h.ejected_at.is_some())
            .count()
    }

    /// Whether ejections take effect, given the service's `total` endpoints of which
    /// `ready` are ready: not while the healthy share is below `minHealthPercent`.
    pub(crate) fn ejections_apply(&self, total: usize, ready: usize) -> bool {
        if total == 0 || self.settings.min_health_percent == 0 {
            return true;
        }
        let healthy = ready.saturating_sub(self.ejected_count());
        healthy * 100 >= self.settings.min_health_percent as usize * total
    }

    /// Records an outcome for `key`. Returns true when this ejects it. `total` and `ready`
    /// describe the service's endpoints (for `maxEjectionPercent` and `minHealthPercent`).
    pub(crate) fn record(
        &mut self,
        key: &EndpointKey,
        outcome: Outcome,
        now: Instant,
        total: usize,
        ready: usize,
    ) -> bool {
        // The common case, a success of a known endpoint without errors to reset, changes
        // nothing: no key clone, no count of the ejected.
        if !outcome.is_5xx()
            && !outcome.is_gateway_error()
            && self
                .hosts
                .get(key)
                .is_some_and(|h| h.consecutive_5xx == 0 && h.consecutive_gateway == 0)
        {
            return false;
        }
        let ejected = self.ejected_count();
        let host = self.hosts.entry(key.clone()).or_default();
        if host.ejected_at.is_some() {
            return false;
        }
        if outcome.is_5xx() {
            host.consecutive_5xx += 1;
        } else {
            host.consecutive_5xx = 0;
        }
        if outcome.is_gateway_error() {
            host.consecutive_gateway += 1;
        } else {
            host.consecutive_gateway = 0;
        }
        let s = &self.settings;
        let tripped = s
            .consecutive_5xx_errors
            .is_some_and(|n| host.consecutive_5xx >= n)
            || s.consecutive_gateway_errors
                .is_some_and(|n| host.consecutive_gateway >= n);
        if !tripped {
            return false;
        }
        let max = s.max_ejection_percent as usize;
        let within_max = max > 0 && (ejected == 0 || (ejected + 1) * 100 <= max * total);
        let healthy_after = ready.saturating_sub(ejected + 1);
        let min_health_ok = s.min_health_percent == 0
            || healthy_after * 100 >= s.min_health_percent as usize * total;
        // The counters restart either way, so a refused ejection is reconsidered only after
        // another full run of errors.
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        if !(within_max && min_health_ok) {
            return false;
        }
        host.ejected_at = Some(now);
        host.ejections += 1;
        true
    }

    /// Runs the interval sweep if one is due: returns endpoints whose ejection ended and
    /// decays the ejection count of healthy ones. Returns true when anything returned.
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last_sweep) < self.settings.interval {
            return false;
        }
        self.last_sweep = now;
        let base = self.settings.base_ejection_time;
        let mut changed = false;
        for host in self.hosts.values_mut() {
            match host.ejected_at {
                Some(at) => {
                    if now >= at + ejection_time(base, host.ejections) {
                        host.ejected_at = None;
                        changed = true;
                    }
                }
                None => host.ejections = host.ejections.saturating_sub(1),
            }
        }
        changed
    }

    /// The current ejections.
    pub(crate) fn ejected(&self) -> Vec<Ejected> {
        let base = self.settings.base_ejection_time;
        let mut out: Vec<Ejected> = self
            .hosts
            .iter()
            .filter_map(|(k, h)| {
                h.ejected_at.map(|at| Ejected {
                    key: k.clone(),
                    ejections: h.ejections,
                    until: at + ejection_time(base, h.ejections),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

fn ejection_time(base: Duration, ejections: u32) -> Duration {
    (base * ejections.max(1)).min(MAX_EJECTION_TIME.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> EndpointKey {
        EndpointKey {
            cluster: "east".into(),
            address: a.into(),
        }
    }

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx_errors: Some(3),
            max_ejection_percent: 100,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            ..OutlierSettings::default()
        }
    }

    #[test]
    fn ejects_after_consecutive_errors_and_success_resets() {
        let t0 = Instant::now();
        let mut d = Detector::new(settings(), t0);
        let a = key("a");
        assert!(!d.record(&a, Outcome::Status(503), t0, 4, 4));
        assert!(!d.record(&a, Outcome::Status(500), t0, 4, 4));
        assert!(!d.record(&a, Outcome::Success, t0, 4, 4));
        assert!(!d.record(&a, Outcome::Status(503), t0, 4, 4));
        assert!(!d.record(&a, Outcome::ConnectFailure, t0, 4, 4));
        assert!(d.record(&a, Outcome::Status(502), t0, 4, 4));
        assert!(d.is_ejected(&a));
        assert_eq!(d.ejected_count(), 1);
    }

    #[test]
    fn ejection_time_grows_with_count_and_returns_at_a_sweep() {
        let t0 = Instant::now();
        let mut d = Detector::new(settings(), t0);
        let a = key("a");
        for _ in 0..3 {
            d.record(&a, Outcome::Status(503), t0, 4, 4);
        }
        assert!(!d.sweep(t0 + Duration::from_secs(29)));
        assert!(d.sweep(t0 + Duration::from_secs(31)));
        assert!(!d.is_ejected(&a));
        // Second ejection right away: 2 × 30 s.
        let t1 = t0 + Duration::from_secs(31);
        for _ in 0..3 {
            d.record(&a, Outcome::Status(503), t1, 4, 4);
        }
        assert!(!d.sweep(t1 + Duration::from_secs(59)));
        assert!(d.sweep(t1 + Duration::from_secs(61)));
    }

    #[test]
    fn respects_max_ejection_percent_but_ejects_one() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierSettings {
                max_ejection_percent: 10,
                ..settings()
            },
            t0,
        );
        for a in ["a", "b"] {
            for _ in 0..3 {
                d.record(&key(a), Outcome::Status(500), t0, 4, 4);
            }
        }
        assert!(d.is_ejected(&key("a")));
        assert!(!d.is_ejected(&key("b")), "10% of 4 allows only the first");
    }

    #[test]
    fn min_health_percent_stops_ejection() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierSettings {
                min_health_percent: 60,
                ..settings()
            },
            t0,
        );
        for _ in 0..3 {
            d.record(&key("a"), Outcome::Status(500), t0, 4, 4);
        }
        assert!(d.is_ejected(&key("a")), "3/4 healthy stays above 60%");
        for _ in 0..3 {
            d.record(&key("b"), Outcome::Status(500), t0, 4, 4);
        }
        assert!(!d.is_ejected(&key("b")), "2/4 would fall below 60%");
        assert!(d.ejections_apply(4, 4));
        assert!(
            !d.ejections_apply(4, 2),
            "1/4 healthy: ejections are ignored"
        );
    }

    #[test]
    fn gateway_errors_only_when_configured() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierSettings {
                consecutive_5xx_errors: None,
                consecutive_gateway_errors: Some(2),
                ..settings()
            },
            t0,
        );
        d.record(&key("a"), Outcome::Status(500), t0, 4, 4);
        d.record(&key("a"), Outcome::Status(500), t0, 4, 4);
        assert!(!d.is_ejected(&key("a")), "500 is not a gateway error");
        d.record(&key("a"), Outcome::Status(504), t0, 4, 4);
        assert!(d.record(&key("a"), Outcome::ConnectFailure, t0, 4, 4));
    }

    #[test]
    fn envoy_defaults_need_five_errors() {
        let t0 = Instant::now();
        let mut d = Detector::new(OutlierSettings::default(), t0);
        for i in 0..5 {
            let ejected = d.record(&key("a"), Outcome::Status(503), t0, 20, 20);
            assert_eq!(ejected, i == 4);
        }
    }
}
