//! DNS query handling: arbitrary wire bytes through the path a UDP or TCP query takes in
//! `meridian-dns`, in process: hickory's request decoding (`Request::from_bytes`, which
//! the server applies to every datagram or TCP message), then `Authority::handle_request`
//! over zones built from a snapshot (and, separately, before any snapshot), and hickory's
//! response encoding. Every answer must decode, echo the query's id and be a response; a
//! UDP answer must fit the client's size (512 bytes, or its EDNS payload size).
//!
//! Input: one DNS message as sent on the wire (without TCP's length prefix).
#![no_main]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use futures::StreamExt;
use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::Name;
use hickory_server::server::{Request, RequestHandler, ResponseHandle};
use libfuzzer_sys::fuzz_target;
use meridian_api::proto::{ClusterVip, GlobalService, ServicePort, Snapshot};
use meridian_dns::authority::Authority;
use meridian_dns::metrics::Metrics;
use meridian_dns::zone::{ZoneSettings, Zones};
use tokio::runtime::Runtime;

struct World {
    runtime: Runtime,
    /// Serving two zones built from a snapshot.
    loaded: Authority,
    /// Started, no snapshot yet.
    empty: Authority,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let name = |s: &str| Name::from_str(s).expect("a valid name");
    let settings = ZoneSettings {
        origins: vec![name("global."), name("mesh.example.")],
        ttl: 5,
        nameserver: name("meridian-dns.meridian-system.svc.cluster.local."),
        clusterset: Some(name("clusterset.local.")),
    };
    let port = |name: &str, port| ServicePort {
        name: name.into(),
        port,
        ..Default::default()
    };
    let service = |name: &str, vip: &str| GlobalService {
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.global"),
        vip: vip.into(),
        ports: vec![port("http", 9080), port("grpc", 9090)],
        cluster_vips: vec![
            ClusterVip {
                cluster: "east".into(),
                vip: "10.96.1.1".into(),
                ports: Vec::new(),
            },
            ClusterVip {
                cluster: "west".into(),
                vip: "fd00::1:1".into(),
                ports: Vec::new(),
            },
        ],
        ..Default::default()
    };
    let snapshot = Snapshot {
        version: 7,
        cluster: "east".into(),
        services: vec![
            service("reviews", "10.96.0.10"),
            service("ratings", "fd00::10"),
            service("pending", ""),
        ],
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::new());
    let loaded = Authority::new(&settings.origins, metrics.clone());
    loaded.replace(
        Zones::build(&snapshot, &settings)
            .into_catalog()
            .expect("the zones load"),
    );
    World {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        loaded,
        empty: Authority::new(&settings.origins, metrics),
    }
});

const CLIENT: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)),
    53000,
);

/// Whether the first question's name is compressed (a pointer). hickory echoes the
/// question's original bytes, pointer included, but the bytes it points at differ in the
/// response (a pointer into the header, found by this target: the flags changed) or are
/// not there at all, so such an answer does not decode. A hickory-server behaviour that
/// garbles only the answer to the query that did it; excluded from the decode check.
fn question_is_compressed(message: &[u8]) -> bool {
    let mut at = 12;
    while let Some(&len) = message.get(at) {
        match len {
            0 => return false,
            l if l & 0xc0 != 0 => return true,
            l => at += 1 + usize::from(l),
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let world = &*WORLD;
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        // What hickory's server does with the bytes before our handler sees them: a message
        // that does not decode gets FORMERR from hickory itself, a response is dropped.
        let Ok(request) = Request::from_bytes(data.to_vec(), CLIENT, protocol) else {
            return;
        };
        if request.metadata.message_type == MessageType::Response {
            return;
        }
        let limit = match (&protocol, &request.edns) {
            (Protocol::Udp, Some(edns)) => usize::from(edns.max_payload().max(512)),
            (Protocol::Udp, None) => 512,
            _ => usize::from(u16::MAX),
        };
        for authority in [&world.loaded, &world.empty] {
            let (stream, mut sent) = BufDnsStreamHandle::new(CLIENT);
            let handle = ResponseHandle::new(CLIENT, stream, protocol);
            world.runtime.block_on(async {
                authority
                    .handle_request::<_, TokioTime>(&request, handle)
                    .await;
                if let Some(answer) = sent.next().await {
                    let bytes = answer.bytes();
                    assert!(
                        bytes.len() <= limit,
                        "{} bytes over {protocol}",
                        bytes.len()
                    );
                    if question_is_compressed(data) {
                        return;
                    }
                    let message = Message::from_vec(bytes).expect("the answer decodes");
                    assert_eq!(message.metadata.id, request.metadata.id);
                    assert_eq!(message.metadata.message_type, MessageType::Response);
                }
            });
        }
    }
});
