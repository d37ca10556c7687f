//! The request handler: answers every query from the zones of the current snapshot.
//!
//! Why hickory's [`Catalog`] and `InMemoryZoneHandler`, behind an [`ArcSwapOption`]:
//! the catalog already implements the authoritative answer logic the zone must follow
//! (NXDOMAIN with the SOA in the authority section, NODATA for a name without the asked
//! type and for empty non-terminals, REFUSED outside every zone, SRV target addresses in
//! the additional section, EDNS, NOTIMP for updates, REFUSED for AXFR), so none of it is
//! re-implemented here. What it lacks is an atomic swap of the whole zone set: its zones
//! are mutated in place. So the handler holds what is served ([`ServedZones`]: the catalog
//! and the index of names) in an `ArcSwapOption`, and the snapshot follower stores a new
//! one for every change, with a single pointer store. A query loads the `Arc` once and
//! finishes against it; a query costs one reference-count increment, never a copy of the
//! zone. Successive versions share the catalog: [`crate::state`] writes the record sets a
//! change touched into its zones in place, under each zone's write lock, and swaps the new
//! index in while it holds those locks, so a query sees each zone before or after a
//! change, never halfway through it.
//!
//! One exception to "hickory answers": ordinary queries (one question, a plain record
//! type) are answered from the hash index of names built with the catalog
//! ([`crate::names`]), because hickory finds negative answers by walking the whole zone
//! and spends more than a hash lookup on the others. The message is the one hickory
//! builds, byte for byte (tested against it).

use std::iter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use tracing::{error, warn};

use crate::metrics::Metrics;
use crate::names::{Answer, NameIndex};

/// What one snapshot serves: hickory's catalog of the zones, and the index of the names
/// they hold, for the ordinary queries. Built by [`crate::zone::Zones::into_catalog`].
///
/// The snapshot follower makes a new one for every change it applies; successive ones
/// may share the catalog (whose zones it then updates in place, see [`crate::state`]) and
/// share every part of the index a change did not touch.
pub struct ServedZones {
    catalog: Arc<Catalog>,
    names: NameIndex,
    /// Set by [`Authority::replace`]: grows with every change served.
    generation: u64,
}

impl ServedZones {
    pub(crate) fn new(catalog: Arc<Catalog>, names: NameIndex) -> Self {
        Self {
            catalog,
            names,
            generation: 0,
        }
    }

    /// The hickory catalog of the zones.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> &NameIndex {
        &self.names
    }
}

/// The zones currently served, shared by the DNS server (reads) and the snapshot
/// follower (swaps). Cheap to clone.
#[derive(Clone)]
pub struct Authority {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: ArcSwapOption<ServedZones>,
    /// The generation of the zones stored last.
    generation: AtomicU64,
    origins: Vec<LowerName>,
    metrics: Arc<Metrics>,
}

/// How [`Authority::answer`] answered a query.
pub(crate) struct Answered {
    /// What was sent.
    pub(crate) info: ResponseInfo,
    /// The generation of the zones that answered, when the answer came from the index of
    /// names: such an answer is fixed by those zones and the query's bytes (see
    /// [`crate::answer_cache`]). `None` for hickory's answers and errors.
    pub(crate) indexed: Option<u64>,
}

impl Authority {
    /// An authority for `origins` with no zones loaded yet: until the first
    /// [`replace`](Self::replace), queries in those zones get SERVFAIL (the data is not
    /// known, and SERVFAIL is not negatively cached) and all others REFUSED.
    pub fn new(origins: &[Name], metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                origins: origins.iter().map(LowerName::new).collect(),
                metrics,
            }),
        }
    }

    /// Atomically replaces the served zones.
    pub fn replace(&self, mut zones: ServedZones) {
        // Only this call stores zones and it is not run concurrently (one snapshot
        // follower), so generations are stored in increasing order.
        zones.generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.catalog.store(Some(Arc::new(zones)));
    }

    /// The generation of the zones served now (0 before the first); any change to what
    /// is served changes it.
    pub(crate) fn generation(&self) -> u64 {
        self.inner
            .catalog
            .load()
            .as_ref()
            .map_or(0, |served| served.generation)
    }

    /// Counts a UDP query answered from the answer cache, as [`Authority::answer`] counts
    /// the others.
    pub(crate) fn count_cached(&self, qtype: RecordType, code: ResponseCode) {
        self.inner.metrics.answer_cache_hit();
        self.inner.metrics.query(Some(qtype), code, Protocol::Udp);
    }

    /// The zones served now.
    #[cfg(test)]
    pub(crate) fn served(&self) -> Option<Arc<ServedZones>> {
        self.inner.catalog.load_full()
    }

    /// Whether zones have been loaded from a snapshot.
    pub fn is_loaded(&self) -> bool {
        self.inner.catalog.load().is_some()
    }

    fn in_zone(&self, name: &LowerName) -> bool {
        self.inner.origins.iter().any(|origin| origin.zone_of(name))
    }
}

impl Authority {
    /// Answers `request` through `response_handle` and counts it; says whether the
    /// answer came from the index of names, and of which zones.
    pub(crate) async fn answer<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> Answered {
        let query = request.queries.queries().first();
        let mut indexed = None;
        let info = match query.map(|query| query.query_class()) {
            Some(DNSClass::IN) | None => match self.inner.catalog.load_full() {
                Some(served) => match indexed_answer(request, &served.names) {
                    Some(answer) => {
                        let info = respond_indexed(request, answer, response_handle).await;
                        indexed = Some(served.generation);
                        info
                    }
                    None => {
                        served
                            .catalog
                            .handle_request::<R, T>(request, response_handle)
                            .await
                    }
                },
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
        Answered { info, indexed }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Authority {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.answer::<R, T>(request, response_handle).await.info
    }
}

/// The answer to `request` from the index, if it is an ordinary query (one question,
/// EDNS version 0 or none) the index answers; anything else goes to hickory.
fn indexed_answer<'a>(request: &Request, names: &'a NameIndex) -> Option<Answer<'a>> {
    let metadata = &request.metadata;
    if metadata.message_type != MessageType::Query || metadata.op_code != OpCode::Query {
        return None;
    }
    if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        return None; // BADVERS, from hickory
    }
    let [query] = request.queries.queries() else {
        return None; // FORMERR, from hickory
    };
    names.answer(query.name(), query.query_type())
}

/// Sends `answer` as hickory's catalog sends an authoritative answer: AA set, the
/// records of each section, and an OPT record (version 0, the client's payload size but
/// at least 512) when the query had one.
async fn respond_indexed<R: ResponseHandler>(
    request: &Request,
    answer: Answer<'_>,
    mut response_handle: R,
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|request_edns| {
        let mut edns = Edns::new();
        edns.set_max_payload(request_edns.max_payload().max(512));
        edns.set_version(0);
        edns
    });
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.response_code = answer.code;
    let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        answer.answers.iter(),
        answer.authorities.iter(),
        iter::empty(),
        answer.additionals.iter().flat_map(|records| records.iter()),
    );
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(send_error) => {
            error!(error = %send_error, "error sending response");
            let mut metadata = Metadata::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
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
