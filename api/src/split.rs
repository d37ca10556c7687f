//! Locality-weighted load balancing with Envoy's exact semantics (`docs/concepts.md`).
//!
//! Given the caller's locality, the health of every group of endpoints (a locality, or a
//! locality and label values under `failoverPriority`) and the traffic policy, [`compute`]
//! returns the percent of traffic each group receives. This is the only implementation:
//! the gateway picks endpoints from it ([`crate::pick`]), the controller reports it and
//! `meridianctl simulate` / `explain` print it.
//!
//! The math follows Envoy's `LoadBalancerBase` with integer percents:
//! ```text
//! health(P) = min(100, factor * healthy(P) / total(P))       (integer division)
//! NTH       = min(100, Σ health(P))
//! load(Pi)  = min(100 - Σ load(P<i), health(Pi) * 100 / NTH) (rounding rest → first healthy P)
//! ```
//! When NTH < 100, a priority whose healthy percent is below the panic threshold is in
//! panic and balances across all its hosts; when every priority is, load splits by host
//! count. Inside a priority, `effective(L) = weight(L) * min(100, factor * healthy(L) /
//! total(L))` and a locality's share is `effective / Σ effective`.
//!
//! A drained cluster's groups (progress `p`, [`Group::drain`] in permille) take part with
//! `(1 - p)` of their weight, as if their locality `load_balancing_weight` were scaled:
//! `effective(L) *= 1 - p` inside the priority, and the priority's health is scaled by the
//! share of its healthy endpoints left undrained, so a priority that is being drained
//! spills to the next one at the same rate. At `p = 1` the groups are left out entirely,
//! as if empty: they receive nothing, not even in panic.

use std::collections::BTreeMap;
use std::fmt;

use crate::locality::{Locality, LocalityPattern};
use crate::policy::{Distribute, TrafficPolicy};

/// The labels `failoverPriority` may name that are read from the locality, not pod labels.
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Who is calling: the locality (and, for `failoverPriority`, the labels) of the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The caller's locality.
    pub locality: Locality,
    /// The caller's labels, compared with endpoint labels under `failoverPriority`.
    pub labels: BTreeMap<String, String>,
}

impl Caller {
    /// A caller known only by its locality.
    pub fn at(locality: Locality) -> Self {
        Self {
            locality,
            labels: BTreeMap::new(),
        }
    }
}

/// A set of endpoints that share a locality (and, under `failoverPriority`, label values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// Where the endpoints run.
    pub locality: Locality,
    /// Labels common to the group's endpoints; only read under `failoverPriority`.
    pub labels: BTreeMap<String, String>,
    /// All endpoints, ready or not (health ratio = healthy / total).
    pub total: u32,
    /// Endpoints that are ready and not ejected.
    pub healthy: u32,
    /// Locality weight; by default the endpoint count, as Istio sets it.
    pub weight: Option<f64>,
    /// Drain progress of the group's cluster in permille: 0 (default) is not drained,
    /// [`DRAINED`] receives nothing.
    pub drain: u32,
}

/// [`Group::drain`] of a fully drained group.
pub const DRAINED: u32 = 1000;

impl Group {
    /// Permille of the group left after its drain (1000 when not drained).
    fn undrained(&self) -> u64 {
        u64::from(DRAINED - self.drain.min(DRAINED))
    }

    /// Whether the group takes part at all: it has endpoints and is not fully drained.
    fn live(&self) -> bool {
        self.total > 0 && self.drain < DRAINED
    }
}

/// Why a group landed in its priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    /// Same region, zone and subzone as the caller.
    SameSubzone,
    /// Same region and zone.
    SameZone,
    /// Same region.
    SameRegion,
    /// The region named by `failover[index]` for the caller's region.
    FailoverRegion {
        /// Index of the matching rule.
        rule: usize,
    },
    /// Any other region.
    Other,
    /// Named by `distribute[rule]`, which matched the caller.
    Distribute {
        /// Index of the matching rule.
        rule: usize,
    },
    /// Under `failoverPriority`: how many leading labels match the caller's.
    LabelMatch {
        /// Number of leading `failoverPriority` labels equal to the caller's.
        matched: usize,
    },
    /// Locality load balancing disabled: one flat priority.
    Flat,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::SameSubzone => f.write_str("same locality"),
            Tier::SameZone => f.write_str("same zone"),
            Tier::SameRegion => f.write_str("same region"),
            Tier::FailoverRegion { rule } => write!(f, "failover[{rule}] region"),
            Tier::Other => f.write_str("other region"),
            Tier::Distribute { rule } => write!(f, "distribute[{rule}]"),
            Tier::LabelMatch { matched } => write!(f, "{matched} failoverPriority labels match"),
            Tier::Flat => f.write_str("locality LB disabled"),
        }
    }
}

/// The outcome for one input group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupShare {
    /// Envoy priority (0 = most preferred) after empty levels are compacted away.
    pub priority: u32,
    /// Why the group has that priority.
    pub tier: Tier,
    /// `min(100, factor * healthy / total)` of the group.
    pub health: u32,
    /// Locality weight used inside the priority (before health scaling).
    pub weight: f64,
    /// Whether the group's priority is in panic (balances across all hosts).
    pub panic: bool,
    /// Percent of all traffic sent to this group.
    pub percent: f64,
}

/// Per-priority figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityLoad {
    /// `min(100, factor * healthy / total)` over the whole priority.
    pub health: u32,
    /// Percent of traffic the priority receives.
    pub load: u32,
    /// Whether the priority is in panic.
    pub panic: bool,
    /// Endpoints in the priority.
    pub total: u32,
    /// Healthy endpoints in the priority.
    pub healthy: u32,
}

/// The traffic split for one caller over a set of groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// One entry per input group, in input order.
    pub groups: Vec<GroupShare>,
    /// One entry per (compacted) priority level.
    pub priorities: Vec<PriorityLoad>,
    /// Every priority is in panic: load follows host counts.
    pub total_panic: bool,
    /// Normalized total health (NTH).
    pub normalized_total_health: u32,
}

impl Split {
    /// Whether any traffic can be sent (some group has a positive share).
    pub fn routable(&self) -> bool {
        self.groups.iter().any(|g| g.percent > 0.0)
    }
}

/// Computes the split of traffic from `caller` over `groups` under `policy`.
pub fn compute(caller: &Caller, groups: &[Group], policy: &TrafficPolicy) -> Split {
    let factor = u64::from(policy.overprovisioning_factor());
    let panic_threshold = policy.panic_threshold().min(100);

    let plan = assign(caller, groups, policy);

    // Compact empty priority levels away, as Istio does before handing them to Envoy.
    let mut levels: Vec<u32> = plan
        .iter()
        .zip(groups)
        .filter(|(_, g)| g.live())
        .map(|(p, _)| p.level)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let priority_of = |level: u32| levels.iter().position(|l| *l == level).map(|p| p as u32);

    let mut priorities: Vec<PriorityLoad> = levels
        .iter()
        .map(|_| PriorityLoad {
            health: 0,
            load: 0,
            panic: false,
            total: 0,
            healthy: 0,
        })
        .collect();
    // Per priority, Σ healthy · undrained‰ and Σ total · undrained‰: the drain's scale.
    let mut undrained = vec![(0u64, 0u64); levels.len()];
    for (p, g) in plan.iter().zip(groups) {
        if !g.live() {
            continue;
        }
        if let Some(i) = priority_of(p.level) {
            let i = i as usize;
            let healthy = g.healthy.min(g.total);
            priorities[i].total += g.total;
            priorities[i].healthy += healthy;
            undrained[i].0 += u64::from(healthy) * g.undrained();
            undrained[i].1 += u64::from(g.total) * g.undrained();
        }
    }
    for (p, (healthy_left, _)) in priorities.iter_mut().zip(&undrained) {
        p.health = health(factor, p.healthy, p.total);
        if p.healthy > 0 {
            // Exact when nothing is drained: healthy_left = healthy · 1000.
            let scaled =
                u64::from(p.health) * healthy_left / (u64::from(p.healthy) * u64::from(DRAINED));
            p.health = scaled as u32;
        }
    }
    let nth = priorities.iter().map(|p| p.health).sum::<u32>().min(100);

    // Panic per priority: only when NTH < 100 (Envoy's recalculatePerPriorityPanic).
    for p in &mut priorities {
        let healthy_percent = if p.total == 0 {
            0.0
        } else {
            100.0 * f64::from(p.healthy) / f64::from(p.total)
        };
        p.panic = nth < 100 && healthy_percent < f64::from(panic_threshold);
    }
    let total_panic = !priorities.is_empty() && priorities.iter().all(|p| p.panic);

    if total_panic {
        // recalculateLoadInTotalPanic: by host count (drained hosts count 1 - p), rest to
        // the first non-empty priority.
        let hosts: u64 = undrained.iter().map(|u| u.1).sum();
        let mut rest = 100u32;
        for (p, u) in priorities.iter_mut().zip(&undrained) {
            p.load = (100 * u.1).checked_div(hosts).unwrap_or(0) as u32;
            rest -= p.load;
        }
        if let Some(first) = priorities.iter_mut().find(|p| p.total > 0) {
            first.load += rest;
        }
    } else {
        // distributeLoad, then the rounding rest to the first healthy priority. With NTH = 0
        // (nothing healthy, panic disabled) every load stays 0: nothing is routable.
        let mut rest = 100u32;
        for p in &mut priorities {
            p.load = rest.min((p.health * 100).checked_div(nth).unwrap_or(0));
            rest -= p.load;
        }
        if let Some(first) = priorities.iter_mut().find(|p| p.health > 0) {
            first.load += rest;
        }
    }

    let mut shares: Vec<GroupShare> = plan
        .iter()
        .zip(groups)
        .map(|(p, g)| GroupShare {
            priority: priority_of(p.level).unwrap_or(u32::MAX),
            tier: p.tier.clone(),
            health: health(factor, g.healthy.min(g.total), g.total),
            weight: p.weight,
            panic: priority_of(p.level).is_some_and(|i| priorities[i as usize].panic),
            percent: 0.0,
        })
        .collect();

    for (i, prio) in priorities.iter().enumerate() {
        if prio.load == 0 {
            continue;
        }
        let members: Vec<usize> = (0..groups.len())
            .filter(|&g| shares[g].priority == i as u32 && groups[g].live())
            .collect();
        // In panic every host counts as available; otherwise scale by locality health.
        // Envoy falls back to host-level balancing when every locality weight is zero.
        let weighted: Vec<f64> = members
            .iter()
            .map(|&g| {
                let health = if prio.panic { 100 } else { shares[g].health };
                shares[g].weight * f64::from(health) * drain_scale(&groups[g])
            })
            .collect();
        let parts: Vec<f64> = if weighted.iter().sum::<f64>() > 0.0 {
            weighted
        } else {
            members
                .iter()
                .map(|&g| {
                    f64::from(if prio.panic {
                        groups[g].total
                    } else {
                        groups[g].healthy
                    }) * drain_scale(&groups[g])
                })
                .collect()
        };
        let sum: f64 = parts.iter().sum();
        if sum <= 0.0 {
            continue;
        }
        for (&g, part) in members.iter().zip(parts) {
            shares[g].percent = f64::from(prio.load) * part / sum;
        }
    }

    Split {
        groups: shares,
        priorities,
        total_panic,
        normalized_total_health: nth,
    }
}

/// The weight multiplier `1 - p` of a group's drain.
fn drain_scale(g: &Group) -> f64 {
    g.undrained() as f64 / f64::from(DRAINED)
}

/// `min(100, factor * healthy / total)` with Envoy's integer division; 0 for an empty set.
fn health(factor: u64, healthy: u32, total: u32) -> u32 {
    if total == 0 {
        return 0;
    }
    (factor * u64::from(healthy) / u64::from(total)).min(100) as u32
}

/// A group's uncompacted priority level, tier and locality weight.
struct Placement {
    level: u32,
    tier: Tier,
    weight: f64,
}

fn default_weight(g: &Group) -> f64 {
    g.weight.unwrap_or(f64::from(g.total))
}

fn assign(caller: &Caller, groups: &[Group], policy: &TrafficPolicy) -> Vec<Placement> {
    let lb = policy.locality_lb_setting.clone().unwrap_or_default();
    if lb.enabled == Some(false) {
        return groups
            .iter()
            .map(|g| Placement {
                level: 0,
                tier: Tier::Flat,
                weight: default_weight(g),
            })
            .collect();
    }
    if !lb.failover_priority.is_empty() {
        let n = lb.failover_priority.len();
        return groups
            .iter()
            .map(|g| {
                let matched = lb
                    .failover_priority
                    .iter()
                    .take_while(|key| label(caller_value(caller, key), g, key))
                    .count();
                Placement {
                    level: (n - matched) as u32,
                    tier: Tier::LabelMatch { matched },
                    weight: default_weight(g),
                }
            })
            .collect();
    }

    let failover = lb
        .failover
        .iter()
        .position(|f| f.from == caller.locality.region)
        .map(|i| (i, lb.failover[i].to.as_str()));
    let by_distance = |g: &Group| -> (u32, Tier) {
        let l = &g.locality;
        let c = &caller.locality;
        if l.region == c.region && l.zone == c.zone && l.subzone == c.subzone {
            (0, Tier::SameSubzone)
        } else if l.region == c.region && l.zone == c.zone {
            (1, Tier::SameZone)
        } else if l.region == c.region {
            (2, Tier::SameRegion)
        } else if let Some((rule, _)) = failover.filter(|(_, to)| *to == l.region) {
            (3, Tier::FailoverRegion { rule })
        } else {
            (4, Tier::Other)
        }
    };

    let distribute = lb.distribute.iter().enumerate().find(|(_, d)| {
        d.from
            .parse::<LocalityPattern>()
            .is_ok_and(|p| p.matches(&caller.locality))
    });
    match distribute {
        None => groups
            .iter()
            .map(|g| {
                let (level, tier) = by_distance(g);
                Placement {
                    level,
                    tier,
                    weight: default_weight(g),
                }
            })
            .collect(),
        Some((rule, d)) => {
            // Distribute targets form the first priority with the rule's weights; every other
            // group keeps its distance order below it, so failover decides where spill goes.
            let weights = distribute_weights(d, groups);
            groups
                .iter()
                .zip(weights)
                .map(|(g, w)| match w {
                    Some(weight) => Placement {
                        level: 0,
                        tier: Tier::Distribute { rule },
                        weight,
                    },
                    None => {
                        let (level, tier) = by_distance(g);
                        Placement {
                            level: level + 1,
                            tier,
                            weight: default_weight(g),
                        }
                    }
                })
                .collect()
        }
    }
}

/// Istio's `applyLocalityWeights`: each `to` pattern's weight is shared by the groups it
/// matches in proportion to their own weights; a group matched by an earlier (more specific)
/// pattern is not matched again. `None` for groups no pattern names.
fn distribute_weights(d: &Distribute, groups: &[Group]) -> Vec<Option<f64>> {
    let mut patterns: Vec<(LocalityPattern, u32)> =
        d.to.iter()
            .filter_map(|(k, w)| k.parse::<LocalityPattern>().ok().map(|p| (p, *w)))
            .collect();
    // Most specific first so `sh/a` wins over `sh/*` whatever the map order.
    patterns.sort_by(|a, b| {
        b.0.specificity()
            .cmp(&a.0.specificity())
            .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
    });
    let mut out = vec![None; groups.len()];
    for (pattern, weight) in patterns {
        let matched: Vec<usize> = (0..groups.len())
            .filter(|&i| out[i].is_none() && pattern.matches(&groups[i].locality))
            .collect();
        let total: f64 = matched.iter().map(|&i| default_weight(&groups[i])).sum();
        for &i in &matched {
            let own = default_weight(&groups[i]);
            let share = if total > 0.0 {
                f64::from(weight) * own / total
            } else {
                0.0
            };
            out[i] = Some(share);
        }
    }
    out
}

fn caller_value<'a>(caller: &'a Caller, key: &str) -> Option<&'a str> {
    match key {
        REGION_LABEL => Some(caller.locality.region.as_str()),
        ZONE_LABEL => Some(caller.locality.zone.as_str()),
        SUBZONE_LABEL => Some(caller.locality.subzone.as_str()),
        _ => caller.labels.get(key).map(String::as_str),
    }
}

/// Whether group `g` carries the caller's value for label `key`.
fn label(caller_value: Option<&str>, g: &Group, key: &str) -> bool {
    let value = match key {
        REGION_LABEL => Some(g.locality.region.as_str()),
        ZONE_LABEL => Some(g.locality.zone.as_str()),
        SUBZONE_LABEL => Some(g.locality.subzone.as_str()),
        _ => g.labels.get(key).map(String::as_str),
    };
    matches!((caller_value, value), (Some(a), Some(b)) if a == b)
}
