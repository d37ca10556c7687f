//! The request handler: answers every query from the zones of the current snapshot.
//!
//! Why hickory's [`Catalog`] and `InMemoryZoneHandler`, behind an [`ArcSwapOption`]:
//! the catalog already implements the authoritative answer logic the zone must follow
//! (NXDOMAIN with the SOA in the authority section, NODATA for a name without the asked
//! type and for empty non-terminals, REFUSED outside every zone, SRV target addresses in
//! the additional section, EDNS, NOTIMP for updates, REFUSED for AXFR), so none of it is
//! re-implemented here. What it lacks is an atomic swap of the whole zone set: its zones
//! are mutated in place. So each snapshot gets a new `Catalog`, built off to the side, and
//! the handler holds the current one in an `ArcSwapOption`. A query loads the `Arc` once
//! and finishes against that catalog, so it sees the old or the new zones, never a mix;
//! the swap is one pointer store, and a query costs one reference-count increment, never
//! a copy of the zone. The in-memory zone's internal lock is never written after the zone
//! is built, so reads do not contend.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::{DNSClass, LowerName, Name};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use tracing::warn;

use crate::metrics::Metrics;

/// The zones currently served, shared by the DNS server (reads) and the snapshot
/// follower (swaps). Cheap to clone.
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: ArcSwapOption<Catalog>,
    origins: Vec<LowerName>,
    metrics: Arc<Metrics>,
}

impl Authority {
    /// An authority for `origins` with no zones loaded yet: until the first
    /// [`replace`](Self::replace), queries in those zones get SERVFAIL (the data is not
    /// known, and SERVFAIL is not negatively cached) and all others REFUSED.
    pub fn new(origins: &[Name], metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog: ArcSwapOption::empty(),
                origins: origins.iter().map(LowerName::new).collect(),
                metrics,
            }),
        }
    }

    /// Atomically replaces the served zones.
    pub fn replace(&self, catalog: Catalog) {
        self.inner.catalog.store(Some(Arc::new(catalog)));
    }

    /// Whether zones have been loaded from a snapshot.
    pub fn is_loaded(&self) -> bool {
        self.inner.catalog.load().is_some()
    }

    fn in_zone(&self, name: &LowerName) -> bool {
        self.inner.origins.iter().any(|origin| origin.zone_of(name))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Authority {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let query = request.queries.queries().first();
        let info = match query.map(|query| query.query_class()) {
            Some(DNSClass::IN) | None => match self.inner.catalog.load_full() {
                Some(catalog) => {
                    catalog
                        .handle_request::<R, T>(request, response_handle)
                        .await
                }
                None => {
                    let code = match query {
                        None => ResponseCode::FormErr,
                        Some(query) if self.in_zone(query.name()) => ResponseCode::ServFail,
                        Some(_) => ResponseCode::Refused,
                    };
                    respond_error(request, code, response_handle).await
                }
            },
            // Legitimate classes this server has no zones in, like a name outside every zone.
            Some(DNSClass::CH | DNSClass::HS | DNSClass::ANY) => {
                respond_error(request, ResponseCode::Refused, response_handle).await
            }
            // NONE, OPT or an unassigned class is not a valid question class.
            Some(_) => respond_error(request, ResponseCode::FormErr, response_handle).await,
        };
        self.inner.metrics.query(
            query.map(|query| query.query_type()),
            info.response_code,
            request.protocol(),
        );
        info
    }
}

/// Sends an empty response with `code`, echoing the question.
async fn respond_error<R: ResponseHandler>(
    request: &Request,
    code: ResponseCode,
    mut response_handle: R,
) -> ResponseInfo {
    let response =
        MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "failed to send a response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}
