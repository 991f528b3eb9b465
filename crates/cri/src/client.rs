//! CRI clients over the daemon's Unix socket (what kubelet and crictl do), for tests and tools.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// A gRPC channel to the CRI socket at `socket` (both services are served on it).
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_path_buf();
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let path = path.clone();
        async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
    });
    // The URI is required by tonic but never resolved: the connector decides where bytes go.
    Endpoint::from_static("http://carapace.cri").connect_with_connector(connector).await
}

/// A RuntimeService client on the CRI socket at `socket`.
pub async fn connect(
    socket: &Path,
) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// An ImageService client on the CRI socket at `socket`.
pub async fn connect_images(
    socket: &Path,
) -> Result<ImageServiceClient<Channel>, tonic::transport::Error> {
    Ok(ImageServiceClient::new(channel(socket).await?))
}
