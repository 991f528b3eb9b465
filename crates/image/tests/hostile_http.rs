//! A registry that answers with endless bodies where the puller reads a response: the token
//! endpoint, error answers to manifest and blob GETs. A fake HTTP server on 127.0.0.1 (the real
//! registry never sends such answers); each pull must stop at its cap with an error naming the
//! setting and leave nothing in the store.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use carapace_image::{
    Credentials, Digest, ImageError, ImageStore, PullLimits, Puller, RegistryConfig,
};

const MIB: usize = 1 << 20;

/// An answer of the fake registry.
#[derive(Clone)]
enum Answer {
    /// Status, extra header lines, body (sent with its Content-Length).
    Fixed(u16, Vec<String>, Vec<u8>),
    /// Status, then `n` MiB of body without a Content-Length (until the client goes away).
    Endless(u16, usize),
    /// Status and a Content-Length of `n` bytes, then 1 MiB of body and the connection closed.
    Declared(u16, u64),
    /// 200 with a Content-Length of `n` bytes, then one byte every 100 ms (well inside any
    /// read timeout), until the client goes away.
    Trickle(u64),
}

type Routes = Arc<dyn Fn(&str, &str) -> Answer + Send + Sync>;

/// Serves `routes(path, authorization header)` on a free port until the test ends; records the
/// request lines it saw.
fn serve(routes: Routes) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let routes = routes.clone();
            let log = log.clone();
            std::thread::spawn(move || answer(conn, &*routes, &log));
        }
    });
    (addr, seen)
}

fn answer(conn: TcpStream, routes: &dyn Fn(&str, &str) -> Answer, log: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
        }
        log.lock().unwrap().push(path.clone());
        match routes(&path, &auth) {
            Answer::Fixed(status, headers, body) => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for h in headers {
                    head += &format!("{h}\r\n");
                }
                head += "\r\n";
                if w.write_all(head.as_bytes()).and_then(|_| w.write_all(&body)).is_err() {
                    return;
                }
            }
            Answer::Endless(status, mib) => {
                let head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n\r\n");
                let chunk = vec![b'x'; MIB];
                let _ = w.write_all(head.as_bytes());
                for _ in 0..mib {
                    if w.write_all(&chunk).is_err() {
                        break;
                    }
                }
                return;
            }
            Answer::Trickle(n) => {
                let head = format!("HTTP/1.1 200 X\r\nContent-Length: {n}\r\n\r\n");
                let _ = w.write_all(head.as_bytes());
                for _ in 0..n {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if w.write_all(b"x").and_then(|_| w.flush()).is_err() {
                        break;
                    }
                }
                return;
            }
            Answer::Declared(status, n) => {
                let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {n}\r\n\r\n");
                let _ = w.write_all(head.as_bytes()).and_then(|_| w.write_all(&vec![b'x'; MIB]));
                return;
            }
        }
    }
}

fn puller(addr: &str, limits: PullLimits) -> (tempfile::TempDir, Puller) {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).unwrap();
    let regs = RegistryConfig { insecure: vec![addr.to_string()], ..Default::default() };
    (root, Puller::new(store, regs, limits))
}

fn limits() -> PullLimits {
    PullLimits { max_token_bytes: 8 << 10, max_error_body_bytes: 4 << 10, ..Default::default() }
}

/// Nothing in the store after a failed pull.
fn assert_empty(root: &std::path::Path) {
    for d in ["blobs/sha256", "layers/sha256", "images", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(root.join(d)).unwrap().flatten().collect();
        assert!(left.is_empty(), "{d}: {left:?}");
    }
}

fn setting(e: &ImageError) -> &'static str {
    match e {
        ImageError::LimitExceeded { setting, .. } => setting,
        other => panic!("not a limit error: {other:?}"),
    }
}

fn challenge(addr: &str) -> Answer {
    Answer::Fixed(
        401,
        vec![format!(r#"WWW-Authenticate: Bearer realm="http://{addr}/token",service="fake""#)],
        b"{}".to_vec(),
    )
}

#[tokio::test]
async fn endless_token_answer_stops_at_max_token_bytes() {
    let me = Arc::new(Mutex::new(String::new()));
    let m = me.clone();
    let (addr, seen) = serve(Arc::new(move |path, _| {
        if path == "/v2/" {
            challenge(&m.lock().unwrap())
        } else {
            Answer::Endless(200, 256)
        }
    }));
    *me.lock().unwrap() = addr.clone();
    let (root, p) = puller(&addr, limits());
    let e = p.pull(&format!("{addr}/evil/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert_eq!(setting(&e), "max_token_bytes", "{e}");
    assert!(e.to_string().contains("images.limits.max_token_bytes"), "{e}");
    assert!(seen.lock().unwrap().iter().any(|p| p.starts_with("/token?scope=repository")));
    assert_empty(root.path());
}

#[tokio::test]
async fn token_answer_with_a_huge_content_length_is_refused_unread() {
    let me = Arc::new(Mutex::new(String::new()));
    let m = me.clone();
    let (addr, _) = serve(Arc::new(move |path, _| {
        if path == "/v2/" {
            challenge(&m.lock().unwrap())
        } else {
            Answer::Declared(200, 1 << 40)
        }
    }));
    *me.lock().unwrap() = addr.clone();
    let (root, p) = puller(&addr, limits());
    let e = p.pull(&format!("{addr}/evil/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert_eq!(setting(&e), "max_token_bytes", "{e}");
    assert!(e.to_string().contains(&format!("{} bytes", 1u64 << 40)), "{e}");
    assert_empty(root.path());
}

#[tokio::test]
async fn endless_error_answers_stop_at_max_error_body_bytes() {
    // The token is needed for the manifest, whose GET then gets an endless 500.
    let me = Arc::new(Mutex::new(String::new()));
    let m = me.clone();
    let (addr, _) = serve(Arc::new(move |path, auth| match path {
        "/v2/" => challenge(&m.lock().unwrap()),
        p if p.starts_with("/token") => Answer::Fixed(200, vec![], br#"{"token":"t0k"}"#.to_vec()),
        _ if auth != "Bearer t0k" => Answer::Fixed(401, vec![], vec![]),
        _ => Answer::Endless(500, 256),
    }));
    *me.lock().unwrap() = addr.clone();
    let (root, p) = puller(&addr, limits());
    let e = p.pull(&format!("{addr}/evil/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert_eq!(setting(&e), "max_error_body_bytes", "{e}");
    assert!(e.to_string().contains("error answer to GET"), "{e}");
    assert_empty(root.path());
}

#[tokio::test]
async fn endless_blob_error_stops_and_small_errors_keep_the_registry_words() {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":[]}}"#.to_vec();
    let cd = Digest::of(&config).to_string();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{{"digest":"{cd}","size":{}}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{cd}",
        "size":{}}}]}}"#,
        config.len(),
        config.len()
    );
    let (addr, _) = serve(Arc::new(move |path, _| match path {
        "/v2/" => Answer::Fixed(200, vec![], vec![]),
        p if p.contains("/manifests/") => Answer::Fixed(200, vec![], manifest.clone().into()),
        p if p.starts_with("/v2/endless/") => Answer::Endless(503, 256),
        _ => Answer::Fixed(
            500,
            vec![],
            br#"{"errors":[{"code":"UNAVAILABLE","message":"disk\non fire"}]}"#.to_vec(),
        ),
    }));
    let (root, p) = puller(&addr, limits());
    let e = p.pull(&format!("{addr}/endless/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert_eq!(setting(&e), "max_error_body_bytes", "{e}");
    assert_empty(root.path());
    let e = p.pull(&format!("{addr}/small/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, ImageError::Registry { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 500: UNAVAILABLE disk on fire"), "{e}");
    assert_empty(root.path());
}

#[tokio::test]
async fn distribution_error_codes_map_to_statuses() {
    let doc = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
    let (addr, _) = serve(Arc::new(move |path, _| match path {
        "/v2/" => Answer::Fixed(200, vec![], vec![]),
        p if p.starts_with("/v2/gone/") => {
            Answer::Fixed(400, vec![], doc("MANIFEST_UNKNOWN").into())
        }
        p if p.starts_with("/v2/denied/") => Answer::Fixed(400, vec![], doc("DENIED").into()),
        _ => Answer::Fixed(500, vec![], doc("UNKNOWN").into()),
    }));
    let (root, p) = puller(&addr, limits());
    let image = |repo: &str| format!("{addr}/{repo}/app:1");
    let anon = Credentials::Anonymous;
    let e = p.pull(&image("gone"), &anon).await.unwrap_err();
    assert!(matches!(e, ImageError::NotFound { .. }), "{e:?}");
    let e = p.pull(&image("denied"), &anon).await.unwrap_err();
    assert!(matches!(e, ImageError::Unauthenticated { .. }), "{e:?}");
    let e = p.pull(&image("other"), &anon).await.unwrap_err();
    assert!(matches!(e, ImageError::Registry { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 500: UNKNOWN m"), "{e}");
    assert_empty(root.path());
}

#[tokio::test]
async fn a_registry_that_trickles_a_blob_hits_max_pull_seconds() {
    let diff_id = format!("sha256:{}", "cd".repeat(32));
    let config = format!(
        concat!(
            r#"{{"architecture":"amd64","os":"linux","#,
            r#""rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        ),
        diff_id = diff_id
    );
    let cd = Digest::of(config.as_bytes()).to_string();
    let layer = format!("sha256:{}", "ab".repeat(32));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{{"digest":"{cd}","size":{}}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",
        "digest":"{layer}","size":100000}}]}}"#,
        config.len()
    );
    let (addr, seen) = serve(Arc::new(move |path, _| match path {
        "/v2/" => Answer::Fixed(200, vec![], vec![]),
        p if p.contains("/manifests/") => Answer::Fixed(200, vec![], manifest.clone().into()),
        p if p.ends_with(&cd) => Answer::Fixed(200, vec![], config.clone().into()),
        _ => Answer::Trickle(100_000),
    }));
    let (root, p) = puller(&addr, PullLimits { max_pull_seconds: 2, ..limits() });
    let e = p.pull(&format!("{addr}/slow/app:1"), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, ImageError::Deadline { seconds: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("images.limits.max_pull_seconds"), "{e}");
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::DeadlineExceeded);
    // (Without the deadline this pull would last the ~3 hours the registry takes.)
    assert!(seen.lock().unwrap().iter().any(|p| p.contains("/blobs/sha256:abab")));
    assert_empty(root.path());
}
