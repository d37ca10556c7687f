//! The accept loop of the binaries' TCP listeners (the gateway's, the controller's gRPC
//! port): a failed accept (out of file descriptors and the like) is logged and retried after
//! a pause, so the loop never spins.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// The next connection `listener` accepts, or `None` once `stop` completes. A failed accept
/// is logged as `what` and retried after `pause`.
pub async fn accept_until(
    listener: &TcpListener,
    stop: impl Future<Output = ()>,
    pause: Duration,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    warn!(error = %e, "{what} failed");
                    tokio::time::sleep(pause).await;
                }
            },
            () = &mut stop => return None,
        }
    }
}
