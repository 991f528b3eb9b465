//! Serving the agent API on AF_VSOCK (guest) or a Unix socket (dev mode).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use carapace_agent_client::pb::agent_server::AgentServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::Server;

use crate::args::Listen;
use crate::service::{requested, AgentService, ShutdownReason};

/// The line benchmarks and tests wait for on the console.
pub const READY_MARKER: &str = "carapace-agent: ready";

/// How long in-flight calls (e.g. the Shutdown answer) get to finish once
/// shutdown was requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Prints the ready marker as one write on stdout (the console as PID 1).
fn print_ready() {
    let mut out = std::io::stdout().lock();
    // Nothing useful to do if the console is gone.
    let _ = out.write_all(format!("{READY_MARKER}\n").as_bytes());
    let _ = out.flush();
}

/// A listening socket the accept loop can own.
trait Acceptor: Send + 'static {
    type Io: Send + 'static;
    fn accept_one(&mut self)
        -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Acceptor for tokio_vsock::VsockListener {
    type Io = tokio_vsock::VsockStream;
    async fn accept_one(&mut self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&mut self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Accepts connections into a channel, pausing briefly on accept errors
/// (e.g. EMFILE) instead of spinning. Abort the task to close the listener.
fn spawn_accept_loop<A: Acceptor>(
    mut listener: A,
) -> (ReceiverStream<std::io::Result<A::Io>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept_one().await {
                Ok(io) => {
                    if tx.send(Ok(io)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    (ReceiverStream::new(rx), task)
}

async fn run_server<IO>(
    incoming: ReceiverStream<std::io::Result<IO>>,
    service: AgentService,
    shutdown: watch::Receiver<Option<ShutdownReason>>,
) -> Result<(), ServeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
{
    let signal = {
        let rx = shutdown.clone();
        async move {
            requested(rx).await;
        }
    };
    let server = Server::builder()
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal);
    let drain_deadline = async move {
        requested(shutdown).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        r = server => r.map_err(ServeError::from),
        _ = drain_deadline => {
            tracing::warn!("connections did not close within {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    }
}

fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds `listen`, prints the ready marker, serves until shutdown is
/// requested (and in-flight calls are answered), then returns the reason.
pub async fn serve(
    listen: &Listen,
    service: AgentService,
    shutdown: watch::Receiver<Option<ShutdownReason>>,
) -> Result<Option<ShutdownReason>, ServeError> {
    let reason_rx = shutdown.clone();
    match listen {
        Listen::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let listener = tokio_vsock::VsockListener::bind(addr).map_err(|source| {
                ServeError::Bind { what: format!("vsock port {port}"), source }
            })?;
            tracing::info!(port, "serving the agent API on vsock");
            let forward = crate::portforward::spawn_vsock_listener(service.containers.clone())
                .map_err(|source| ServeError::Bind {
                    what: format!("vsock port {}", carapace_agent_client::PORT_FORWARD_VSOCK_PORT),
                    source,
                })?;
            let (incoming, task) = spawn_accept_loop(listener);
            print_ready();
            let r = run_server(incoming, service, shutdown).await;
            task.abort();
            forward.abort();
            r?;
        }
        Listen::Unix(path) => {
            remove_stale_socket(path);
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|source| ServeError::Bind { what: path.display().to_string(), source })?;
            tracing::info!(path = %path.display(), "serving the agent API on a Unix socket");
            let (incoming, task) = spawn_accept_loop(listener);
            print_ready();
            let r = run_server(incoming, service, shutdown).await;
            task.abort();
            remove_stale_socket(path);
            r?;
        }
    }
    let reason = *reason_rx.borrow();
    Ok(reason)
}
