//! The streaming server's HTTP/1.1 side (hyper): `/<kind>/<token>` consumes the token and
//! upgrades the connection to the protocol the client asks for: `Upgrade: SPDY/3.1` with
//! `X-Stream-Protocol-Version` (remote command v4/v3/v2, port forward `portforward.k8s.io`), or
//! `Upgrade: websocket` with `Sec-WebSocket-Protocol` (remote command v5/v4/older channel
//! protocols, port forward as client-go's SPDY-over-WebSocket tunnel). An unknown, used or
//! expired token is 404, a token of another kind 400 (as kubelet); no common protocol 403.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_native_tls::TlsAcceptor;

use super::remotecommand::{self, negotiate, Protocol, Session, WsProtocol};
use super::tls::HANDSHAKE_TIMEOUT;
use super::token::TakeError;
use super::websocket::{self, WsBytes};
use super::{portforward, Backend, StreamRequest, Streaming};

/// The remote command protocols served over SPDY, newest first.
pub const SPDY_PROTOCOLS: &[Protocol] = &[Protocol::V4, Protocol::V3, Protocol::V2];
/// The header client-go offers its SPDY sub-protocols in.
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

type Body = Full<Bytes>;
type Io = TokioIo<Upgraded>;

/// Accepts connections until `stop` turns true; sessions under way go on. With `tls`, each
/// connection completes a TLS handshake first.
pub async fn serve(
    listener: TcpListener,
    streaming: Arc<Streaming>,
    backend: Arc<dyn Backend>,
    tls: Option<TlsAcceptor>,
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
        let (streaming, backend, tls) = (streaming.clone(), backend.clone(), tls.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(tcp, peer, streaming, backend).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(io)) => serve_connection(io, peer, streaming, backend).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "streaming TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "streaming TLS handshake timed out"),
            }
        });
    }
}

/// HTTP/1.1 (with upgrades) on one accepted connection.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    streaming: Arc<Streaming>,
    backend: Arc<dyn Backend>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (streaming, backend) = (streaming.clone(), backend.clone());
        async move { Ok::<_, Infallible>(handle(req, &streaming, backend)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
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
        StreamRequest::PortForward(r) => return port_forward(&mut req, r.pod_sandbox_id, backend),
    };
    if websocket::is_websocket(req.headers()) {
        return remote_command_ws(&mut req, session, backend);
    }
    if !is_spdy(&req) {
        return plain(
            StatusCode::BAD_REQUEST,
            "this endpoint streams over an upgraded connection: Upgrade: SPDY/3.1 or websocket",
        );
    }
    let offered = req.headers().get_all(STREAM_PROTOCOL_HEADER);
    let Some(protocol) = negotiate(offered.iter().filter_map(|v| v.to_str().ok()), SPDY_PROTOCOLS)
    else {
        let names: Vec<&str> = SPDY_PROTOCOLS.iter().map(|p| p.name()).collect();
        return no_spdy_protocol(&names);
    };
    upgrade(&mut req, move |io| remotecommand::serve_spdy(io, protocol, session, backend));
    spdy_switch(protocol.name())
}

fn is_spdy(req: &Request<Incoming>) -> bool {
    let upgrade = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|u| u.trim().eq_ignore_ascii_case("spdy/3.1"))
}

fn port_forward(
    req: &mut Request<Incoming>,
    pod: String,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    if websocket::is_websocket(req.headers()) {
        let accept = match ws_accept(req) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let offered = websocket::offered_protocols(req.headers());
        if !offered.iter().any(|p| p == portforward::TUNNEL_PROTOCOL) {
            return plain(
                StatusCode::FORBIDDEN,
                format!(
                    "no supported WebSocket sub-protocol offered (supported: {})",
                    portforward::TUNNEL_PROTOCOL
                ),
            );
        }
        upgrade(req, move |io| async move {
            let ws = WsBytes::new(websocket::server_stream(io).await);
            portforward::serve_spdy(ws, pod, backend).await
        });
        return ws_switch(&accept, Some(portforward::TUNNEL_PROTOCOL));
    }
    if !is_spdy(req) {
        return plain(
            StatusCode::BAD_REQUEST,
            "port forwarding is over an upgraded connection: Upgrade: SPDY/3.1 or websocket",
        );
    }
    let offered = req.headers().get_all(STREAM_PROTOCOL_HEADER);
    let ok = offered
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == portforward::PROTOCOL);
    if !ok {
        return no_spdy_protocol(&[portforward::PROTOCOL]);
    }
    upgrade(req, move |io| portforward::serve_spdy(io, pod, backend));
    spdy_switch(portforward::PROTOCOL)
}

fn remote_command_ws(
    req: &mut Request<Incoming>,
    session: Session,
    backend: Arc<dyn Backend>,
) -> Response<Body> {
    let accept = match ws_accept(req) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let offered = websocket::offered_protocols(req.headers());
    // A client offering nothing gets the plain channel protocol (as kubelet).
    let (protocol, answer) = if offered.is_empty() {
        (WsProtocol::V1, None)
    } else {
        match WsProtocol::negotiate(offered.iter().map(String::as_str)) {
            Some(p) => (p, Some(p.name())),
            None => {
                let names: Vec<&str> = WsProtocol::ALL.iter().map(|p| p.name()).collect();
                return plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "no supported WebSocket sub-protocol offered (supported: {})",
                        names.join(", ")
                    ),
                );
            }
        }
    };
    upgrade(req, move |io| async move {
        let ws = websocket::server_stream(io).await;
        remotecommand::serve_ws(ws, protocol, session, backend).await
    });
    ws_switch(&accept, answer)
}

/// Checks a WebSocket handshake: the accept key, or the answer refusing it.
fn ws_accept(req: &Request<Incoming>) -> Result<String, Box<Response<Body>>> {
    if req.method() != Method::GET {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is a GET request",
        )));
    }
    websocket::accept_key(req.headers()).map_err(|e| {
        let mut r = plain(StatusCode::BAD_REQUEST, e.to_string());
        if matches!(e, websocket::HandshakeError::Version(_)) {
            *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
            r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        Box::new(r)
    })
}

fn no_spdy_protocol(supported: &[&str]) -> Response<Body> {
    let mut r = plain(
        StatusCode::FORBIDDEN,
        format!("no supported stream protocol offered (supported: {})", supported.join(", ")),
    );
    if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
        r.headers_mut().insert("x-accepted-stream-protocol-versions", v);
    }
    r
}

/// Runs `serve` on the connection once hyper hands it over (after the 101 is sent).
fn upgrade<F, Fut>(req: &mut Request<Incoming>, serve: F)
where
    F: FnOnce(Io) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!(error = %e, "streaming upgrade failed"),
        }
    });
}

fn switching(upgrade: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    r
}

fn spdy_switch(protocol: &'static str) -> Response<Body> {
    let mut r = switching("SPDY/3.1");
    r.headers_mut().insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    r
}

fn ws_switch(accept: &str, protocol: Option<&'static str>) -> Response<Body> {
    let mut r = switching("websocket");
    let h = r.headers_mut();
    // The key is base64: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use k8s_cri::v1 as cri;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;
    use crate::streaming::remotecommand::over_ws::{ERROR, STDOUT};
    use crate::streaming::spdy::Frame;
    use crate::streaming::testutil::{exec, FakeBackend, SpdyClient, WsClient};

    async fn server() -> (Arc<Streaming>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let streaming = Arc::new(Streaming::new(listener.local_addr().unwrap()));
        let (tx, rx) = watch::channel(false);
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::default());
        tokio::spawn(serve(listener, streaming.clone(), backend, None, rx));
        (streaming, tx)
    }

    #[tokio::test]
    async fn with_tls_the_urls_are_https_and_plain_clients_get_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = crate::streaming::tls::test_identity(d.path());
        let cfg = crate::streaming::StreamingConfig {
            tls_cert_file: Some(cert.clone()),
            tls_key_file: Some(key),
            ..Default::default()
        };
        let acceptor = crate::streaming::tls::acceptor(&cfg).unwrap().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streaming = Arc::new(Streaming::new_tls(addr));
        let (_stop, rx) = watch::channel(false);
        let backend: Arc<dyn Backend> = Arc::new(FakeBackend::default());
        tokio::spawn(serve(listener, streaming.clone(), backend, Some(acceptor), rx));

        // Plain HTTP to the TLS port: no HTTP answer, the connection is closed.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /exec/x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got).await;
        assert!(!got.starts_with(b"HTTP/1.1"), "{:?}", String::from_utf8_lossy(&got));

        // A client that trusts the certificate runs an exec through it.
        let url = streaming
            .url_for(StreamRequest::Exec(exec(&["exit", "7"], false, false, false)))
            .unwrap();
        let path = url.strip_prefix(&format!("https://{addr}")).unwrap().to_string();
        let root = native_tls::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let connector = native_tls::TlsConnector::builder()
            .add_root_certificate(root)
            .disable_built_in_roots(true)
            .build()
            .unwrap();
        let connector = tokio_native_tls::TlsConnector::from(connector);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect("localhost", tcp).await.unwrap();
        let req =
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{SPDY}\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let (head, rest) = read_head(&mut tls).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut c = SpdyClient::new(tls, rest);
        c.open(1, "error").await;
        c.open(3, "stdout").await;
        let t = c.until_status(1).await;
        assert_eq!(t.text(3), "out");
        assert!(t.text(1).contains("NonZeroExitCode"), "{}", t.text(1));
    }

    /// Sends a request with `headers` to `url`; the status line and headers of the answer, the
    /// connection, and the bytes read past the headers.
    async fn request(url: &str, headers: &str) -> (String, TcpStream, Vec<u8>) {
        request_with("POST", url, headers).await
    }

    async fn request_with(method: &str, url: &str, headers: &str) -> (String, TcpStream, Vec<u8>) {
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, path) = rest.split_once('/').unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let (head, rest) = read_head(&mut tcp).await;
        (head, tcp, rest)
    }

    /// Reads an HTTP answer's status line and headers; the bytes read past them.
    async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> (String, Vec<u8>) {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let n = io.read(&mut b).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                return (head, got[end + 4..].to_vec());
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

    /// A WebSocket handshake as client-go's (gorilla) makes it: GET, the sub-protocols in one
    /// comma-separated header.
    async fn ws(url: &str, protocols: &str) -> (WsClient<TcpStream>, Option<String>) {
        let addr = url.strip_prefix("http://").unwrap().split_once('/').unwrap().0;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = url.replace("http://", "ws://").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let p = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().into());
        (WsClient { ws }, p)
    }

    fn pf(streaming: &Streaming) -> String {
        let req = cri::PortForwardRequest { pod_sandbox_id: "p1".into(), port: vec![] };
        streaming.url_for(StreamRequest::PortForward(req)).unwrap()
    }

    /// One echo through port 7 on a port-forward connection.
    async fn echo_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        c: &mut SpdyClient<S>,
    ) {
        let h = |t: &'static str| [("streamtype", t), ("port", "7"), ("requestid", "0")];
        c.open_with(1, &h("error")).await;
        c.open_with(3, &h("data")).await;
        c.data(3, b"through", true).await;
        let t = c.until_status(1).await;
        assert_eq!(t.replies, [1, 3]);
        assert_eq!(t.text(3), "through");
        assert_eq!(t.text(1), "");
    }

    #[tokio::test]
    async fn exec_over_websocket_then_the_url_is_gone() {
        let (streaming, _stop) = server().await;
        let url = streaming
            .url_for(StreamRequest::Exec(exec(&["exit", "7"], false, false, false)))
            .unwrap();
        // What crictl --transport websocket offers.
        let (mut c, protocol) = ws(&url, "v5.channel.k8s.io").await;
        assert_eq!(protocol.as_deref(), Some("v5.channel.k8s.io"));
        let t = c.until_close().await;
        assert_eq!(t.text(STDOUT), "out");
        assert!(t.text(ERROR).contains("NonZeroExitCode"), "{}", t.text(ERROR));
        assert_eq!(t.close.unwrap().code, CloseCode::Normal);
        let (head, _, _) = request_with("GET", &url, WS_HEADERS).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        // Older clients get v4.
        let url = streaming
            .url_for(StreamRequest::Exec(exec(&["exit", "0"], false, false, false)))
            .unwrap();
        let (mut c, protocol) = ws(&url, "v4.channel.k8s.io, channel.k8s.io").await;
        assert_eq!(protocol.as_deref(), Some("v4.channel.k8s.io"));
        assert!(c.until_close().await.text(ERROR).contains("Success"));
    }

    const WS_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[tokio::test]
    async fn bad_websocket_handshakes_are_refused() {
        let (streaming, _stop) = server().await;
        let url =
            || streaming.url_for(StreamRequest::Exec(exec(&["cat"], true, false, false))).unwrap();
        let cases = [
            ("GET", "Sec-WebSocket-Protocol: v9.channel.k8s.io\r\n", "403"),
            ("POST", "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n", "400"),
        ];
        for (method, extra, status) in cases {
            let (head, _, _) = request_with(method, &url(), &format!("{WS_HEADERS}{extra}")).await;
            assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        }
        let old = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let (head, _, _) = request_with("GET", &url(), old).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
        assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
        let nokey = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
        let (head, _, _) = request_with("GET", &url(), nokey).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // The accept key answers the client's.
        let (head, _, _) = request_with(
            "GET",
            &url(),
            &format!("{WS_HEADERS}Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    }

    #[tokio::test]
    async fn port_forward_over_spdy() {
        let (streaming, _stop) = server().await;
        let spdy = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
            X-Stream-Protocol-Version: portforward.k8s.io\r\n";
        let (head, tcp, rest) = request(&pf(&streaming), spdy).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("x-stream-protocol-version: portforward.k8s.io"));
        echo_through(&mut SpdyClient::new(tcp, rest)).await;
        // A remote command protocol is not port forwarding.
        let (head, _, _) = request(&pf(&streaming), SPDY).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }

    #[tokio::test]
    async fn port_forward_tunneled_over_websocket() {
        let (streaming, _stop) = server().await;
        // What crictl port-forward --transport websocket offers (client-go's tunneling dialer).
        let (c, protocol) = ws(&pf(&streaming), "SPDY/3.1+portforward.k8s.io").await;
        assert_eq!(protocol.as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
        let mut spdy = SpdyClient::new(WsBytes::new(c.ws), Vec::new());
        echo_through(&mut spdy).await;
        // The client's GOAWAY ends the session: the server closes.
        spdy.send(Frame::GoAway { last_good_stream_id: 3, status: 0 }).await;
        assert_eq!(spdy.recv().await, None);

        let extra = "Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n";
        let (head, _, _) =
            request_with("GET", &pf(&streaming), &format!("{WS_HEADERS}{extra}")).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }
}
