//! Reading a Meridian component's admin endpoints (`/config_dump`, `/metrics`) over plain
//! HTTP/1.1.

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GETs `base` + `path` (`base` is `http://host:port`) and returns the body.
async fn get(base: &str, path: &str) -> anyhow::Result<Bytes> {
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
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// GETs `base` + `path` (`base` is `http://host:port`) and parses the JSON body.
pub(crate) async fn get_json(base: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = get(base, path).await?;
    serde_json::from_slice(&body).with_context(|| format!("parsing {base}{path}"))
}

/// GETs `base` + `path` as UTF-8 text (the Prometheus exposition of `/metrics`).
pub(crate) async fn get_text(base: &str, path: &str) -> anyhow::Result<String> {
    let body = get(base, path).await?;
    String::from_utf8(body.to_vec()).with_context(|| format!("{base}{path} is not UTF-8"))
}
