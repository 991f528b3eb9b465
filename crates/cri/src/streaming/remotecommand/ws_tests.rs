//! Remote command over WebSocket, with tungstenite as the client (framing as gorilla's:
//! masked binary messages, the channel first).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::over_ws::{decode, encode, Incoming, WsProtocolError, CLOSE, ERROR, STDERR, STDIN};
use super::over_ws::{RESIZE, STDOUT};
use super::*;
use crate::streaming::testutil::{exec, FakeBackend, WsClient};
use crate::streaming::websocket::server_stream;

async fn start(
    protocol: WsProtocol,
    req: cri::ExecRequest,
    backend: Arc<FakeBackend>,
) -> (WsClient<tokio::io::DuplexStream>, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(async move {
        serve_ws(server_stream(server).await, protocol, Session::Exec(req), backend).await
    });
    (WsClient::raw(client).await, task)
}

fn json(t: &str) -> serde_json::Value {
    serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:?}"))
}

#[tokio::test]
async fn v5_stdin_is_echoed_and_closed_by_the_close_signal() {
    let (mut c, task) =
        start(WsProtocol::V5, exec(&["cat"], true, true, false), Default::default()).await;
    c.data(STDIN, b"hello\n").await;
    c.data(STDIN, b"world\n").await;
    c.send(Message::binary(vec![CLOSE, STDIN])).await;
    let t = c.until_close().await;
    // First an empty message on stdout (the streams are ready), as kubelet.
    assert_eq!(t.messages[0], (STDOUT, vec![]));
    assert_eq!(t.text(STDOUT), "hello\nworld\n");
    assert_eq!(json(&t.text(ERROR)), serde_json::json!({"metadata": {}, "status": "Success"}));
    assert_eq!(t.close.unwrap().code, CloseCode::Normal);
    // The status comes after all output.
    let last = t.messages.iter().rposition(|(c, _)| *c == STDOUT).unwrap();
    assert!(t.messages.iter().position(|(c, _)| *c == ERROR).unwrap() > last);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn exit_codes_and_stderr() {
    for p in [WsProtocol::V5, WsProtocol::V4] {
        let (mut c, _task) =
            start(p, exec(&["exit", "7"], false, true, false), Default::default()).await;
        let t = c.until_close().await;
        assert_eq!(t.text(STDOUT), "out");
        assert_eq!(t.text(STDERR), "err");
        let s = json(&t.text(ERROR));
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            serde_json::json!([{"reason": "ExitCode", "message": "7"}])
        );
    }
    // Before v4 the status is text.
    let (mut c, _task) =
        start(WsProtocol::V1, exec(&["exit", "3"], false, false, false), Default::default()).await;
    let t = c.until_close().await;
    assert_eq!(t.text(ERROR), "command terminated with non-zero exit code: exit status 3");
    let (mut c, _task) =
        start(WsProtocol::V1, exec(&["exit", "0"], false, false, false), Default::default()).await;
    assert_eq!(c.until_close().await.text(ERROR), "");
}

#[tokio::test]
async fn base64_variants_encode_both_ways() {
    let (mut c, _task) =
        start(WsProtocol::V4Base64, exec(&["resize"], false, false, true), Default::default())
            .await;
    // '4' + base64 of a terminal size.
    c.send(Message::text("4eyJXaWR0aCI6MTAwLCJIZWlnaHQiOjMwfQ==")).await;
    let mut texts = Vec::new();
    while let Some(m) = c.recv().await {
        match m {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(_) => break,
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(texts[0], "1");
    assert_eq!(texts[1], "1MTAweDMw"); // "100x30"
    let status = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        texts[2].strip_prefix('3').unwrap(),
    )
    .unwrap();
    assert_eq!(json(std::str::from_utf8(&status).unwrap())["status"], "Success");
}

#[tokio::test]
async fn tty_sessions_get_resize_events() {
    let (mut c, _task) =
        start(WsProtocol::V5, exec(&["resize"], false, false, true), Default::default()).await;
    // Split across messages, as a stream may be.
    c.data(RESIZE, br#"{"Width":80,"#).await;
    c.data(RESIZE, b"\"Height\":24}\n").await;
    assert_eq!(c.until_close().await.text(STDOUT), "80x24");
}

#[tokio::test]
async fn large_output_arrives_whole_in_bounded_messages() {
    let n = 1_000_000;
    let (mut c, _task) = start(
        WsProtocol::V5,
        exec(&["big", &n.to_string()], false, false, false),
        Default::default(),
    )
    .await;
    let t = c.until_close().await;
    let out: Vec<u8> =
        t.messages.iter().filter(|m| m.0 == STDOUT).flat_map(|m| m.1.clone()).collect();
    assert_eq!(out.len(), n);
    assert!(out.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert!(t.messages.iter().all(|(_, d)| d.len() <= MAX_DATA_CHUNK));
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_the_process_back() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, _task) =
        start(WsProtocol::V5, exec(&["flood"], false, false, false), backend.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = backend.written.load(Ordering::SeqCst);
    assert!(held < 4 << 20, "{held} bytes written while the client read nothing");
    // Reading lets it go on.
    let mut got = 0;
    while got < 2 * held + (1 << 20) {
        if let Some(Message::Binary(b)) = c.recv().await {
            got += b.len() - 1;
        }
    }
    assert!(backend.written.load(Ordering::SeqCst) > held);
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_process() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, task) =
        start(WsProtocol::V5, exec(&["hang"], true, false, false), backend.clone()).await;
    assert!(matches!(c.recv().await, Some(Message::Binary(_))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 0);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bad_close_signal_is_a_protocol_error() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, task) =
        start(WsProtocol::V5, exec(&["hang"], true, false, false), backend.clone()).await;
    c.send(Message::binary(vec![CLOSE, 0, 1])).await;
    let t = c.until_close().await;
    let close = t.close.unwrap();
    assert_eq!(close.code, CloseCode::Protocol);
    assert!(close.reason.contains("exactly one channel"), "{close:?}");
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 1);
}

#[test]
fn messages_decode_per_protocol() {
    let b = |v: &[u8]| Message::binary(v.to_vec());
    assert_eq!(decode(WsProtocol::V5, b(&[CLOSE, 0])), Ok(Incoming::Close(0)));
    // v4 has no close signal: channel 255 is just data nobody reads.
    assert_eq!(decode(WsProtocol::V4, b(&[CLOSE, 0])), Ok(Incoming::Data(CLOSE, vec![0])));
    assert_eq!(decode(WsProtocol::V5, b(&[CLOSE])), Err(WsProtocolError::CloseSignal(0)));
    assert_eq!(decode(WsProtocol::V5, b(&[])), Ok(Incoming::Nothing));
    assert_eq!(decode(WsProtocol::V5, b(&[0, 1, 2])), Ok(Incoming::Data(0, vec![1, 2])));
    assert_eq!(
        decode(WsProtocol::V1Base64, Message::text("0aGk=")),
        Ok(Incoming::Data(0, b"hi".to_vec()))
    );
    assert!(matches!(
        decode(WsProtocol::V1Base64, Message::text("0!!")),
        Err(WsProtocolError::Base64(0, _))
    ));
    assert_eq!(
        decode(WsProtocol::V4Base64, Message::text("x")),
        Err(WsProtocolError::Channel('x'))
    );
    assert_eq!(decode(WsProtocol::V5, Message::Close(None)), Ok(Incoming::End));
    assert_eq!(encode(WsProtocol::V5, 1, b"ab"), b(&[1, b'a', b'b']));
    assert_eq!(encode(WsProtocol::V1Base64, 2, b"hi"), Message::text("2aGk="));
}

#[test]
fn ws_protocols_are_negotiated_in_the_clients_order() {
    assert_eq!(WsProtocol::negotiate(["v5.channel.k8s.io"]), Some(WsProtocol::V5));
    assert_eq!(
        WsProtocol::negotiate(["v6.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"]),
        Some(WsProtocol::V4)
    );
    assert_eq!(WsProtocol::negotiate(["base64.channel.k8s.io"]), Some(WsProtocol::V1Base64));
    assert_eq!(WsProtocol::negotiate(["SPDY/3.1+portforward.k8s.io"]), None);
}
