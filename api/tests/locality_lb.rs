//! The locality engine against the worked examples of `docs/concepts.md` and Envoy's
//! behaviour, plus property tests of its invariants.

use std::collections::BTreeMap;

use meridian_api::Locality;
use meridian_api::pick::{Balance, EndpointView, Picker};
use meridian_api::policy::TrafficPolicy;
use meridian_api::split::{Caller, Group, Split, Tier, compute};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn loc(s: &str) -> Locality {
    s.parse().unwrap()
}

fn group(l: &str, total: u32, healthy: u32) -> Group {
    Group {
        locality: loc(l),
        total,
        healthy,
        ..Group::default()
    }
}

fn policy(json: &str) -> TrafficPolicy {
    let p: TrafficPolicy = serde_json::from_str(json).unwrap();
    p.validate().unwrap();
    p
}

fn percents(split: &Split) -> Vec<f64> {
    split
        .groups
        .iter()
        .map(|g| (g.percent * 10.0).round() / 10.0)
        .collect()
}

fn caller(l: &str) -> Caller {
    Caller::at(loc(l))
}

#[test]
fn local_zone_ten_of_fourteen_keeps_all_traffic() {
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 10), group("sh/200002", 14, 14)],
        &TrafficPolicy::default(),
    );
    assert_eq!(percents(&s), [100.0, 0.0]);
    assert_eq!(s.groups[0].priority, 0);
    assert_eq!(s.groups[1].priority, 1);
    assert_eq!(s.groups[1].tier, Tier::SameRegion);
}

#[test]
fn local_zone_five_of_fourteen_splits_half() {
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 5), group("sh/200002", 14, 14)],
        &TrafficPolicy::default(),
    );
    assert_eq!(percents(&s), [50.0, 50.0]);
    assert!(!s.total_panic);
}

#[test]
fn local_zone_down_sends_everything_away() {
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 0), group("sh/200002", 14, 14)],
        &TrafficPolicy::default(),
    );
    assert_eq!(percents(&s), [0.0, 100.0]);
}

#[test]
fn health_scores_twenty_and_thirty_without_panic() {
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 2), group("sh/200002", 14, 3)],
        &policy(r#"{"panicThreshold":0}"#),
    );
    assert_eq!(s.groups[0].health, 20);
    assert_eq!(s.groups[1].health, 30);
    assert_eq!(percents(&s), [40.0, 60.0]);
}

#[test]
fn total_panic_splits_by_host_count() {
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 2), group("sh/200002", 14, 3)],
        &TrafficPolicy::default(),
    );
    assert!(s.total_panic);
    assert!(s.groups.iter().all(|g| g.panic));
    assert_eq!(percents(&s), [50.0, 50.0]);
}

#[test]
fn distribute_splits_healthy_zones_evenly() {
    let p = policy(
        r#"{"localityLbSetting":{"distribute":[{"from":"sh/2000400001/*","to":{"sh/2000400001/*":50,"sh/200002/*":50}}]}}"#,
    );
    let s = compute(
        &caller("sh/2000400001"),
        &[group("sh/2000400001", 14, 14), group("sh/200002", 14, 14)],
        &p,
    );
    assert_eq!(percents(&s), [50.0, 50.0]);
    assert_eq!(s.groups[0].tier, Tier::Distribute { rule: 0 });
}

#[test]
fn distribute_does_not_apply_to_other_callers() {
    let p = policy(
        r#"{"localityLbSetting":{"distribute":[{"from":"sh/2000400001/*","to":{"sh/2000400001/*":50,"sh/200002/*":50}}]}}"#,
    );
    let s = compute(
        &caller("sh/200002"),
        &[group("sh/2000400001", 14, 14), group("sh/200002", 14, 14)],
        &p,
    );
    assert_eq!(percents(&s), [0.0, 100.0]);
}

#[test]
fn failover_rule_orders_regions() {
    let p = policy(r#"{"localityLbSetting":{"failover":[{"from":"gz","to":"sh"}]}}"#);
    let s = compute(
        &caller("gz/gz-1"),
        &[
            group("gz/gz-1", 14, 0),
            group("bj/bj-1", 14, 14),
            group("sh/sh-1", 14, 14),
        ],
        &p,
    );
    assert_eq!(percents(&s), [0.0, 0.0, 100.0]);
    assert_eq!(s.groups[2].tier, Tier::FailoverRegion { rule: 0 });
    assert!(s.groups[1].priority > s.groups[2].priority);
}

#[test]
fn distribute_combined_with_failover_spills_by_failover_order() {
    // East and west share the healthy split; both down → the failover region, not the other.
    let p = policy(
        r#"{"localityLbSetting":{
            "distribute":[{"from":"sh/*","to":{"sh/2000400001":50,"sh/200002":50}}],
            "failover":[{"from":"sh","to":"bj"}]}}"#,
    );
    let gs = |e, w| {
        [
            group("sh/2000400001", 14, e),
            group("sh/200002", 14, w),
            group("gz/gz-1", 14, 14),
            group("bj/bj-1", 14, 14),
        ]
    };
    let c = caller("sh/2000400001");
    assert_eq!(
        percents(&compute(&c, &gs(14, 14), &p)),
        [50.0, 50.0, 0.0, 0.0]
    );
    assert_eq!(
        percents(&compute(&c, &gs(0, 0), &p)),
        [0.0, 0.0, 0.0, 100.0]
    );
    // East down: west absorbs up to its overprovisioned share (70%), the rest spills to bj.
    assert_eq!(
        percents(&compute(&c, &gs(0, 14), &p)),
        [0.0, 70.0, 0.0, 30.0]
    );
}

#[test]
fn subzone_is_the_first_priority() {
    let s = compute(
        &caller("sh/z1/a"),
        &[
            group("sh/z1/b", 4, 4),
            group("sh/z1/a", 4, 4),
            group("sh/z2/a", 4, 4),
        ],
        &TrafficPolicy::default(),
    );
    assert_eq!(percents(&s), [0.0, 100.0, 0.0]);
    assert_eq!(
        s.groups.iter().map(|g| g.priority).collect::<Vec<_>>(),
        [1, 0, 2]
    );
}

#[test]
fn locality_weights_inside_a_priority() {
    // Two remote zones in the same region share P1 by endpoint count × health.
    let s = compute(
        &caller("sh/z0"),
        &[
            group("sh/z0", 10, 0),
            group("sh/z1", 10, 10),
            group("sh/z2", 30, 30),
        ],
        &TrafficPolicy::default(),
    );
    assert_eq!(percents(&s), [0.0, 25.0, 75.0]);
    let weighted = |w1, w2| {
        let mut g = [
            group("sh/z0", 10, 0),
            group("sh/z1", 10, 10),
            group("sh/z2", 10, 5),
        ];
        g[1].weight = Some(w1);
        g[2].weight = Some(w2);
        compute(&caller("sh/z0"), &g, &TrafficPolicy::default())
    };
    // effective = weight × min(100, 140 × healthy / total): 1×100 vs 1×70.
    let s = weighted(1.0, 1.0);
    assert!((s.groups[1].percent - 100.0 * 100.0 / 170.0).abs() < 1e-9);
}

#[test]
fn failover_priority_uses_label_match_depth() {
    let p = policy(
        r#"{"localityLbSetting":{"failoverPriority":["topology.istio.io/network","topology.kubernetes.io/region"]}}"#,
    );
    let mut c = caller("sh/z1");
    c.labels
        .insert("topology.istio.io/network".into(), "n1".into());
    let mut g = vec![
        group("bj/b1", 4, 4),
        group("bj/b1", 4, 4),
        group("sh/z1", 4, 0),
    ];
    g[0].labels
        .insert("topology.istio.io/network".into(), "n1".into());
    g[2].labels
        .insert("topology.istio.io/network".into(), "n1".into());
    let s = compute(&c, &g, &p);
    assert_eq!(s.groups[2].tier, Tier::LabelMatch { matched: 2 });
    assert_eq!(s.groups[0].tier, Tier::LabelMatch { matched: 1 });
    assert_eq!(percents(&s), [100.0, 0.0, 0.0]);
}

#[test]
fn disabled_locality_lb_is_one_flat_priority() {
    let p = policy(r#"{"localityLbSetting":{"enabled":false}}"#);
    let s = compute(
        &caller("sh/z1"),
        &[group("sh/z1", 10, 10), group("bj/b1", 30, 30)],
        &p,
    );
    assert_eq!(percents(&s), [25.0, 75.0]);
}

#[test]
fn rounding_rest_goes_to_the_first_healthy_priority() {
    // health 33 + 33 + 33 = 99 → loads 33, 33, 33 of 99 → 33*100/99 = 33 each, rest 1 to P0.
    let s = compute(
        &caller("a/a"),
        &[
            group("a/a", 100, 24),
            group("a/b", 100, 24),
            group("c/c", 100, 24),
        ],
        &policy(r#"{"panicThreshold":0}"#),
    );
    let loads: Vec<u32> = s.priorities.iter().map(|p| p.load).collect();
    assert_eq!(loads, [34, 33, 33]);
}

#[test]
fn nothing_healthy_and_panic_disabled_routes_nowhere() {
    let s = compute(
        &caller("a/a"),
        &[group("a/a", 3, 0)],
        &policy(r#"{"panicThreshold":0}"#),
    );
    assert!(!s.routable());
    let s = compute(
        &caller("a/a"),
        &[group("a/a", 3, 0)],
        &TrafficPolicy::default(),
    );
    assert!(s.total_panic);
    assert_eq!(percents(&s), [100.0]);
}

#[test]
fn picker_follows_the_split() {
    let locs = [loc("sh/2000400001"), loc("sh/200002")];
    let labels = BTreeMap::new();
    let eps: Vec<EndpointView<'_>> = (0..28)
        .map(|i| EndpointView {
            locality: &locs[i / 14],
            labels: &labels,
            healthy: i % 14 < 5 || i >= 14,
            drain: 0,
        })
        .collect();
    let b = Balance::new(&caller("sh/2000400001"), &TrafficPolicy::default(), &eps);
    assert_eq!(percents(&b.split), [50.0, 50.0]);
    let mut rng = StdRng::seed_from_u64(7);
    let mut local = 0;
    for _ in 0..10_000 {
        let id = b.picker.pick(&mut rng).unwrap() as usize;
        assert!(eps[id].healthy, "picked unhealthy endpoint {id}");
        local += usize::from(id < 14);
    }
    assert!((4_700..5_300).contains(&local), "local picks {local}");
}

#[test]
fn picker_excludes_tried_endpoints() {
    let locs = [loc("a/a")];
    let labels = BTreeMap::new();
    let eps: Vec<EndpointView<'_>> = (0..3)
        .map(|_| EndpointView {
            locality: &locs[0],
            labels: &labels,
            healthy: true,
            drain: 0,
        })
        .collect();
    let b = Balance::new(&caller("a/a"), &TrafficPolicy::default(), &eps);
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(b.picker.pick_excluding(&mut rng, &[0, 1]), Some(2));
    assert_eq!(b.picker.pick_excluding(&mut rng, &[0, 1, 2]), None);
    assert!(Picker::default().pick(&mut rng).is_none());
}

fn drained(mut g: Group, permille: u32) -> Group {
    g.drain = permille;
    g
}

/// docs/concepts.md, "Draining a cluster": a caller in bj sees east and west in one
/// priority (other region); east drained 40% keeps 0.6 of its weight: 240 / (240 + 400).
#[test]
fn drain_scales_the_weight_inside_a_priority() {
    let at = |p: u32| {
        percents(&compute(
            &caller("bj/bj-1"),
            &[
                drained(group("sh/2000400001", 4, 4), p),
                group("sh/200002", 4, 4),
            ],
            &TrafficPolicy::default(),
        ))
    };
    assert_eq!(at(0), [50.0, 50.0]);
    assert_eq!(at(400), [37.5, 62.5]);
    assert_eq!(at(900), [9.1, 90.9]);
    assert_eq!(at(1000), [0.0, 100.0]);
}

/// docs/concepts.md: the caller's own zone (east) is priority 0; drained 40% its health
/// 100 becomes 100 · 0.6 = 60, so 40% spills to west (priority 1), linearly in p.
#[test]
fn drain_spills_a_priority_linearly() {
    let at = |p: u32| {
        percents(&compute(
            &caller("sh/2000400001"),
            &[
                drained(group("sh/2000400001", 14, 14), p),
                group("sh/200002", 14, 14),
            ],
            &TrafficPolicy::default(),
        ))
    };
    assert_eq!(at(0), [100.0, 0.0]);
    assert_eq!(at(400), [60.0, 40.0]);
    assert_eq!(at(750), [25.0, 75.0]);
    assert_eq!(at(1000), [0.0, 100.0]);
}

#[test]
fn a_drained_group_gets_nothing_even_in_panic() {
    // Every group unhealthy: total panic balances over all hosts, but not drained ones.
    let s = compute(
        &caller("a/a"),
        &[drained(group("a/a", 3, 0), 1000), group("a/b", 3, 0)],
        &TrafficPolicy::default(),
    );
    assert!(s.total_panic);
    assert_eq!(percents(&s), [0.0, 100.0]);
    // Only drained endpoints left: nothing is routable.
    let s = compute(
        &caller("a/a"),
        &[drained(group("a/a", 3, 3), 1000)],
        &TrafficPolicy::default(),
    );
    assert!(!s.routable());
}

#[test]
fn drained_endpoints_form_their_own_group_in_a_shared_locality() {
    // Two clusters with nodes in one locality: only the drained cluster's endpoints lose
    // weight.
    let locs = [loc("a/a")];
    let labels = BTreeMap::new();
    let eps: Vec<EndpointView<'_>> = (0..4)
        .map(|i| EndpointView {
            locality: &locs[0],
            labels: &labels,
            healthy: true,
            drain: if i < 2 { 1000 } else { 0 },
        })
        .collect();
    let b = Balance::new(&caller("a/a"), &TrafficPolicy::default(), &eps);
    assert_eq!(b.groups.len(), 2);
    assert_eq!(percents(&b.split), [0.0, 100.0]);
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..1_000 {
        assert!(b.picker.pick(&mut rng).unwrap() >= 2);
    }
}

fn arb_groups() -> impl Strategy<Value = Vec<Group>> {
    let regions = ["r1", "r2", "r3"];
    let zones = ["z1", "z2"];
    prop::collection::vec((0usize..3, 0usize..2, 1u32..30, 0u32..=100), 1..7).prop_map(move |v| {
        v.into_iter()
            .map(|(r, z, total, h)| {
                let healthy = total * h / 100;
                group(&format!("{}/{}", regions[r], zones[z]), total, healthy)
            })
            .collect()
    })
}

fn arb_policy() -> impl Strategy<Value = TrafficPolicy> {
    (100u32..=300, 0u32..=100, any::<bool>()).prop_map(|(factor, panic, failover)| {
        let mut p = TrafficPolicy {
            overprovisioning_factor: Some(factor),
            panic_threshold: Some(panic),
            ..TrafficPolicy::default()
        };
        if failover {
            p = TrafficPolicy {
                locality_lb_setting: Some(
                    serde_json::from_str(r#"{"failover":[{"from":"r1","to":"r3"}]}"#).unwrap(),
                ),
                ..p
            };
        }
        p
    })
}

proptest! {
    #[test]
    fn shares_sum_to_100_when_anything_is_healthy(groups in arb_groups(), p in arb_policy()) {
        let s = compute(&caller("r1/z1"), &groups, &p);
        let sum: f64 = s.groups.iter().map(|g| g.percent).sum();
        let any_healthy = groups.iter().any(|g| g.healthy > 0);
        if any_healthy || p.panic_threshold() > 0 {
            prop_assert!((sum - 100.0).abs() < 0.1, "sum {sum}");
        } else {
            prop_assert_eq!(sum, 0.0);
        }
    }

    #[test]
    fn unhealthy_groups_get_nothing_unless_in_panic(groups in arb_groups(), p in arb_policy()) {
        let s = compute(&caller("r1/z1"), &groups, &p);
        for (g, share) in groups.iter().zip(&s.groups) {
            if g.healthy == 0 && !share.panic {
                prop_assert_eq!(share.percent, 0.0);
            }
        }
    }

    #[test]
    fn raising_health_never_lowers_the_share(groups in arb_groups(), p in arb_policy(), pick in 0usize..7) {
        let i = pick % groups.len();
        let before = compute(&caller("r1/z1"), &groups, &p);
        let mut better = groups.clone();
        better[i].healthy = (better[i].healthy + 1).min(better[i].total);
        let after = compute(&caller("r1/z1"), &better, &p);
        // Compare only outside panic transitions, where Envoy switches to host-count mode.
        if before.total_panic == after.total_panic && before.groups[i].panic == after.groups[i].panic && !after.groups[i].panic {
            prop_assert!(after.groups[i].percent + 1e-9 >= before.groups[i].percent,
                "share of group {} fell from {} to {}", i, before.groups[i].percent, after.groups[i].percent);
        }
    }

    #[test]
    fn draining_further_never_raises_the_share(groups in arb_groups(), p in arb_policy(), pick in 0usize..7, d in 0u32..1000, more in 1u32..=1000) {
        let i = pick % groups.len();
        let mut less = groups.clone();
        less[i].drain = d;
        let mut further = groups;
        further[i].drain = (d + more).min(1000);
        let before = compute(&caller("r1/z1"), &less, &p);
        let after = compute(&caller("r1/z1"), &further, &p);
        if before.total_panic == after.total_panic && before.groups[i].panic == after.groups[i].panic {
            prop_assert!(after.groups[i].percent <= before.groups[i].percent + 1e-9,
                "share of group {} rose from {} to {}", i, before.groups[i].percent, after.groups[i].percent);
        }
        if further[i].drain == 1000 {
            prop_assert_eq!(after.groups[i].percent, 0.0);
        }
    }

    #[test]
    fn first_priority_keeps_everything_while_overprovisioned(total in 1u32..50, h in 0u32..=100, factor in 100u32..=300, others in arb_groups()) {
        let healthy = total * h / 100;
        let mut groups = vec![group("r1/z1", total, healthy)];
        groups.extend(others.into_iter().filter(|g| g.locality != loc("r1/z1")));
        let p = TrafficPolicy { overprovisioning_factor: Some(factor), ..TrafficPolicy::default() };
        let s = compute(&caller("r1/z1"), &groups, &p);
        if u64::from(factor) * u64::from(healthy) / u64::from(total) >= 100 {
            prop_assert_eq!(s.groups[0].percent, 100.0);
        }
    }
}
