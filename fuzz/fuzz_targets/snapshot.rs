//! Snapshot decoding: a `Snapshot` message as a gateway or DNS server receives it from the
//! controller, decoded with prost, then applied as each applies it. The gateway builds its
//! routing table (`RoutingTable::build`: services, parsed policies, listeners, peers,
//! tunnel targets) and installs it in a data plane (`Dataplane::set_table`: health, routes
//! and balancers), then routes a request and a connection of every service and checks the
//! tunnel authorizes its own local endpoints. The DNS server builds its zones
//! (`Zones::build`, `Zones::into_catalog`, which must not fail on any snapshot) and
//! answers a query for every service. Opening listener sockets is left out.
//!
//! Input: the protobuf encoding of a `meridian.v1.Snapshot`.
#![no_main]

use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandle};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use meridian_api::proto::Snapshot;
use meridian_dns::authority::Authority;
use meridian_dns::zone::{ZoneSettings, Zones};
use meridian_gateway::dataplane::{Dataplane, Settings};
use meridian_gateway::limits::Limits;
use meridian_gateway::metrics::Metrics;
use meridian_gateway::routing::RoutingTable;
use meridian_gateway::tunnel::Pool;
use meridian_gateway::upstream;
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

static ZONES: LazyLock<ZoneSettings> = LazyLock::new(|| ZoneSettings {
    origins: vec![Name::from_str("global.").expect("a valid name")],
    ttl: 5,
    nameserver: Name::from_str("meridian-dns.meridian-system.svc.cluster.local.")
        .expect("a valid name"),
    clusterset: Some(Name::from_str("clusterset.local.").expect("a valid name")),
});

/// The gateway of `east`, fresh per input (health is per data plane).
fn dataplane() -> Dataplane {
    let metrics = Arc::new(Metrics::default());
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let pool = Pool::new(
        Duration::from_secs(1),
        Duration::from_secs(10),
        metrics.clone(),
        events,
    );
    let settings = Settings {
        max_retries: 2,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(15),
        address_map: None,
        // The gateway's defaults (docs/gateway.md#limits-and-timeouts).
        limits: Limits {
            max_connections: 10_000,
            max_peer_connections: 64,
            max_streams: 200,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
        },
        upstream: upstream::Settings {
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
        },
    };
    Dataplane::new("east", settings, metrics, pool)
}

async fn gateway(snapshot: Arc<Snapshot>) {
    let dp = dataplane();
    dp.set_table(RoutingTable::build("east", snapshot)).await;
    let routing = dp.routing();
    let mut rng = SmallRng::seed_from_u64(0);
    for (name, routes) in &routing.services {
        let svc = &routes.service;
        assert_eq!(routes.healthy.len(), svc.endpoints.len(), "{name}");
        for headers in [None, Some(&HeaderMap::new())] {
            let choice = routes.destination_for(headers, &mut rng);
            assert!(choice.destination < routes.destinations.len());
            if let Some(ep) = routes.pick(choice.destination, &mut rng, &[]) {
                assert!(ep < svc.endpoints.len());
            }
        }
        // The tunnel lets peers reach exactly the ready local endpoints of exported ports.
        for ep in svc.endpoints.iter().filter(|e| e.cluster == "east") {
            for port in svc
                .ports
                .iter()
                .filter(|p| p.listener_port != 0 && p.listener_port <= u32::from(u16::MAX))
            {
                let authorized =
                    routing
                        .table
                        .authorizes(&svc.global_hostname, port.port, ep.target(port));
                if ep.ready {
                    assert!(authorized, "{name} {port:?} {ep:?}");
                } else if !svc
                    .endpoints
                    .iter()
                    .any(|o| o.ready && o.cluster == "east" && o.target(port) == ep.target(port))
                {
                    assert!(!authorized, "not ready: {name} {port:?} {ep:?}");
                }
            }
        }
    }
}

async fn dns(snapshot: &Snapshot) {
    let zones = Zones::build(snapshot, &ZONES);
    let catalog = zones
        .into_catalog()
        .expect("zones from any snapshot load (a failure is a bug)");
    let authority = Authority::new(&ZONES.origins, Default::default());
    authority.replace(catalog);
    for service in snapshot.services.iter().take(4) {
        let Ok(name) = Name::from_str(&format!("{}.{}.global.", service.name, service.namespace))
        else {
            continue;
        };
        let mut query = Message::query();
        query.add_query(Query::query(name, RecordType::A));
        let Ok(bytes) = query.to_vec() else { continue };
        let client = "10.0.0.9:53000".parse().expect("an address");
        let request = Request::from_bytes(bytes, client, Protocol::Udp).expect("our query decodes");
        let (stream, _sent) = BufDnsStreamHandle::new(client);
        authority
            .handle_request::<_, TokioTime>(
                &request,
                ResponseHandle::new(client, stream, Protocol::Udp),
            )
            .await;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::decode(data) else {
        return;
    };
    let snapshot = Arc::new(snapshot);
    RUNTIME.block_on(async {
        gateway(snapshot.clone()).await;
        dns(&snapshot).await;
    });
});
