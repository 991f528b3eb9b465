//! The streaming server's HTTP/1.1 side (hyper): `/<kind>/<token>` consumes the token and
//! upgrades the connection to the protocol the client asks for (`Upgrade: SPDY/3.1` with
//! `X-Stream-Protocol-Version`; WebSocket with `Sec-WebSocket-Protocol`). An unknown, used or
//! expired token is 404, a token of another kind 400 (as kubelet).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::remotecommand::{self, negotiate, Protocol, Session};
use super::token::TakeError;
use super::{Backend, StreamRequest, Streaming};

/// The remote command protocols served over SPDY, newest first.
pub const SPDY_PROTOCOLS: &[Protocol] = &[Protocol::V4, Protocol::V3, Protocol::V2];
/// The header client-go offers its SPDY sub-protocols in.
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

type Body = Full<Bytes>;

/// Accepts connections until `stop` turns true; sessions under way go on.
pub async fn serve(
    listener: TcpListener,
    streaming: Arc<Streaming>,
    backend: Arc<dyn Backend>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: let some go before the next accept.
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (streaming, backend) = (streaming.clone(), backend.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (streaming, backend) = (streaming.clone(), backend.clone());
                async move { Ok::<_, Infallible>(handle(req, &streaming, backend)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
            }
        });
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Answers one request; an upgrade continues on its own task.
pub fn handle(
    mut req: Request<Incoming>,
    streaming: &Streaming,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only");
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let request = match streaming.tokens().take(kind, token) {
        Ok(r) => r,
        Err(TakeError::NotFound) => {
            return plain(StatusCode::NOT_FOUND, "unknown, used or expired streaming URL")
        }
        Err(TakeError::WrongKind) => {
            return plain(StatusCode::BAD_REQUEST, format!("this URL is not for {kind}"))
        }
    };
    let session = match request {
        StreamRequest::Exec(r) => Session::Exec(r),
        StreamRequest::Attach(r) => Session::Attach(r),
        StreamRequest::PortForward(_) => {
            return plain(StatusCode::NOT_IMPLEMENTED, "port forwarding is not implemented yet")
        }
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    match upgrade.as_str() {
        "spdy/3.1" => spdy_upgrade(&mut req, session, backend),
        _ => plain(
            StatusCode::BAD_REQUEST,
            "this endpoint streams over an upgraded connection: Upgrade: SPDY/3.1",
        ),
    }
}

fn spdy_upgrade(
    req: &mut Request<Incoming>,
    session: Session,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    let offered = req.headers().get_all(STREAM_PROTOCOL_HEADER);
    let Some(protocol) = negotiate(offered.iter().filter_map(|v| v.to_str().ok()), SPDY_PROTOCOLS)
    else {
        let accepted: Vec<&str> = SPDY_PROTOCOLS.iter().map(|p| p.name()).collect();
        let mut r = plain(
            StatusCode::FORBIDDEN,
            format!("no supported stream protocol offered (supported: {})", accepted.join(", ")),
        );
        if let Ok(v) = HeaderValue::from_str(&accepted.join(", ")) {
            r.headers_mut().insert("x-accepted-stream-protocol-versions", v);
        }
        return r;
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                remotecommand::serve_spdy(TokioIo::new(upgraded), protocol, session, backend).await
            }
            Err(e) => tracing::warn!(error = %e, "streaming upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(protocol.name()));
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::streaming::spdy::Frame;
    use crate::streaming::testutil::{exec, FakeBackend, SpdyClient};

    async fn server() -> (Arc<Streaming>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let streaming = Arc::new(Streaming::new(listener.local_addr().unwrap()));
        let (tx, rx) = watch::channel(false);
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::default());
        tokio::spawn(serve(listener, streaming.clone(), backend, rx));
        (streaming, tx)
    }

    /// Sends a request with `headers` to `url`; the status line and headers of the answer, the
    /// connection, and the bytes read past the headers.
    async fn request(url: &str, headers: &str) -> (String, TcpStream, Vec<u8>) {
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, path) = rest.split_once('/').unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req =
            format!("POST /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let n = tcp.read(&mut b).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                return (head, tcp, got[end + 4..].to_vec());
            }
        }
    }

    const SPDY: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
        X-Stream-Protocol-Version: v5.channel.k8s.io\r\n\
        X-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

    #[tokio::test]
    async fn exec_over_an_upgraded_connection_then_the_url_is_gone() {
        let (streaming, _stop) = server().await;
        let url = streaming
            .url_for(StreamRequest::Exec(exec(&["exit", "7"], false, false, false)))
            .unwrap();
        let (head, tcp, rest) = request(&url, SPDY).await;
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(lower.contains("upgrade: spdy/3.1"), "{head}");
        assert!(lower.contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
        let mut c = SpdyClient::new(tcp, rest);
        c.open(1, "error").await;
        c.open(3, "stdout").await;
        let t = c.until_status(1).await;
        assert_eq!(t.text(3), "out");
        assert!(t.text(1).contains("NonZeroExitCode"), "{}", t.text(1));
        c.send(Frame::GoAway { last_good_stream_id: 0, status: 0 }).await;
        // The server closes its side after the status.
        assert_eq!(c.recv().await, None);

        let (head, _, _) = request(&url, SPDY).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }

    #[tokio::test]
    async fn bad_urls_and_protocols_are_refused() {
        let (streaming, _stop) = server().await;
        let base = streaming.url_for(StreamRequest::Exec(exec(&["cat"], true, false, false)));
        let base = base.unwrap();
        let (root, _) = base.rsplit_once("/exec/").unwrap();
        let (head, _, _) = request(&format!("{root}/exec/0123"), SPDY).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _, _) = request(&format!("{root}/nothing"), SPDY).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        // A token of another kind.
        let token = base.rsplit_once('/').unwrap().1;
        let (head, _, _) = request(&format!("{root}/attach/{token}"), SPDY).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // No common protocol.
        let url =
            streaming.url_for(StreamRequest::Exec(exec(&["cat"], true, false, false))).unwrap();
        let old = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v1\r\n";
        let (head, _, _) = request(&url, old).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-accepted-stream-protocol-versions"));
        // No upgrade at all.
        let url =
            streaming.url_for(StreamRequest::Exec(exec(&["cat"], true, false, false))).unwrap();
        let (head, _, _) = request(&url, "").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
}
