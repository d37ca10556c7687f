//! The network-namespace helper (`meridian_testbed::netns`) on real sockets: a cut link
//! stops traffic and healing it brings it back. Runs as root (as CI does); without the
//! capability it fails naming it, it is never skipped. Meridian under partitions:
//! gateway/tests/gateway/partition.rs.

use std::net::SocketAddr;
use std::time::Duration;

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
