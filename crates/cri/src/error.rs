//! Errors of CRI calls. Each keeps what caused it (`#[source]`); the one mapping to the gRPC
//! status kubelet acts on is `impl From<CriError> for Status` below.

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::store::StoreError;
use crate::vmm::VmmProcessError;
use crate::volumes::VolumeError;

/// A CRI call that failed; the text is for a person (what is wrong, what to do).
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    /// A host file operation of the daemon failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io { op: String, path: PathBuf, source: std::io::Error },
    #[error("cannot make an ID: {0}")]
    NewId(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Starting, reaching or stopping a pod's VMM failed.
    #[error("{context}: {source}")]
    Vmm { context: String, source: VmmProcessError },
    /// The pod's agent could not be reached.
    #[error("cannot reach the agent of pod sandbox {pod}: {source}")]
    AgentUnreachable { pod: String, source: carapace_agent_client::AgentClientError },
    /// The pod's agent answered a call with an error (its code is kept).
    #[error("{call}: {}", source.message())]
    Agent { call: &'static str, source: tonic::Status },
    #[error("image {image}: {source}")]
    Image { image: String, source: carapace_image::ImageError },
    #[error("cannot build the rootfs of image {image}: {source}")]
    Rootfs { image: String, source: std::io::Error },
    /// A volume (host path) could not be bind-mounted: the client's mount is at fault.
    #[error("mount {container_path:?}: {source}")]
    Mount { container_path: String, source: VolumeError },
    /// Files under a pod's or container's dir could not be removed.
    #[error("cannot remove the files of {what}: {source}")]
    Remove { what: String, source: VolumeError },
    /// A container's files could not be staged or exposed in the pod's shared dir.
    #[error("cannot prepare the files of container {id}: {source}")]
    Prepare { id: String, source: carapace_podfs::Error },
    /// The pod's own disk (`[pods]`) could not be made or mounted.
    #[error("cannot set up the disk of pod sandbox {id}: {source}")]
    PodDisk { id: String, source: carapace_podfs::Error },
    #[error("the operation's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The pod's network (CNI) could not be set up or torn down; a plugin's own message is in
    /// the text.
    #[error("pod network: {0}")]
    Network(#[from] crate::cni::CniError),
    /// A container's resources do not fit its pod's VM (or cannot be read).
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    /// The pod's tap could not be made or wired to its CNI interface.
    #[error("pod network of sandbox {id}: {source}")]
    PodNic { id: String, source: crate::network::NetError },
}

impl CriError {
    /// A host file operation that failed on `path`.
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CriError::Io { op: op.into(), path: path.into(), source }
    }
}

/// The agent's own codes keep their meaning; anything else it says is internal to carapace.
fn agent_code(code: Code) -> Code {
    match code {
        Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Unimplemented
        | Code::DeadlineExceeded => code,
        _ => Code::Internal,
    }
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        if crate::pod_disk::is_disk_full(&e) {
            tracing::warn!(error = %e, "a pod's disk is full");
            let key = crate::pod_disk::SIZE_KEY;
            let hint = format!("the pod's disk is full (its size is {key} in the daemon config)");
            return Status::new(Code::ResourceExhausted, format!("{e}: {hint}"));
        }
        let code = match &e {
            CriError::NotFound(_) => Code::NotFound,
            CriError::InvalidArgument(_) | CriError::Mount { .. } => Code::InvalidArgument,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Vmm { source: VmmProcessError::AgentTimeout { .. }, .. } => {
                Code::DeadlineExceeded
            }
            CriError::Vmm { source: VmmProcessError::NotRunning { .. }, .. } => {
                Code::FailedPrecondition
            }
            CriError::Agent { source, .. } => agent_code(source.code()),
            CriError::Sizing(crate::sizing::SizingError::Negative { .. }) => Code::InvalidArgument,
            CriError::Sizing(_) => Code::ResourceExhausted,
            CriError::Network(crate::cni::CniError::InvalidArgument(_)) => Code::InvalidArgument,
            CriError::Network(crate::cni::CniError::NotReady(_)) => Code::FailedPrecondition,
            CriError::Io { .. }
            | CriError::NewId(_)
            | CriError::Store(_)
            | CriError::Vmm { .. }
            | CriError::AgentUnreachable { .. }
            | CriError::Image { .. }
            | CriError::Rootfs { .. }
            | CriError::Remove { .. }
            | CriError::Prepare { .. }
            | CriError::PodDisk { .. }
            | CriError::Task(_)
            | CriError::Network(_)
            | CriError::PodNic { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl CriError {
    /// Whether the thing the call names does not exist (here or in the pod's agent).
    pub fn is_not_found(&self) -> bool {
        match self {
            CriError::NotFound(_) => true,
            CriError::Agent { source, .. } => source.code() == Code::NotFound,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_survive_into_the_status() {
        let s: Status = CriError::NotFound("pod sandbox abc not found".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "pod sandbox abc not found");
        let s: Status = CriError::InvalidArgument("x".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }

    #[test]
    fn typed_errors_keep_their_source_and_code() {
        use std::error::Error as _;
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = CriError::io("write", "/r/hostname", io);
        assert!(e.source().is_some());
        let s: Status = e.into();
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().starts_with("cannot write /r/hostname: "), "{}", s.message());
        let agent = |code| CriError::Agent {
            call: "agent StartContainer",
            source: Status::new(code, "no such container"),
        };
        assert!(agent(Code::NotFound).is_not_found());
        let s: Status = agent(Code::NotFound).into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "agent StartContainer: no such container")
        );
        let s: Status = agent(Code::Unknown).into();
        assert_eq!(s.code(), Code::Internal);
    }

    #[test]
    fn network_errors_keep_the_plugins_words() {
        use crate::cni::{CniError, PluginError};
        let plugin = CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            error: PluginError { code: 11, msg: "no IP left".into(), details: String::new() },
        };
        let s: Status = CriError::from(plugin).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().starts_with("pod network: ") && s.message().contains("no IP left"));
        let s: Status = CriError::from(CniError::NotReady("no config".into())).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s: Status = CriError::from(CniError::InvalidArgument("bad port".into())).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
