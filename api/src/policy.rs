//! Traffic policy: the `GlobalTrafficPolicy` spec fields (`docs/concepts.md`, "Policy
//! fields"), with Istio's field names where Istio has them. The controller's CRD, the
//! snapshot (as canonical JSON) and the simulator all use these types, so there is one
//! schema.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::locality::{Locality, LocalityPattern};

/// Envoy's default overprovisioning factor, in percent.
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;
/// Envoy's default panic threshold, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// Distribution, failover and resilience settings for one global service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Locality-aware load balancing; enabled by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Passive health checking of endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Percent by which healthy hosts are assumed to be able to absorb more load (default 140).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overprovisioning_factor: Option<u32>,
    /// Healthy percent of a priority below which it balances across all its hosts (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<u32>,
    /// Named groups of endpoints selected by pod labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// HTTP routes, first match wins; only for HTTP ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
}

/// Istio's `localityLbSetting`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// When false, traffic is spread over all healthy endpoints regardless of locality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Explicit weights per destination locality for callers matching `from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<Distribute>,
    /// Which region receives traffic when the caller's region is unhealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
    /// Ordered pod label keys; priority = how many leading labels match the caller's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
}

/// A `distribute` rule: callers in `from` send `to[locality]` percent to each locality.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Distribute {
    /// Caller locality pattern, e.g. `sh/2000400001/*`.
    pub from: String,
    /// Destination locality pattern → weight; weights sum to 100.
    pub to: BTreeMap<String, u32>,
}

/// A `failover` rule: when `from` (a region) is unhealthy, go to region `to` first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Caller region.
    pub from: String,
    /// Region to fail over to before any other.
    pub to: String,
}

/// Istio's `outlierDetection`; unset fields take Envoy's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (or connect failures) before ejection (default 5).
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive gateway errors (502/503/504, connect failures) before ejection (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are re-evaluated, e.g. `10s` (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Minimum ejection duration, multiplied by the number of ejections (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// At most this percent of a service's endpoints are ejected at once (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Ejection stops when fewer than this percent of endpoints are healthy (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// Outlier detection settings with every default applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// `None` disables detection on 5xx.
    pub consecutive_5xx_errors: Option<u32>,
    /// `None` disables detection on gateway errors.
    pub consecutive_gateway_errors: Option<u32>,
    /// Re-evaluation interval.
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Maximum ejected percent.
    pub max_ejection_percent: u32,
    /// Minimum healthy percent for detection to stay active.
    pub min_health_percent: u32,
}

impl Default for OutlierSettings {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            consecutive_5xx_errors: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

impl OutlierDetection {
    /// Applies Envoy's defaults to unset fields. A value of 0 for a consecutive-error count
    /// disables that detector, as in Envoy.
    pub fn settings(&self) -> Result<OutlierSettings, PolicyError> {
        let d = OutlierSettings::default();
        let dur = |field: &'static str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|reason| PolicyError::Invalid {
                field: format!("outlierDetection.{field}"),
                reason,
            }),
        };
        let count = |v: Option<u32>, default: Option<u32>| match v {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
        Ok(OutlierSettings {
            consecutive_5xx_errors: count(self.consecutive_5xx_errors, d.consecutive_5xx_errors),
            consecutive_gateway_errors: count(
                self.consecutive_gateway_errors,
                d.consecutive_gateway_errors,
            ),
            interval: dur("interval", &self.interval, d.interval)?,
            base_ejection_time: dur(
                "baseEjectionTime",
                &self.base_ejection_time,
                d.base_ejection_time,
            )?,
            max_ejection_percent: self.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            min_health_percent: self.min_health_percent.unwrap_or(d.min_health_percent),
        })
    }
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Subset name, referenced by routes.
    pub name: String,
    /// Pod labels an endpoint must carry (all of them).
    pub labels: BTreeMap<String, String>,
}

/// An HTTP route: requests matching any `match` go to `route`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Optional name for status and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match conditions (any of them); empty matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations; weights sum to 100 (a single destination may omit it).
    pub route: Vec<RouteDestination>,
    /// How long the upstream may take to send its response headers (Istio's
    /// `VirtualService` `timeout`, e.g. `"5s"`; `"0s"` waits forever). Unset: the gateway's
    /// `--upstream-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl HttpRoute {
    /// The route's timeout, if it sets one (validated by [`TrafficPolicy::validate`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_deref().and_then(|t| parse_duration(t).ok())
    }
}

/// Conditions on a request (all of them must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Header name (lower case) → match.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
}

/// How a header value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// A prefix of the value.
    Prefix(String),
}

impl StringMatch {
    /// Whether `value` satisfies the match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// One weighted destination of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Subset name; empty means every endpoint of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Percent of matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A policy that cannot be accepted; `field` is the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A field holds a value outside what it accepts.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field, e.g. `localityLbSetting.distribute[0].to`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl TrafficPolicy {
    /// The overprovisioning factor in force (percent).
    pub fn overprovisioning_factor(&self) -> u32 {
        self.overprovisioning_factor
            .unwrap_or(DEFAULT_OVERPROVISIONING_FACTOR)
    }

    /// The panic threshold in force (percent).
    pub fn panic_threshold(&self) -> u32 {
        self.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD)
    }

    /// Outlier detection settings in force (Envoy's defaults when unset).
    pub fn outlier_settings(&self) -> Result<OutlierSettings, PolicyError> {
        self.outlier_detection
            .clone()
            .unwrap_or_default()
            .settings()
    }

    /// Checks everything a schema cannot: weights summing to 100, locality syntax, subset
    /// references, durations and percent ranges. The first problem found is returned.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(f) = self.overprovisioning_factor
            && f == 0
        {
            return Err(invalid(
                "overprovisioningFactor",
                "must be at least 1 (percent)",
            ));
        }
        if let Some(p) = self.panic_threshold
            && p > 100
        {
            return Err(invalid(
                "panicThreshold",
                format!("{p} is above 100 percent"),
            ));
        }
        if let Some(lb) = &self.locality_lb_setting {
            lb.validate()?;
        }
        if let Some(od) = &self.outlier_detection {
            let s = od.settings()?;
            if s.max_ejection_percent > 100 {
                return Err(invalid(
                    "outlierDetection.maxEjectionPercent",
                    "above 100 percent",
                ));
            }
            if s.min_health_percent > 100 {
                return Err(invalid(
                    "outlierDetection.minHealthPercent",
                    "above 100 percent",
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.is_empty() {
                return Err(invalid(format!("subsets[{i}].name"), "must not be empty"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("subsets[{i}].name"),
                    format!("duplicate subset {:?}", s.name),
                ));
            }
        }
        for (i, r) in self.http.iter().enumerate() {
            if let Some(t) = &r.timeout {
                parse_duration(t).map_err(|e| invalid(format!("http[{i}].timeout"), e))?;
            }
            if r.route.is_empty() {
                return Err(invalid(
                    format!("http[{i}].route"),
                    "needs at least one destination",
                ));
            }
            for (j, d) in r.route.iter().enumerate() {
                if let Some(s) = &d.subset
                    && !names.contains(s.as_str())
                {
                    return Err(invalid(
                        format!("http[{i}].route[{j}].subset"),
                        format!("unknown subset {s:?}"),
                    ));
                }
            }
            // Summed in u64: u32 weights may not wrap around to 100.
            let sum: u64 = r
                .route
                .iter()
                .map(|d| u64::from(d.weight.unwrap_or(0)))
                .sum();
            let single_unweighted = r.route.len() == 1 && r.route[0].weight.is_none();
            if !single_unweighted && sum != 100 {
                return Err(invalid(
                    format!("http[{i}].route"),
                    format!("weights sum to {sum}, not 100"),
                ));
            }
        }
        Ok(())
    }
}

impl LocalityLbSetting {
    fn validate(&self) -> Result<(), PolicyError> {
        if !self.distribute.is_empty() && !self.failover_priority.is_empty() {
            return Err(invalid(
                "localityLbSetting",
                "distribute and failoverPriority cannot be combined",
            ));
        }
        let mut froms: Vec<LocalityPattern> = Vec::new();
        for (i, d) in self.distribute.iter().enumerate() {
            let from = d.from.parse::<LocalityPattern>().map_err(|e| {
                invalid(
                    format!("localityLbSetting.distribute[{i}].from"),
                    e.to_string(),
                )
            })?;
            // The first matching rule applies (`split`): a rule overlapping an earlier one
            // is only meaningful as a fallback, less specific than it. Otherwise which
            // rule a caller gets hangs on the order (equal specificity) or the rule is
            // partly or wholly dead (more specific than an earlier, broader one).
            if let Some((j, earlier)) = froms
                .iter()
                .enumerate()
                .find(|(_, f)| f.overlaps(&from) && f.specificity() <= from.specificity())
            {
                return Err(invalid(
                    format!("localityLbSetting.distribute[{i}].from"),
                    format!(
                        "{from} overlaps distribute[{j}].from {earlier}, which comes first and is not more specific; put the more specific rule first"
                    ),
                ));
            }
            froms.push(from);
            if d.to.is_empty() {
                return Err(invalid(
                    format!("localityLbSetting.distribute[{i}].to"),
                    "must not be empty",
                ));
            }
            for k in d.to.keys() {
                k.parse::<LocalityPattern>().map_err(|e| {
                    invalid(
                        format!("localityLbSetting.distribute[{i}].to"),
                        e.to_string(),
                    )
                })?;
            }
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                return Err(invalid(
                    format!("localityLbSetting.distribute[{i}].to"),
                    format!("weights sum to {sum}, not 100"),
                ));
            }
        }
        for (i, f) in self.failover.iter().enumerate() {
            for (name, v) in [("from", &f.from), ("to", &f.to)] {
                let l: Locality = v.parse().map_err(|e: crate::locality::LocalityError| {
                    invalid(
                        format!("localityLbSetting.failover[{i}].{name}"),
                        e.to_string(),
                    )
                })?;
                if !l.zone.is_empty() {
                    return Err(invalid(
                        format!("localityLbSetting.failover[{i}].{name}"),
                        format!("{v:?} must be a region, not a zone"),
                    ));
                }
            }
            if f.from == f.to {
                return Err(invalid(
                    format!("localityLbSetting.failover[{i}]"),
                    "from and to are the same region",
                ));
            }
        }
        for (i, l) in self.failover_priority.iter().enumerate() {
            if l.is_empty() {
                return Err(invalid(
                    format!("localityLbSetting.failoverPriority[{i}]"),
                    "empty label",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a Go/Istio-style duration: `500ms`, `10s`, `1m`, `1h`, or a combination (`1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?} (expected e.g. 10s, 500ms, 1m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            u => {
                return Err(format!(
                    "unknown unit {u:?} in duration {s:?} (use ms, s, m, h)"
                ));
            }
        };
        // Policies are user input: a sum that does not fit is refused, never a panic.
        total = unit
            .and_then(|unit| total.checked_add(unit))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> TrafficPolicy {
        serde_json::from_str(json).unwrap()
    }

    /// The first matching `distribute` rule applies: a rule that can match a caller an
    /// earlier rule matches is refused unless the earlier one is more specific (the later
    /// one is then a fallback).
    #[test]
    fn overlapping_distribute_rules_are_refused() {
        let rules = |a: &str, b: &str| {
            policy(&format!(
                r#"{{"localityLbSetting":{{"distribute":[{{"from":"{a}","to":{{"sh/*":100}}}},{{"from":"{b}","to":{{"sh/*":100}}}}]}}}}"#
            ))
            .validate()
        };
        assert_eq!(
            rules("sh/*", "sh/*").unwrap_err().to_string(),
            "localityLbSetting.distribute[1].from: sh/* overlaps distribute[0].from sh/*, which comes first and is not more specific; put the more specific rule first"
        );
        assert!(rules("sh/*", "*/z1").is_err(), "sh/z1 matches both");
        assert!(rules("sh/*", "sh/z1").is_err(), "sh/z1 would never apply");
        assert!(
            rules("sh/z1", "sh/*").is_ok(),
            "a fallback after the specific rule"
        );
        assert!(rules("sh/*", "bj/*").is_ok(), "disjoint");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
    }

    /// Crash inputs of the `policy` fuzz target (found reviewing what it reaches, then
    /// reproduced through it): durations whose sum or unit product does not fit panicked
    /// ("overflow when adding durations"), in the controller's validation and the
    /// gateway's catalog alike.
    #[test]
    fn durations_too_long_are_refused() {
        for (json, want) in [
            (
                r#"{"http":[{"route":[{}],"timeout":"18446744073709551615s1s"}]}"#,
                "http[0].timeout: duration \"18446744073709551615s1s\" is too long",
            ),
            (
                r#"{"outlierDetection":{"interval":"307445734561825861m"}}"#,
                "outlierDetection.interval: duration \"307445734561825861m\" is too long",
            ),
            (
                r#"{"outlierDetection":{"baseEjectionTime":"5124095576030432h"}}"#,
                "outlierDetection.baseEjectionTime: duration \"5124095576030432h\" is too long",
            ),
        ] {
            assert_eq!(policy(json).validate().unwrap_err().to_string(), want);
        }
    }

    /// Crash inputs of the `policy` fuzz target (found the same way): weights summing past
    /// `u32::MAX` panicked in validation (and, without overflow checks, wrapped around to
    /// 100 and were accepted).
    #[test]
    fn weights_overflowing_u32_are_refused() {
        for (json, want) in [
            (
                r#"{"localityLbSetting":{"distribute":[{"from":"us-east1","to":{"us-east1":4294967295,"us-west1":101}}]}}"#,
                "localityLbSetting.distribute[0].to: weights sum to 4294967396, not 100",
            ),
            (
                r#"{"subsets":[{"name":"a","labels":{}},{"name":"b","labels":{}}],"http":[{"route":[{"subset":"a","weight":4294967295},{"subset":"b","weight":101}]}]}"#,
                "http[0].route: weights sum to 4294967396, not 100",
            ),
        ] {
            assert_eq!(policy(json).validate().unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn istio_field_names_round_trip() {
        let p = policy(
            r#"{"localityLbSetting":{"enabled":true,"distribute":[{"from":"sh/2000400001/*","to":{"sh/2000400001/*":50,"sh/200002/*":50}}],"failover":[{"from":"gz","to":"sh"}]},
                "outlierDetection":{"consecutive5xxErrors":3,"interval":"1s","baseEjectionTime":"30s","maxEjectionPercent":100},
                "overprovisioningFactor":140,"panicThreshold":50,
                "subsets":[{"name":"v1","labels":{"version":"v1"}}],
                "http":[{"match":[{"headers":{"end-user":{"exact":"jason"}}}],"route":[{"subset":"v1"}]}]}"#,
        );
        p.validate().unwrap();
        let s = p.outlier_settings().unwrap();
        assert_eq!(s.consecutive_5xx_errors, Some(3));
        assert_eq!(s.interval, Duration::from_secs(1));
        let back: TrafficPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn rejects_what_a_schema_cannot() {
        let cases = [
            (
                r#"{"localityLbSetting":{"distribute":[{"from":"sh","to":{"sh/a":60,"sh/b":50}}]}}"#,
                "localityLbSetting.distribute[0].to: weights sum to 110, not 100",
            ),
            (
                r#"{"localityLbSetting":{"failover":[{"from":"gz/a","to":"sh"}]}}"#,
                "localityLbSetting.failover[0].from: \"gz/a\" must be a region, not a zone",
            ),
            (
                r#"{"http":[{"route":[{"subset":"v9"}]}]}"#,
                "http[0].route[0].subset: unknown subset \"v9\"",
            ),
            (
                r#"{"http":[{"route":[{}],"timeout":"5 seconds"}]}"#,
                "http[0].timeout: unknown unit \" seconds\" in duration \"5 seconds\" (use ms, s, m, h)",
            ),
            (
                r#"{"panicThreshold":120}"#,
                "panicThreshold: 120 is above 100 percent",
            ),
            (
                r#"{"outlierDetection":{"interval":"soon"}}"#,
                "outlierDetection.interval: invalid duration \"soon\" (expected e.g. 10s, 500ms, 1m)",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(policy(json).validate().unwrap_err().to_string(), want);
        }
        assert!(serde_json::from_str::<TrafficPolicy>(r#"{"bogus":1}"#).is_err());
    }
}
