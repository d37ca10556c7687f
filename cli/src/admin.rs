//! Reading a Meridian component's admin endpoint (`/config_dump`) over plain HTTP/1.1.

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GETs `base` + `path` (`base` is `http://host:port`) and parses the JSON body.
pub(crate) async fn get_json(base: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{base:?}: only http:// admin URLs are supported"))?
        .trim_end_matches('/');
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", authority)
        .body(Empty::<Bytes>::new())?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("GET {base}{path}"))?;
    if !resp.status().is_success() {
        bail!("GET {base}{path}: {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&body).with_context(|| format!("parsing {base}{path}"))
}
