//! Encoded UDP answers to repeated queries, kept per socket and per served snapshot.
//!
//! A query answered from the index of names ([`crate::names`]) gets an answer fixed by
//! the served zones and the query's bytes alone: its flags, its question (name case
//! included, which the answer echoes) and its EDNS record. Clients ask the same few names
//! over and over, so the answer is kept, encoded, keyed by the datagram without its
//! 2-byte ID; the next identical query is answered by copying it and writing the new ID,
//! without parsing the query or encoding records (NSD and PowerDNS keep answers the same
//! way). Everything else (hickory's answers, errors, FORMERR) is never kept.
//!
//! Invalidation is by generation: every set of served zones carries a number that grows
//! with each change ([`crate::authority::Authority::generation`]). An answer is only kept
//! under the generation that produced it, and a cache that sees a new generation
//! empties itself before its next lookup, so no answer outlives the zones it came from.
//!
//! Why a plain map per socket, not a shared or LRU cache crate: each socket's loop owns
//! its cache, so a lookup takes no lock and no atomic; a full cache is emptied at once
//! (the working set of a real client population refills it within a moment, and a flood
//! of distinct names gains nothing from finer eviction). The map keeps std's randomly
//! keyed SipHash because its keys are chosen by whoever sends queries.

use std::collections::HashMap;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;

/// Answers kept per socket; a full cache is emptied.
const MAX_ENTRIES: usize = 16_384;
/// Longer queries (several questions, large EDNS options) are not kept.
const MAX_QUERY: usize = 512;
/// A DNS header is 12 bytes, the ID its first two.
const HEADER: usize = 12;

/// One kept answer.
#[derive(Debug)]
pub(crate) struct Cached {
    /// The encoded response, with the ID of the query that produced it.
    response: Box<[u8]>,
    /// The question's type and the response code, for the query metrics.
    pub(crate) query_type: RecordType,
    pub(crate) code: ResponseCode,
}

impl Cached {
    /// Writes the response to `query` (an identical query but for its ID) into `out`.
    pub(crate) fn write_for(&self, query: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.response);
        out[..2].copy_from_slice(&query[..2]);
    }
}

/// Encoded answers of one generation of the served zones, keyed by query bytes.
#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    generation: u64,
    entries: HashMap<Box<[u8]>, Cached>,
}

impl AnswerCache {
    /// The answer kept for `query` while `generation` is served; a new generation
    /// empties the cache first.
    pub(crate) fn get(&mut self, generation: u64, query: &[u8]) -> Option<&Cached> {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
            return None;
        }
        if query.len() < HEADER {
            return None;
        }
        self.entries.get(&query[2..])
    }

    /// Keeps `response`, the answer to `query` from the zones of `generation`. Answers of
    /// any other generation than the one this cache holds are not kept.
    pub(crate) fn insert(
        &mut self,
        generation: u64,
        query: &[u8],
        response: &[u8],
        query_type: RecordType,
        code: ResponseCode,
    ) {
        if generation != self.generation
            || !(HEADER..=MAX_QUERY).contains(&query.len())
            || response.len() < HEADER
        {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(
            query[2..].into(),
            Cached {
                response: response.into(),
                query_type,
                code,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &[u8]) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn an_identical_query_gets_the_answer_with_its_own_id() {
        let mut cache = AnswerCache::default();
        let first = query(0x1234, b"\x03foo");
        let mut response = first.clone();
        response[2] |= 0x80;
        assert!(
            cache.get(1, &first).is_none(),
            "a new generation starts empty"
        );
        cache.insert(1, &first, &response, RecordType::A, ResponseCode::NoError);

        let again = query(0xbeef, b"\x03foo");
        let mut out = Vec::new();
        cache.get(1, &again).unwrap().write_for(&again, &mut out);
        assert_eq!(&out[..2], &[0xbe, 0xef]);
        assert_eq!(out[2..], response[2..]);
        // The name's case is part of the question the answer echoes.
        assert!(cache.get(1, &query(0xbeef, b"\x03FOO")).is_none());
    }

    #[test]
    fn a_new_generation_empties_the_cache_and_old_answers_are_not_kept() {
        let mut cache = AnswerCache::default();
        let q = query(1, b"\x03foo");
        cache.get(1, &q);
        cache.insert(1, &q, &q, RecordType::A, ResponseCode::NoError);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(2, &q).is_none());
        assert_eq!(cache.len(), 0);
        // An answer computed from generation 1 arriving after the switch to 2.
        cache.insert(1, &q, &q, RecordType::A, ResponseCode::NoError);
        assert!(cache.get(2, &q).is_none());
    }

    #[test]
    fn size_is_bounded() {
        let mut cache = AnswerCache::default();
        cache.get(1, &query(0, b""));
        let long = query(0, &vec![b'a'; MAX_QUERY]);
        cache.insert(1, &long, &long, RecordType::A, ResponseCode::NoError);
        assert_eq!(cache.len(), 0, "long queries are not kept");
        for i in 0..=MAX_ENTRIES {
            let q = query(0, format!("\x06{i:06}").as_bytes());
            cache.insert(1, &q, &q, RecordType::A, ResponseCode::NoError);
        }
        assert_eq!(cache.len(), 1, "emptied when full, then the newest kept");
    }
}
