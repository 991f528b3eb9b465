//! End-to-end: streaming (issue 13) through the real client, crictl v1.36.0
//! (`../shared/bin/crictl`, `$CRICTL` overrides), against the daemon's streaming server and
//! real pod VMs: exec (stdin, 100 MiB of stdout, exit codes, a tty under tmux with resize and
//! Ctrl-C, ten at once, a killed client), attach (two attachers, stdin, the CRI log still
//! written) and port-forward (an HTTP server on the pod's localhost), each over SPDY and over
//! WebSocket (the attach test's daemon over TLS, crictl checking its certificate); single-use and
//! expiring URLs.
//! Needs a KVM that boots Linux; run with --ignored in the test host.
//! Over 600 lines on purpose: one job (crictl's streaming end to end); its tests share the
//! registry, daemon, tmux and HTTP helpers of this file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic;
use carapace_tests::cri::{
    container_config, create_container, e2e_dns, pod_config, pull_image, run_pod, runtime,
    wait_container_state, with_log, Daemon, DaemonOptions,
};
use carapace_tests::crictl::{describe, Crictl, TRANSPORTS};
use carapace_tests::registry::Registry;
use tonic::transport::Channel;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_CRI_STREAMING_E2E_DAEMON";
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
/// The size of the exec stdout and port-forward downloads.
const BIG_MIB: usize = 100;
const DOWNLOAD_MIB: usize = 50;

/// Not a test: the daemon process of the tests below (runs only when DAEMON_ENV is set).
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

struct Setup {
    reg: Registry,
    d: Daemon,
    /// With TLS: the streaming server's certificate and crictl's client pair.
    tls: Option<Tls>,
}

/// The streaming server's self-signed certificate (for `localhost`), which crictl trusts, and a
/// client certificate and key for crictl, all in one temporary dir.
struct Tls {
    _dir: tempfile::TempDir,
    server_cert: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A self-signed RSA certificate for `name` and its key, made by `openssl`.
fn self_signed(cert: &Path, key: &Path, name: &str) -> Result<()> {
    let o = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()?;
    ensure!(o.status.success(), "openssl req: {}", describe(&o));
    Ok(())
}

impl Setup {
    /// crictl for this daemon (trusting its streaming certificate, with TLS).
    fn crictl(&self) -> Result<Crictl> {
        let k = Crictl::new(self.d.socket())?;
        Ok(match &self.tls {
            Some(t) => k.with_streaming_tls(&t.server_cert, &t.client_cert, &t.client_key),
            None => k,
        })
    }
}

/// A registry and a daemon; with `tls`, its streaming server has a certificate and key made
/// here by `openssl` (a self-signed one for `localhost`, which crictl checks by default).
fn setup(prefix: &'static str, tls: bool) -> Result<Setup> {
    let reg = Registry::start("reg", "info")?;
    let mut extra_config = String::new();
    let tls = if tls {
        let dir = tempfile::Builder::new().prefix("tls").tempdir_in("/tmp")?;
        let p = |f: &str| dir.path().join(f);
        let (cert, key) = (p("server.pem"), p("server-key.pem"));
        self_signed(&cert, &key, "localhost")?;
        let (client_cert, client_key) = (p("client.pem"), p("client-key.pem"));
        self_signed(&client_cert, &client_key, "crictl")?;
        extra_config = format!(
            "[streaming]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        Some(Tls { _dir: dir, server_cert: cert, client_cert, client_key })
    } else {
        None
    };
    let d = Daemon::start(DaemonOptions {
        dir_prefix: prefix,
        insecure_registry: Some(reg.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        extra_config,
        ..Default::default()
    })?;
    Ok(Setup { reg, d, tls })
}

/// A running pod with one running busybox container per `(name, command, stdin, tty)`.
async fn pod_with(
    s: &Setup,
    c: &mut RuntimeServiceClient<Channel>,
    name: &str,
    containers: &[(&str, &[&str], bool, bool)],
) -> Result<(String, Vec<String>)> {
    let busybox = s.reg.image("test/busybox:latest");
    pull_image(&mut s.d.image_client().await?, &busybox).await?;
    let mut pod_cfg = pod_config("e2e", name, 0, &s.d.logs_dir(name));
    pod_cfg.dns_config = Some(e2e_dns());
    let pod = run_pod(c, &pod_cfg).await?;
    let mut ids = Vec::new();
    for (cname, cmd, stdin, tty) in containers {
        let mut cfg = container_config(cname, &busybox, cmd);
        cfg.stdin = *stdin;
        cfg.tty = *tty;
        let id = create_container(c, &pod, &pod_cfg, cfg).await?;
        c.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
        wait_container_state(c, &id, RUNNING).await?;
        ids.push(id);
    }
    Ok((pod, ids))
}

async fn exec_sync(c: &mut RuntimeServiceClient<Channel>, id: &str, sh: &str) -> Result<String> {
    let r = c
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), sh.into()],
            timeout: 300,
        })
        .await?
        .into_inner();
    ensure!(r.exit_code == 0, "ExecSync {sh:?}: {r:?}");
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

/// The streaming URL of an Exec of `true` in `cid` (stdout only).
async fn exec_url(c: &mut RuntimeServiceClient<Channel>, cid: &str) -> Result<String> {
    let req = cri::ExecRequest {
        container_id: cid.into(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    Ok(c.exec(req).await?.into_inner().url)
}

/// A deterministic stream of `bytes` bytes that busybox makes quickly in the guest (numbers,
/// one per line: random data from the emulated guest's /dev/urandom is far too slow).
fn seq_command(bytes: usize) -> String {
    format!("seq 1 20000000 | head -c {bytes}")
}

/// The sha256 of [`seq_command`]'s output, made on the host.
fn seq_sha256(bytes: usize) -> Result<String> {
    let line = format!("{} | sha256sum", seq_command(bytes));
    let o = Command::new("bash").arg("-c").arg(&line).output()?;
    // head closing the pipe early makes seq fail with SIGPIPE: only sha256sum's output counts.
    ensure!(!o.stdout.is_empty(), "{line}: {}", describe(&o));
    Ok(first_word(&String::from_utf8_lossy(&o.stdout)))
}

/// The first word of `sha256sum` output.
fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").to_string()
}

/// `crictl <sub> ... | sha256sum` on the host; the sum.
fn piped_sha256(k: &Crictl, sub: &str, args: &[&str]) -> Result<String> {
    let line = format!("set -o pipefail; {} | sha256sum", k.shell_line(sub, args));
    let o = Command::new("bash").arg("-c").arg(&line).output()?;
    ensure!(o.status.success(), "{line}: {}", describe(&o));
    Ok(first_word(&String::from_utf8_lossy(&o.stdout)))
}

/// Kills and reaps a child when dropped (a failing test leaves no crictl behind).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 POST with `headers` to a streaming URL; the status line of the answer.
fn raw_status(url: &str, headers: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").context("streaming URL is not http://")?;
    let (addr, path) = rest.split_once('/').context("no path in the URL")?;
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(tcp, "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}\r\n")?;
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

const SPDY_UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
    X-Stream-Protocol-Version: v4.channel.k8s.io\r\n";

/// A tmux session on a private server socket running one command.
struct Tmux {
    socket: tempfile::TempDir,
}

impl Tmux {
    fn start(cmd: &str, cols: u16, rows: u16) -> Result<Tmux> {
        let t = Tmux { socket: tempfile::Builder::new().prefix("tmux").tempdir_in("/tmp")? };
        let (x, y) = (cols.to_string(), rows.to_string());
        let o = t.cmd(&["new-session", "-d", "-s", "e2e", "-x", &x, "-y", &y, cmd]).output()?;
        ensure!(o.status.success(), "tmux new-session: {}", describe(&o));
        Ok(t)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(self.socket.path().join("s")).args(args);
        c
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "e2e"];
        args.extend_from_slice(keys);
        let o = self.cmd(&args).output()?;
        ensure!(o.status.success(), "tmux send-keys {keys:?}: {}", describe(&o));
        Ok(())
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "e2e"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the pane shows a line equal to `line` (trailing blanks and echoed
    /// cursor-position replies ignored).
    fn wait_line(&self, line: &str) -> Result<()> {
        self.wait_for(&format!("line {line:?}"), |l| l == line)
    }

    /// Waits until some line of the pane, cleaned as in [`without_cursor_reports`], satisfies
    /// `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if s.lines().any(|l| pred(without_cursor_reports(l).trim_end())) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no {what} on the terminal:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let (x, y) = (cols.to_string(), rows.to_string());
        let o = self.cmd(&["resize-window", "-t", "e2e", "-x", &x, "-y", &y]).output()?;
        ensure!(o.status.success(), "tmux resize-window: {}", describe(&o));
        Ok(())
    }
}

/// `l` without the cursor-position replies (`ESC [ row ; col R`) that the terminal sends when
/// busybox's line editor asks where the cursor is, which the guest's tty echoes as `^[[9;5R` when
/// they arrive while a command runs.
fn without_cursor_reports(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut rest = l;
    while let Some(i) = rest.find("^[[") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 3..];
        let n = tail.find(|c: char| !(c.is_ascii_digit() || c == ';')).unwrap_or(tail.len());
        if n > 0 && tail[n..].starts_with('R') {
            rest = &tail[n + 1..];
        } else {
            out.push_str("^[[");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn cursor_reports_are_ignored() {
    assert_eq!(without_cursor_reports("^[[9;5Rsum-42"), "sum-42");
    assert_eq!(without_cursor_reports("a^[[12;1R^[[3;4Rb"), "ab");
    assert_eq!(without_cursor_reports("^[[Ax^[[9;5"), "^[[Ax^[[9;5");
    assert_eq!(without_cursor_reports("plain"), "plain");
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

/// An interactive shell through `crictl exec -it` on a real terminal (tmux): commands, the
/// window size (initial and after a resize) as `stty size` sees it, Ctrl-C.
fn interactive_shell(k: &Crictl, transport: &str, cid: &str) -> Result<()> {
    let line = k.shell_line("exec", &["--transport", transport, "-it", cid, "sh"]);
    let t = Tmux::start(&format!("{line}; echo crictl-exited-$?; sleep 600"), 91, 29)?;
    let r = (|| {
        // Type only once the shell's line editor is up (its prompt shows), so that keys and
        // the terminal's reply to its cursor query do not interleave.
        t.wait_for("shell prompt", |l| l.starts_with("/ #"))?;
        std::thread::sleep(Duration::from_millis(500));
        t.keys(&["echo sum-$((6*7))", "Enter"])?;
        t.wait_line("sum-42")?;
        t.keys(&["stty size", "Enter"])?;
        t.wait_line("29 91")?;
        t.resize(117, 37)?;
        // The resize event travels on its own stream: give it a moment, then ask again until
        // the new size shows.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            t.keys(&["stty size", "Enter"])?;
            std::thread::sleep(Duration::from_millis(500));
            if t.screen().lines().any(|l| l.trim_end() == "37 117") {
                break;
            }
            ensure!(Instant::now() < deadline, "resize not seen:\n{}", t.screen());
        }
        t.keys(&["sleep 300; echo slept-$?", "Enter"])?;
        std::thread::sleep(Duration::from_secs(2));
        t.keys(&["C-c"])?;
        t.keys(&["echo after-interrupt", "Enter"])?;
        t.wait_line("after-interrupt")?;
        ensure!(!t.screen().contains("slept-0"), "sleep was not interrupted:\n{}", t.screen());
        t.keys(&["exit 5", "Enter"])?;
        // crictl exits 1 and says the shell's code (as for `exit 7` without a terminal).
        t.wait_line("crictl-exited-1")?;
        let screen = t.screen().replace('\n', "");
        ensure!(screen.contains("exit code 5"), "the shell's exit code is not shown:\n{screen}");
        Ok(())
    })();
    r.with_context(|| format!("interactive shell over {transport}; terminal:\n{}", t.screen()))
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn exec_through_crictl_over_spdy_and_websocket() {
    let s = setup("cris", false).expect("setup");
    let r = runtime().block_on(async {
        let mut c = s.d.client().await?;
        let (_pod, ids) =
            pod_with(&s, &mut c, "exec", &[("box", &["sleep", "100000"], false, false)]).await?;
        let cid = ids[0].clone();
        let k = s.crictl()?;
        // A URL asked for now and never used must be gone after its minute.
        let unused = exec_url(&mut c, &cid).await?;
        let asked = Instant::now();

        let want = seq_sha256(BIG_MIB << 20)?;
        let big = seq_command(BIG_MIB << 20);
        for tr in TRANSPORTS {
            let ctx = |what: &str| format!("{what} over {tr}");
            // A terminal: an interactive shell, resized, interrupted.
            interactive_shell(&k, tr, &cid)?;
            // Piped stdin comes back; EOF ends cat.
            let mut child = k
                .command("exec", &["--transport", tr, "-i", &cid, "cat"])
                .stdin(Stdio::piped())
                .spawn()?;
            child.stdin.take().context("stdin")?.write_all(b"hello\nthrough stdin\n")?;
            let o = child.wait_with_output()?;
            ensure!(
                o.status.success() && o.stdout == b"hello\nthrough stdin\n",
                "{}: {}",
                ctx("exec -i cat"),
                describe(&o)
            );
            // 100 MiB of stdout, intact.
            let got = piped_sha256(&k, "exec", &["--transport", tr, &cid, "sh", "-c", &big])
                .with_context(|| ctx("100 MiB"))?;
            ensure!(got == want, "{}: sha256 {got} != {want}", ctx("100 MiB"));
            // Exit codes and a command that does not exist.
            let o = k.run("exec", &["--transport", tr, &cid, "sh", "-c", "exit 7"])?;
            // crictl reports the code in its words (and exits 1 itself, as kubectl's exec
            // does not): "command terminated with exit code 7".
            let err = String::from_utf8_lossy(&o.stderr);
            ensure!(
                !o.status.success() && err.contains("exit code 7"),
                "{}: {}",
                ctx("exit 7"),
                describe(&o)
            );
            let o = k.run("exec", &["--transport", tr, &cid, "no-such-command"])?;
            let err = String::from_utf8_lossy(&o.stderr);
            ensure!(
                !o.status.success() && err.contains("no-such-command"),
                "{}: {}",
                ctx("unknown command"),
                describe(&o)
            );
            // Ten at once.
            let children: Vec<_> = (0..10)
                .map(|i| {
                    let sh = format!("sleep 1; echo exec-{i}");
                    k.command("exec", &["--transport", tr, &cid, "sh", "-c", &sh]).spawn()
                })
                .collect::<std::io::Result<_>>()?;
            for (i, ch) in children.into_iter().enumerate() {
                let o = ch.wait_with_output()?;
                let want = format!("exec-{i}\n");
                ensure!(
                    o.status.success() && o.stdout == want.as_bytes(),
                    "{}: {}",
                    ctx("ten execs"),
                    describe(&o)
                );
            }
            // A client killed mid-stream leaves nothing in the guest.
            let marker = format!("sleep 4242{}", tr.len());
            let mut child =
                Reap(k.command("exec", &["--transport", tr, &cid, "sh", "-c", &marker]).spawn()?);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !exec_sync(&mut c, &cid, "ps -o args").await?.contains(&marker) {
                ensure!(Instant::now() < deadline, "{}: the exec never ran", ctx("killed client"));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            child.0.kill()?;
            let _ = child.0.wait();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ps = exec_sync(&mut c, &cid, "ps -o args").await?;
                if !ps.contains(&marker) {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{}: still running:\n{ps}",
                    ctx("killed client")
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }

        // A URL serves once.
        let url = exec_url(&mut c, &cid).await?;
        let first = raw_status(&url, SPDY_UPGRADE)?;
        ensure!(first.contains(" 101 "), "first use of {url}: {first}");
        let again = raw_status(&url, SPDY_UPGRADE)?;
        ensure!(again.contains(" 404 "), "second use of {url}: {again}");
        // And not after a minute unused.
        let ttl = Duration::from_secs(61);
        if let Some(left) = ttl.checked_sub(asked.elapsed()) {
            tokio::time::sleep(left).await;
        }
        let late = raw_status(&unused, SPDY_UPGRADE)?;
        ensure!(late.contains(" 404 "), "expired {unused}: {late}");
        // Bad requests get a clear status.
        let e = c
            .exec(cri::ExecRequest {
                container_id: cid.clone(),
                cmd: vec!["true".into()],
                tty: true,
                stderr: true,
                stdout: true,
                ..Default::default()
            })
            .await
            .expect_err("tty with stderr");
        ensure!(e.code() == tonic::Code::InvalidArgument, "{e:?}");
        Ok::<_, anyhow::Error>(())
    });
    with_log(&s.d, r);
}

/// `GET url` through the forwarded port; the body.
fn http_get(port: u16, path: &str) -> Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut all = Vec::new();
    tcp.read_to_end(&mut all)?;
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&all[..end]);
    ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(all[end + 4..].to_vec())
}

/// Waits until `port` on 127.0.0.1 accepts connections (crictl port-forward is listening).
fn wait_listening(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("crictl port-forward exited ({st}): {err}");
        }
        ensure!(Instant::now() < deadline, "port {port} never listened");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn attach_and_port_forward_through_crictl_over_spdy_and_websocket() {
    // This daemon's streaming server uses TLS (the exec test's does not): crictl checks its
    // certificate.
    let s = setup("cria", true).expect("setup");
    let r = runtime().block_on(async {
        let mut c = s.d.client().await?;
        let echo: &[&str] = &["sh", "-c", "echo ready; while read l; do echo \"got $l\"; done"];
        // The pages live on the container's tmpfs (/dev/shm): quick to write in the guest.
        let httpd: &[&str] = &[
            "sh",
            "-c",
            "mkdir -p /dev/shm/www && echo index-page > /dev/shm/www/index.html && \
             exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /dev/shm/www",
        ];
        let (pod, ids) = pod_with(
            &s,
            &mut c,
            "attach",
            &[("echo", echo, true, false), ("web", httpd, false, false)],
        )
        .await?;
        let (echo_id, web_id) = (ids[0].clone(), ids[1].clone());
        let k = s.crictl()?;
        let log = s.d.logs_dir("attach").join("echo/0.log");
        let url = exec_url(&mut c, &echo_id).await?;
        ensure!(url.starts_with("https://") == s.tls.is_some(), "the URL is {url}");

        for (n, tr) in TRANSPORTS.iter().enumerate() {
            let ctx = |what: &str| format!("{what} over {tr}");
            // Two attachers follow the output; a third writes a line to stdin.
            let watch = || -> Result<Reap> {
                Ok(Reap(k.command("attach", &["--transport", tr, &echo_id]).spawn()?))
            };
            let (mut a, mut b) = (watch()?, watch()?);
            let line = format!("line-{n}");
            let want = format!("got {line}");
            // Each attacher's reader, started before anything is written.
            let mut readers = Vec::new();
            for (who, r) in [("first", &mut a), ("second", &mut b)] {
                let out = r.0.stdout.take().context("stdout")?;
                let err = r.0.stderr.take().context("stderr")?;
                let want = want.clone();
                let reader = tokio::task::spawn_blocking(move || -> Result<String> {
                    let mut seen = String::new();
                    for l in BufReader::new(out).lines() {
                        let l = l?;
                        seen.push_str(&l);
                        seen.push('\n');
                        if l == want {
                            return Ok(seen);
                        }
                    }
                    let mut stderr = String::new();
                    let _ = BufReader::new(err).read_to_string(&mut stderr);
                    bail!("output ended before {want:?}: {seen:?}; crictl stderr: {stderr}")
                });
                readers.push((who, reader));
            }
            let mut w = Reap(
                k.command("attach", &["--transport", tr, "-i", &echo_id])
                    .stdin(Stdio::piped())
                    .spawn()?,
            );
            // An attacher sees only output made after it is attached, and nothing tells when
            // crictl is (its TLS handshake alone can take seconds in the test host): the writer
            // repeats the line every 2 s until both readers have seen its answer.
            let deadline = Instant::now() + Duration::from_secs(90);
            for (who, mut reader) in readers {
                loop {
                    let stdin = w.0.stdin.as_mut().context("stdin")?;
                    stdin.write_all(format!("{line}\n").as_bytes()).context("writer's stdin")?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    ensure!(!left.is_zero(), "{}", ctx(&format!("{who} attacher: no {want:?}")));
                    let wait = left.min(Duration::from_secs(2));
                    if let Ok(done) = tokio::time::timeout(wait, &mut reader).await {
                        done?.with_context(|| ctx(&format!("{who} attacher")))?;
                        break;
                    }
                }
            }
            drop((a, b, w));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            ensure!(text.contains(&want), "{}: CRI log lacks {want:?}:\n{text}", ctx("attach"));

            // Port forward to the pod's localhost-only HTTP server.
            if n == 0 {
                let make = format!("{} > /dev/shm/www/big", seq_command(DOWNLOAD_MIB << 20));
                exec_sync(&mut c, &web_id, &make).await?;
            }
            let want = seq_sha256(DOWNLOAD_MIB << 20)?;
            let port = 18090 + n as u16;
            let mut pf = Reap(
                k.command("port-forward", &["--transport", tr, &pod, &format!("{port}:8080")])
                    .spawn()?,
            );
            wait_listening(port, &mut pf.0).with_context(|| ctx("port-forward"))?;
            let gets: Vec<_> = (0..20)
                .map(|_| tokio::task::spawn_blocking(move || http_get(port, "/index.html")))
                .collect();
            for g in gets {
                let body = g.await?.with_context(|| ctx("concurrent GET"))?;
                ensure!(
                    body == b"index-page\n",
                    "{}: {:?}",
                    ctx("GET"),
                    String::from_utf8_lossy(&body)
                );
            }
            let big = tokio::task::spawn_blocking(move || http_get(port, "/big")).await??;
            let o = Command::new("sha256sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut ch| {
                    ch.stdin.take().map(|mut i| i.write_all(&big)).transpose()?;
                    ch.wait_with_output()
                })?;
            let got = first_word(&String::from_utf8_lossy(&o.stdout));
            ensure!(
                got == want && big.len() == DOWNLOAD_MIB << 20,
                "{}: {} bytes, sha256 {got} != {want}",
                ctx("50 MiB download"),
                big.len()
            );
            drop(pf);
        }
        // A port nobody listens on: the client sees the failure.
        let mut pf = Reap(k.command("port-forward", &[&pod, "18099:8099"]).spawn()?);
        wait_listening(18099, &mut pf.0)?;
        let r = tokio::task::spawn_blocking(|| http_get(18099, "/")).await?;
        ensure!(r.is_err(), "a GET through a forward to a closed port succeeded");
        Ok::<_, anyhow::Error>(())
    });
    with_log(&s.d, r);
}
