//! Port forwarding over SPDY against frames as client-go's port forwarder sends them.

use std::sync::atomic::Ordering;

use super::*;
use crate::streaming::testutil::{FakeBackend, SpdyClient};

type Client = SpdyClient<tokio::io::DuplexStream>;

fn start(backend: Arc<FakeBackend>) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(serve_spdy(server, "pod1".into(), backend));
    (SpdyClient::new(client, Vec::new()), task)
}

/// Opens the error then the data stream of request `n` (stream IDs 4n+1, 4n+3), as
/// client-go's handleConnection does.
async fn open_pair(c: &mut Client, n: u32, port: u16) -> (u32, u32) {
    let (e, d) = (4 * n + 1, 4 * n + 3);
    let (port, id) = (port.to_string(), n.to_string());
    c.open_with(e, &[("streamtype", "error"), ("port", &port), ("requestid", &id)]).await;
    // client-go closes its side of the error stream at once.
    c.data(e, b"", true).await;
    c.open_with(d, &[("streamtype", "data"), ("port", &port), ("requestid", &id)]).await;
    (e, d)
}

#[derive(Default, Debug)]
struct Seen {
    replies: Vec<u32>,
    data: HashMap<u32, Vec<u8>>,
    fins: Vec<u32>,
    resets: Vec<(u32, u32)>,
}

impl Seen {
    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or(b"")).into()
    }
}

/// Reads frames until `done` holds.
async fn until(c: &mut Client, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        match c.recv().await.expect("connection ended") {
            Frame::SynReply { stream_id, .. } => seen.replies.push(stream_id),
            Frame::Data { stream_id, flags, data } => {
                seen.data.entry(stream_id).or_default().extend_from_slice(&data);
                if flags & FLAG_FIN != 0 {
                    seen.fins.push(stream_id);
                }
            }
            Frame::RstStream { stream_id, status } => seen.resets.push((stream_id, status)),
            _ => {}
        }
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

#[tokio::test]
async fn bytes_are_forwarded_and_the_clients_fin_is_a_write_shutdown() {
    let (mut c, _task) = start(Default::default());
    let (e, d) = open_pair(&mut c, 0, 7).await;
    c.data(d, b"hello ", false).await;
    c.data(d, b"world", true).await;
    let mut seen = Seen::default();
    // The echo server closes once it got the FIN: data FIN, then the error stream's, empty.
    until(&mut c, &mut seen, |s| s.fins.contains(&d) && s.fins.contains(&e)).await;
    assert_eq!(seen.replies, [e, d]);
    assert_eq!(seen.text(d), "hello world");
    assert_eq!(seen.text(e), "");
    assert!(seen.resets.is_empty(), "{seen:?}");
    // client-go resets the data stream once it read EOF: nothing breaks.
    c.send(Frame::RstStream { stream_id: d, status: RST_CANCEL }).await;
    c.send(Frame::Ping { id: 3 }).await;
    assert_eq!(c.recv().await, Some(Frame::Ping { id: 3 }));
}

#[tokio::test]
async fn a_refused_port_is_reported_on_the_error_stream() {
    let (mut c, _task) = start(Default::default());
    let (e, d) = open_pair(&mut c, 0, 8080).await;
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.fins.contains(&e) && !s.resets.is_empty()).await;
    let msg = seen.text(e);
    assert!(msg.contains("8080") && msg.contains("connection refused"), "{msg}");
    assert!(msg.contains("pod1"), "{msg}");
    assert_eq!(seen.resets, [(d, RST_CANCEL)]);
}

#[tokio::test]
async fn many_requests_share_one_connection() {
    let (mut c, _task) = start(Default::default());
    let n = 20;
    let mut pairs = Vec::new();
    for i in 0..n {
        pairs.push(open_pair(&mut c, i, 7).await);
    }
    // Interleaved, last first.
    for round in 0..3 {
        for (i, (_, d)) in pairs.iter().enumerate().rev() {
            c.data(*d, format!("[{i}.{round}]").as_bytes(), round == 2).await;
        }
    }
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| {
        pairs.iter().all(|(e, d)| s.fins.contains(e) && s.fins.contains(d))
    })
    .await;
    for (i, (e, d)) in pairs.iter().enumerate() {
        assert_eq!(seen.text(*d), format!("[{i}.0][{i}.1][{i}.2]"));
        assert_eq!(seen.text(*e), "");
    }
}

#[tokio::test]
async fn a_disconnecting_client_leaves_no_connection_open() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, task) = start(backend.clone());
    for i in 0..3 {
        open_pair(&mut c, i, 9).await;
    }
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.replies.len() == 6).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.pf_closed.load(Ordering::SeqCst), 0);
    drop(c);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    eventually("3 pod connections closed", || backend.pf_closed.load(Ordering::SeqCst) == 3).await;
}

#[tokio::test]
async fn resetting_the_data_stream_drops_the_pod_connection() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, _task) = start(backend.clone());
    let (e, d) = open_pair(&mut c, 0, 9).await;
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.replies.len() == 2).await;
    c.send(Frame::RstStream { stream_id: d, status: RST_CANCEL }).await;
    // The error stream is closed, so that the client stops waiting on it.
    until(&mut c, &mut seen, |s| s.fins.contains(&e)).await;
    eventually("the pod connection closed", || backend.pf_closed.load(Ordering::SeqCst) == 1).await;
    // Data for the reset stream is ignored.
    c.data(d, b"late", false).await;
    c.send(Frame::Ping { id: 9 }).await;
    assert_eq!(c.recv().await, Some(Frame::Ping { id: 9 }));
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_the_pod_back() {
    let backend = Arc::new(FakeBackend::default());
    let (mut c, _task) = start(backend.clone());
    let (_, d) = open_pair(&mut c, 0, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = backend.written.load(Ordering::SeqCst);
    assert!(held < 4 << 20, "{held} bytes taken from the pod while the client read nothing");
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.data.get(&d).map_or(0, Vec::len) > 2 * held + (1 << 20)).await;
    assert!(backend.written.load(Ordering::SeqCst) > held);
}

#[tokio::test]
async fn bad_streams_are_reset() {
    let (mut c, _task) = start(Default::default());
    c.open_with(1, &[("streamtype", "error"), ("requestid", "0")]).await; // no port
    c.open_with(3, &[("streamtype", "data"), ("port", "0"), ("requestid", "0")]).await;
    c.open_with(5, &[("streamtype", "data"), ("port", "70000"), ("requestid", "0")]).await;
    c.open_with(7, &[("streamtype", "stdin"), ("port", "7"), ("requestid", "0")]).await;
    c.open_with(9, &[("port", "7"), ("requestid", "0")]).await;
    c.open_with(11, &[("streamtype", "error"), ("port", "7"), ("requestid", "1")]).await;
    c.open_with(11, &[("streamtype", "error"), ("port", "7"), ("requestid", "2")]).await;
    c.open_with(13, &[("streamtype", "error"), ("port", "7"), ("requestid", "1")]).await;
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.resets.len() == 7).await;
    let ids: Vec<u32> = seen.resets.iter().map(|r| r.0).collect();
    assert_eq!(ids, [1, 3, 5, 7, 9, 11, 13]);
    assert!(seen.resets.iter().all(|r| r.1 == RST_PROTOCOL_ERROR));
    assert_eq!(seen.replies, [11]);
    // Request 1 still works once its data stream comes.
    c.open_with(15, &[("streamtype", "data"), ("port", "7"), ("requestid", "1")]).await;
    c.data(15, b"ok", true).await;
    until(&mut c, &mut seen, |s| s.fins.contains(&15)).await;
    assert_eq!(seen.text(15), "ok");
}

#[tokio::test]
async fn clients_without_request_ids_pair_by_stream_id() {
    let (mut c, _task) = start(Default::default());
    c.open_with(1, &[("streamtype", "error"), ("port", "7")]).await;
    c.open_with(3, &[("streamtype", "data"), ("port", "7")]).await;
    c.data(3, b"old", true).await;
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.fins.contains(&1) && s.fins.contains(&3)).await;
    assert_eq!(seen.text(3), "old");
}

#[tokio::test(start_paused = true)]
async fn a_request_missing_its_data_stream_times_out() {
    let (mut c, _task) = start(Default::default());
    c.patience = STREAM_CREATION_TIMEOUT * 2;
    c.open_with(1, &[("streamtype", "error"), ("port", "7"), ("requestid", "0")]).await;
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.fins.contains(&1)).await;
    assert!(seen.text(1).contains("timed out"), "{seen:?}");
}

#[tokio::test]
async fn requests_at_once_are_bounded() {
    let (mut c, _task) = start(Default::default());
    for i in 0..MAX_REQUESTS as u32 + 1 {
        let id = i.to_string();
        c.open_with(2 * i + 1, &[("streamtype", "error"), ("port", "7"), ("requestid", &id)]).await;
    }
    let mut seen = Seen::default();
    until(&mut c, &mut seen, |s| s.replies.len() + s.resets.len() > MAX_REQUESTS).await;
    assert_eq!(seen.replies.len(), MAX_REQUESTS);
    assert_eq!(seen.resets, [(2 * MAX_REQUESTS as u32 + 1, RST_REFUSED_STREAM)]);
}

/// Frames written by client-go's framer (`testdata/gen-go-client-frames.go.txt`): the remote
/// command streams have no port and are reset; the port-forward data stream (port 8080,
/// requestID 0) is accepted, then reset by the client; GOAWAY ends the connection.
#[tokio::test]
async fn the_go_clients_frames() {
    let (mut client, server) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(serve_spdy(server, "pod1".into(), Arc::new(FakeBackend::default())));
    use tokio::io::AsyncWriteExt;
    client.write_all(include_bytes!("../testdata/go-client-frames.bin")).await.unwrap();
    let mut c = SpdyClient::new(client, Vec::new());
    let mut seen = Seen::default();
    let mut pings = 0;
    while let Some(f) = c.recv().await {
        match f {
            Frame::SynReply { stream_id, .. } => seen.replies.push(stream_id),
            Frame::RstStream { stream_id, status } => seen.resets.push((stream_id, status)),
            Frame::Ping { id: 1 } => pings += 1,
            f => panic!("{f:?}"),
        }
    }
    let reset: Vec<u32> = seen.resets.iter().map(|r| r.0).collect();
    assert_eq!(reset, [1, 3, 5, 7]);
    assert_eq!(seen.replies, [9]);
    assert_eq!(pings, 1);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}
