//! The daemon: opens the state, binds the CRI Unix socket, serves until asked to stop.
//! Stopping the daemon leaves running pod VMs alone; the next start reattaches to them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carapace_image::ImageServiceImpl;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::runtime::{OpenError, Runtime};
use crate::runtime_service::RuntimeServiceImpl;
use crate::streaming::{Backend, Streaming};

/// How long clients may keep their connections after a stop was requested.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cannot open the image store: {0}")]
    Images(#[from] carapace_image::ImageError),
    #[error("cannot create {path}: {source}")]
    SocketDir { path: PathBuf, source: std::io::Error },
    #[error(
        "another process is already serving on {0}; stop it or set `listen` to another socket"
    )]
    InUse(PathBuf),
    #[error("cannot remove the stale socket {path}: {source}")]
    Stale { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot listen on {addr} for streaming (exec/attach): {source}; \
         set [streaming] address/port"
    )]
    StreamingBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    StreamingTls(#[from] crate::streaming::tls::TlsError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Binds `path`, replacing a stale socket file but refusing one somebody still listens on.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| ServeError::SocketDir { path: dir.to_path_buf(), source })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path)
            .map_err(|source| ServeError::Stale { path: path.to_path_buf(), source })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|source| ServeError::Bind { path: path.to_path_buf(), source })?;
    // Owner and group only (0660), as containerd's socket: the CRI is root's on a node.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
        .map_err(|source| ServeError::Bind { path: path.to_path_buf(), source })?;
    Ok(listener)
}

/// A running daemon's parts: the runtime (sandboxes and containers), the image service, the
/// bound socket.
pub struct Daemon {
    pub runtime: Arc<Runtime>,
    pub images: ImageServiceImpl,
    pub listener: UnixListener,
    pub socket: PathBuf,
    /// The streaming server's socket (Exec/Attach URLs point here).
    pub streaming_listener: tokio::net::TcpListener,
    /// The streaming server's TLS, when `[streaming]` names a certificate and key.
    pub streaming_tls: Option<tokio_native_tls::TlsAcceptor>,
}

impl Daemon {
    /// Opens the state (reattaching to running VMs) and binds the socket. Needs a Tokio runtime.
    pub fn open(cfg: Config) -> Result<Daemon, ServeError> {
        let socket = cfg.socket.clone();
        let images = ImageServiceImpl::new(&cfg.images)?;
        let runtime = Arc::new(Runtime::open(Arc::new(cfg))?);
        // CreateContainer takes its images from the store the ImageService pulls into.
        runtime.set_image_store(images.store());
        let addr = runtime.config().streaming.socket_addr();
        let streaming_listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| ServeError::StreamingBind { addr, source })?;
        let bound = streaming_listener
            .local_addr()
            .map_err(|source| ServeError::StreamingBind { addr, source })?;
        let streaming_tls = crate::streaming::tls::acceptor(&runtime.config().streaming)?;
        let streaming = match streaming_tls {
            Some(_) => Streaming::new_tls(bound),
            None => Streaming::new(bound),
        };
        runtime.set_streaming(Arc::new(streaming));
        let listener = bind_socket(&socket)?;
        Ok(Daemon { runtime, images, listener, socket, streaming_listener, streaming_tls })
    }

    /// The RuntimeService of this daemon, ready to add to a tonic router.
    pub fn runtime_service(&self) -> RuntimeServiceServer<RuntimeServiceImpl> {
        RuntimeServiceServer::new(RuntimeServiceImpl::new(self.runtime.clone()))
    }

    /// The ImageService of this daemon (shares its store with CreateContainer).
    pub fn image_service(&self) -> ImageServiceServer<ImageServiceImpl> {
        ImageServiceServer::new(self.images.clone())
    }

    /// Serves the RuntimeService and the ImageService until `shutdown` completes; removes the
    /// socket afterwards.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let service = self.runtime_service();
        let images = self.image_service();
        tracing::info!(socket = %self.socket.display(), "carapace CRI daemon serving");
        // After `shutdown`, clients get GRACE to finish their calls and close their connections;
        // a client that keeps its connection open (or is not reading) does not hold the daemon.
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        if let Some(streaming) = self.runtime.streaming() {
            let addr = self.streaming_listener.local_addr().ok();
            let tls = self.streaming_tls.is_some();
            let what = "streaming server (exec/attach/port-forward) serving";
            tracing::info!(address = ?addr, tls, "{what}");
            let backend: Arc<dyn Backend> = self.runtime.clone();
            tokio::spawn(crate::streaming::server::serve(
                self.streaming_listener,
                streaming,
                backend,
                self.streaming_tls,
                rx.clone(),
            ));
        }
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(images)
            .serve_with_incoming_shutdown(UnixListenerStream::new(self.listener), async move {
                let _ = rx.wait_for(|stop| *stop).await;
            });
        let stop_then_grace = async move {
            shutdown.await;
            tracing::info!("stop requested: draining client connections");
            let _ = tx.send(true);
            tokio::time::sleep(GRACE).await;
        };
        let result = tokio::select! {
            r = server => r,
            () = stop_then_grace => {
                tracing::info!(
                    grace_s = GRACE.as_secs(),
                    "clients still connected: closing anyway",
                );
                Ok(())
            }
        };
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("carapace CRI daemon stopped; pod VMs keep running");
        result.map_err(ServeError::from)
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

/// Runs the daemon on its own Tokio runtime until SIGTERM/SIGINT.
pub fn serve_blocking(cfg: Config) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        let daemon = Daemon::open(cfg)?;
        daemon.serve(stop_signal()).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_but_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cri.sock");
        let first = bind_socket(&path).unwrap();
        let err = bind_socket(&path).err().unwrap().to_string();
        assert!(err.contains("already serving"), "{err}");
        drop(first); // the file stays behind, nobody listens: stale
        assert!(path.exists());
        bind_socket(&path).unwrap();
    }
}
