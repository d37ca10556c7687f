//! Client traffic for end-to-end checks: plain HTTP/1.1 requests and raw TCP connections
//! whose answers (an [`EchoReply`]) are tallied by cluster, zone, pod and version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::echo::EchoReply;
use crate::error::{Error, Result};

/// Bound on one request, so a broken path fails a test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP response: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes (the whole response is read: `Connection: close`).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo pod that answered, if the body is an [`EchoReply`].
    pub fn echo(&self) -> Option<EchoReply> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends `GET path` with `headers` to `addr` over a fresh connection.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("HTTP GET {addr}{path}"),
            after: REQUEST_TIMEOUT,
        })?
        .map_err(Error::io(format!("HTTP GET {addr}{path}")))?;
    parse_response(&raw)
        .ok_or_else(|| Error::InvalidSpec(format!("malformed HTTP response from {addr}")))
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(HttpResponse { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Opens a raw TCP connection and reads the echo pod's greeting line.
pub async fn tcp_hello(addr: SocketAddr) -> Result<EchoReply> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("TCP greeting from {addr}"),
            after: REQUEST_TIMEOUT,
        })?
        .map_err(Error::io(format!("TCP to {addr}")))?;
    serde_json::from_str(line.trim())
        .map_err(|e| Error::InvalidSpec(format!("greeting from {addr}: {e}: {line:?}")))
}

/// Where a batch of requests landed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Answers per cluster.
    pub clusters: BTreeMap<String, usize>,
    /// Answers per zone.
    pub zones: BTreeMap<String, usize>,
    /// Answers per version.
    pub versions: BTreeMap<String, usize>,
    /// Answers per pod.
    pub pods: BTreeMap<String, usize>,
    /// Requests that failed (no answer, or a status other than 200).
    pub failed: usize,
}

impl Tally {
    /// Counts one outcome.
    pub fn record(&mut self, outcome: Option<EchoReply>) {
        match outcome {
            Some(r) => {
                *self.clusters.entry(r.cluster).or_default() += 1;
                *self.zones.entry(r.zone).or_default() += 1;
                *self.versions.entry(r.version).or_default() += 1;
                *self.pods.entry(r.pod).or_default() += 1;
            }
            None => self.failed += 1,
        }
    }

    /// Answers from `cluster`.
    pub fn from(&self, cluster: &str) -> usize {
        self.clusters.get(cluster).copied().unwrap_or(0)
    }

    /// Answers with `version`.
    pub fn version(&self, version: &str) -> usize {
        self.versions.get(version).copied().unwrap_or(0)
    }

    /// All answered requests.
    pub fn answered(&self) -> usize {
        self.clusters.values().sum()
    }
}

/// Sends `n` sequential HTTP requests to `addr` and tallies who answered.
pub async fn http_tally(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        let reply = http_get(addr, "/", headers)
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.echo());
        tally.record(reply);
    }
    tally
}

/// Opens `n` sequential TCP connections to `addr` and tallies who greeted.
pub async fn tcp_tally(addr: SocketAddr, n: usize) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..n {
        tally.record(tcp_hello(addr).await.ok());
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"no"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
    }
}
