//! Many queries over UDP with no lost answer: 10,000 at 64 in flight, and a burst from one socket.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::support::{PATIENCE, header, metric, query_bytes, service, serving, snapshot};

const IN: u16 = 1;
const A: u16 = 1;
/// Recursion desired, as stub resolvers send.
const RD: u16 = 0x0100;

const QUERIES: usize = 10_000;
const SERVICES: usize = 100;
/// Queries in flight at once.
const CONCURRENCY: usize = 64;
/// Tries per query: the first send and up to two retries.
const ATTEMPTS: usize = 3;
/// How long one try waits for its answer before it is retried: long enough that only a
/// lost datagram, not a slow answer on a loaded machine, makes a retry.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How one query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Answered, after this many tries.
    Answered(usize),
    /// No answer after every try.
    Lost,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_udp_queries_lose_no_answer() {
    let services = (0..SERVICES)
        .map(|i| service(&format!("svc-{i}"), "load", &format!("10.97.0.{i}")))
        .collect();
    let (_controller, dns) = serving(snapshot(1, services), &[]).await;

    // Retries are ours, not the client's, so that each one is counted.
    let stream = UdpClientStream::builder(dns.addr, TokioRuntimeProvider::default())
        .with_timeout(Some(ATTEMPT_TIMEOUT))
        .with_max_retries(0)
        .build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut queries = JoinSet::new();
    for i in 0..QUERIES {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let mut client = client.clone();
        queries.spawn(async move {
            let _permit = permit;
            let service = i % SERVICES;
            let name = Name::from_str(&format!("svc-{service}.load.global.")).unwrap();
            for attempt in 1..=ATTEMPTS {
                let Ok(response) = client
                    .query(name.clone(), DNSClass::IN, RecordType::A)
                    .await
                else {
                    continue;
                };
                assert_eq!(
                    response.response_code,
                    ResponseCode::NoError,
                    "{response:?}"
                );
                let addresses: Vec<_> = response
                    .answers
                    .iter()
                    .filter_map(|rr| match &rr.data {
                        RData::A(a) => Some(a.0.to_string()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(addresses, [format!("10.97.0.{service}")], "query {i}");
                return Outcome::Answered(attempt);
            }
            Outcome::Lost
        });
    }
    let mut first_try = 0;
    let mut after_retry = 0;
    let mut lost = 0;
    while let Some(outcome) = queries.join_next().await {
        match outcome.expect("query task") {
            Outcome::Answered(1) => first_try += 1,
            Outcome::Answered(_) => after_retry += 1,
            Outcome::Lost => lost += 1,
        }
    }
    // The server counts a query after sending its answer: the last answers can be read
    // before they are counted, so wait (bounded by PATIENCE) for the count to catch up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let served = loop {
        let served = metric(
            &dns.metrics().await,
            r#"meridian_dns_queries_total{qtype="A",rcode="NOERROR",protocol="udp"}"#,
        )
        .unwrap_or_default();
        if served >= QUERIES as f64 || tokio::time::Instant::now() >= deadline {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "load: {QUERIES} UDP queries, {CONCURRENCY} in flight: {first_try} answered first try, \
         {after_retry} after a retry, {lost} lost (no answer after {ATTEMPTS} tries); \
         server counted {served} answers"
    );
    assert_eq!(first_try + after_retry + lost, QUERIES);
    assert_eq!(lost, 0, "queries without an answer after {ATTEMPTS} tries");
    assert!(served >= QUERIES as f64, "server counted {served}");
}

/// Queries sent at once, without waiting for answers: more than hickory's own UDP loop
/// could queue for sending (32), few enough that the answers fit the client's receive
/// buffer.
const BURST: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_udp_queries_from_one_socket_is_answered_in_full() {
    let services = (0..SERVICES)
        .map(|i| service(&format!("svc-{i}"), "load", &format!("10.97.0.{i}")))
        .collect();
    let (_controller, dns) = serving(snapshot(1, services), &[]).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    for id in 0..BURST as u16 {
        let name = format!("svc-{}.load.global", usize::from(id) % SERVICES);
        let packet = query_bytes(id, RD, &[(name.as_str(), A, IN)]);
        socket.send_to(&packet, dns.addr).await.expect("send");
    }
    let mut answered = [false; BURST];
    let mut buf = vec![0; 65_535];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while answered.iter().any(|a| !a) {
        let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        else {
            break;
        };
        let reply = header(&buf[..len]);
        assert!(reply.is_response && reply.rcode == 0, "{:?}", &buf[..len]);
        answered[usize::from(reply.id)] = true;
    }
    let missing: Vec<usize> = (0..BURST).filter(|&i| !answered[i]).collect();
    assert!(missing.is_empty(), "no answer to queries {missing:?}");
}
