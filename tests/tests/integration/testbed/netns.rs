//! The network-namespace helper (`meridian_testbed::netns`) on real sockets: a cut link
//! stops traffic and healing it brings it back. Runs as root (as CI does); without the
//! capability it fails naming it, it is never skipped. Meridian under partitions:
//! gateway/tests/gateway/partition.rs.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_testbed::delay::DelayRelay;
use meridian_testbed::netns::{Link, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A namespace joined by a link, with a TCP echo server inside on the link's address.
async fn echo_in_namespace() -> (Netns, Link, SocketAddr) {
    let ns = Netns::create().unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"));
    let link = Link::connect(&ns).unwrap_or_else(|e| panic!("cannot create a veth link: {e}"));
    let std = ns
        .listen(SocketAddr::from((link.ns_ip, 0)))
        .unwrap_or_else(|e| panic!("{e}"));
    std.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(std).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (ns, link, addr)
}

/// One connect + echo round trip within `limit`.
async fn roundtrip(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let work = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tcp.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(buf)) if &buf == b"ping" => Ok(()),
        Ok(Ok(buf)) => Err(format!("echoed {buf:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

#[tokio::test]
async fn a_cut_link_partitions_and_healing_restores_it() {
    let (_ns, link, addr) = echo_in_namespace().await;
    roundtrip(addr, Duration::from_secs(5)).await.unwrap();
    link.cut().unwrap();
    let cut = roundtrip(addr, Duration::from_secs(1)).await;
    assert!(cut.is_err(), "the cut link still carried traffic: {cut:?}");
    link.heal().unwrap();
    roundtrip(addr, Duration::from_secs(5)).await.unwrap();
}

/// 5% packet loss (nftables) and 200 ms delay (a relay at the root end) on a link: every
/// echo still arrives (TCP retransmits what was dropped), and the loss rule counted drops.
#[tokio::test]
async fn a_lossy_delayed_link_still_delivers() {
    let (_ns, link, addr) = echo_in_namespace().await;
    let relay = DelayRelay::start(
        SocketAddr::from((link.root_ip, 0)),
        addr,
        Duration::from_millis(200),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    link.lose(5).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..40 {
        roundtrip(relay.addr(), Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert_eq!(relay.accepted(), 40);
    let dropped = link.dropped().unwrap();
    link.clear().unwrap();
    println!("40 of 40 echoes through 200 ms delay + 5% loss; {dropped} packets dropped");
    assert!(dropped > 0, "the loss rule dropped no packet");
}
