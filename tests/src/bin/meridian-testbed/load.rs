//! The demo's client: a steady stream of HTTP requests at a bounded rate, each reported
//! twice (when sent and when answered) with the phase of the demo it was sent in.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_testbed::EchoReply;
use meridian_testbed::traffic::http_get;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// Requests allowed in flight at once; beyond it the stream slows down instead of piling up
/// connections on a stuck gateway (each request gives up after `traffic::REQUEST_TIMEOUT`).
const MAX_IN_FLIGHT: usize = 64;

/// Which part of the demo a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Phase {
    /// Index of the step.
    pub step: usize,
    /// The step's change has reached the gateway: the split is the new one.
    pub steady: bool,
}

/// What the stream reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// A request was sent.
    Sent(Phase),
    /// A request finished: the echo pod that answered, or `None` for a failure (no answer,
    /// or a status other than 200).
    Done(Phase, Option<EchoReply>),
}

/// Sends `GET /` to `addr` `rate` times per second until `events` is closed or the task is
/// aborted (aborting it aborts the requests in flight too).
pub(crate) async fn stream(
    addr: SocketAddr,
    rate: u32,
    phase: watch::Receiver<Phase>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut requests = JoinSet::new();
    loop {
        ticks.tick().await;
        while requests.try_join_next().is_some() {}
        if requests.len() >= MAX_IN_FLIGHT {
            requests.join_next().await;
        }
        let phase = *phase.borrow();
        if events.send(Event::Sent(phase)).is_err() {
            return;
        }
        let events = events.clone();
        requests.spawn(async move {
            let reply = http_get(addr, "/", &[])
                .await
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| r.echo());
            let _ = events.send(Event::Done(phase, reply));
        });
    }
}
