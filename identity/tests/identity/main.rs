//! Integration tests of the identity crate: real mTLS handshakes over loopback sockets.

mod handshake;
mod rotation;

use std::net::SocketAddr;

use meridian_identity::tls::{Acceptor, Connector};
use meridian_identity::{Credentials, Identity, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts an echo server behind `acceptor`; every handshake result is sent to the channel
/// (`Ok(client identity)` or `Err(failure reason)`).
pub async fn echo_server(
    acceptor: Acceptor,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<Identity, &'static str>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok((mut tls, id)) => {
                        let _ = tx.send(Ok(id));
                        let mut buf = [0u8; 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(meridian_identity::verifier::failure_reason(&e)));
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects with `connector` to `addr` expecting `server`, then round-trips a ping.
pub async fn ping(
    connector: &Connector,
    addr: SocketAddr,
    server: &Identity,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(tcp, server).await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

/// A connector that presents `creds`.
pub fn connector(creds: Credentials) -> Connector {
    tls::watch(creds).unwrap().1.connector()
}
