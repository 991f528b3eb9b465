//! Remote command over SPDY, against frames as client-go sends them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;

use super::*;
use crate::streaming::spdy::Frame;
use crate::streaming::testutil::{exec, FakeBackend, SpdyClient};

fn start(
    protocol: Protocol,
    req: cri::ExecRequest,
    backend: Arc<FakeBackend>,
) -> (SpdyClient<tokio::io::DuplexStream>, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(serve_spdy(server, protocol, Session::Exec(req), backend));
    (SpdyClient::new(client, Vec::new()), task)
}

fn json(t: &str) -> serde_json::Value {
    serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:?}"))
}

#[tokio::test]
async fn exec_with_stdin_echoes_and_reports_success() {
    let (mut c, task) = start(Protocol::V4, exec(&["cat"], true, true, false), Default::default());
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        c.open(id, kind).await;
    }
    c.send(Frame::Ping { id: 1 }).await;
    c.data(3, b"hello\n", false).await;
    c.data(3, b"world\n", true).await;
    let t = c.until_status(1).await;
    assert_eq!(t.replies, vec![1, 3, 5, 7]);
    assert_eq!(t.text(5), "hello\nworld\n");
    assert!(t.fins.contains(&5) && t.fins.contains(&7), "{t:?}");
    assert_eq!(json(&t.text(1)), serde_json::json!({"metadata": {}, "status": "Success"}));
    assert_eq!(t.other, vec![Frame::Ping { id: 1 }]);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn non_zero_exit_is_reported_with_its_code() {
    let (mut c, _task) =
        start(Protocol::V4, exec(&["exit", "7"], false, true, false), Default::default());
    for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
        c.open(id, kind).await;
    }
    let t = c.until_status(1).await;
    assert_eq!(t.text(3), "out");
    assert_eq!(t.text(5), "err");
    let s = json(&t.text(1));
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"], serde_json::json!([{"reason": "ExitCode", "message": "7"}]));
}

#[tokio::test]
async fn v3_and_v2_report_errors_as_text() {
    for p in [Protocol::V3, Protocol::V2] {
        let (mut c, _task) =
            start(p, exec(&["exit", "3"], false, false, false), Default::default());
        c.open(1, "error").await;
        c.open(3, "stdout").await;
        let t = c.until_status(1).await;
        assert_eq!(t.text(1), "command terminated with non-zero exit code: exit status 3");
        let (mut c, _task) =
            start(p, exec(&["exit", "0"], false, false, false), Default::default());
        c.open(1, "error").await;
        c.open(3, "stdout").await;
        assert_eq!(c.until_status(1).await.text(1), "");
    }
}

#[tokio::test]
async fn a_failure_to_run_is_an_internal_error() {
    let (mut c, _task) =
        start(Protocol::V4, exec(&["nope"], false, false, false), Default::default());
    c.open(1, "error").await;
    c.open(3, "stdout").await;
    let s = json(&c.until_status(1).await.text(1));
    assert_eq!(s["reason"], "InternalError");
    assert!(s["message"].as_str().unwrap().contains("no such command"), "{s}");
}

#[tokio::test]
async fn tty_sessions_get_resize_events() {
    let (mut c, _task) =
        start(Protocol::V4, exec(&["resize"], false, false, true), Default::default());
    c.open(1, "error").await;
    c.open(3, "stdout").await;
    c.open(5, "resize").await;
    // Split across frames, as a stream may be.
    c.data(5, br#"{"Width":80,"Hei"#, false).await;
    c.data(5, b"ght\":24}\n", false).await;
    let t = c.until_status(1).await;
    assert_eq!(t.text(3), "80x24");
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_process() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, task) = start(Protocol::V4, exec(&["hang"], true, false, false), backend.clone());
    c.open(1, "error").await;
    c.open(3, "stdin").await;
    c.open(5, "stdout").await;
    for _ in 0..3 {
        assert!(matches!(c.recv().await, Some(Frame::SynReply { .. })));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 0);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_or_repeated_streams_are_reset() {
    let (mut c, _task) =
        start(Protocol::V4, exec(&["exit", "0"], false, false, false), Default::default());
    c.open(1, "error").await;
    c.open(3, "bogus").await;
    c.open(5, "error").await;
    assert!(matches!(c.recv().await, Some(Frame::SynReply { stream_id: 1, .. })));
    assert!(matches!(c.recv().await, Some(Frame::RstStream { stream_id: 3, .. })));
    assert!(matches!(c.recv().await, Some(Frame::RstStream { stream_id: 5, .. })));
    c.open(7, "stdout").await;
    assert_eq!(c.until_status(1).await.text(7), "out");
}

#[test]
fn protocols_are_negotiated_in_the_clients_order() {
    let sup = [Protocol::V4, Protocol::V3, Protocol::V2];
    assert_eq!(
        negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"], &sup),
        Some(Protocol::V4)
    );
    assert_eq!(negotiate(["v2.channel.k8s.io, v4.channel.k8s.io"], &sup), Some(Protocol::V2));
    assert_eq!(negotiate(["channel.k8s.io"], &sup), None);
    assert_eq!(negotiate([], &sup), None);
}
