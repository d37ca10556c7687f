//! Cost of the locality engine on the gateway's paths: recomputing the split when inputs
//! change, and picking an endpoint per connection or request.
//! 1,000 endpoints in 50 localities (5 regions × 10 zones), a third of them unhealthy.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_api::Locality;
use meridian_api::pick::{Balance, EndpointView};
use meridian_api::policy::TrafficPolicy;
use meridian_api::split::{Caller, Group, compute};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn localities() -> Vec<Locality> {
    (0..50)
        .map(|i| Locality::new(format!("r{}", i / 10), format!("z{i}"), ""))
        .collect()
}

fn bench(c: &mut Criterion) {
    let locs = localities();
    let labels = BTreeMap::new();
    let endpoints: Vec<EndpointView<'_>> = (0..1000)
        .map(|i| EndpointView {
            locality: &locs[i % 50],
            labels: &labels,
            healthy: i % 3 != 0,
            drain: 0,
        })
        .collect();
    let caller = Caller::at(locs[0].clone());
    let policy: TrafficPolicy =
        serde_json::from_str(r#"{"localityLbSetting":{"failover":[{"from":"r0","to":"r2"}]}}"#)
            .unwrap();
    let groups: Vec<Group> = locs
        .iter()
        .map(|l| Group {
            locality: l.clone(),
            total: 20,
            healthy: 13,
            ..Group::default()
        })
        .collect();

    c.bench_function("split/compute 50 localities", |b| {
        b.iter(|| compute(black_box(&caller), black_box(&groups), black_box(&policy)))
    });
    c.bench_function("balance/rebuild 1000 endpoints", |b| {
        b.iter(|| {
            Balance::new(
                black_box(&caller),
                black_box(&policy),
                black_box(&endpoints),
            )
        })
    });

    // Pick with the caller's zone healthy (one priority) and with it down (spread over many).
    let balance = Balance::new(&caller, &policy, &endpoints);
    let mut rng = SmallRng::seed_from_u64(1);
    c.bench_function("pick/local", |b| b.iter(|| balance.picker.pick(&mut rng)));
    let spread: Vec<EndpointView<'_>> = endpoints
        .iter()
        .map(|e| EndpointView {
            healthy: e.healthy && e.locality.region != "r0",
            ..*e
        })
        .collect();
    let no_region = Balance::new(&caller, &TrafficPolicy::default(), &spread);
    c.bench_function("pick/spread over 40 localities", |b| {
        b.iter(|| no_region.picker.pick(&mut rng))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
