//! Errors of the container service and their gRPC status codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A malformed or hostile request (bad id, escaping path, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("process {exec:?} of container {container:?} not found")]
    ExecNotFound { container: String, exec: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The container is not in a state that allows the call.
    #[error("{0}")]
    State(String),
    /// The process's program does not exist in the container.
    #[error("{0}")]
    ExecutableNotFound(String),
    /// An option this agent does not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// Containers need the agent as PID 1 of a guest.
    #[error("containers are disabled: {0}")]
    Disabled(&'static str),
    /// The OCI runtime library refused or failed.
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ContainerError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> ContainerError {
        ContainerError::Io { what: what.into(), source }
    }

    pub fn invalid(msg: impl Into<String>) -> ContainerError {
        ContainerError::Invalid(msg.into())
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        let msg = e.to_string();
        match e {
            ContainerError::Invalid(_) => Status::invalid_argument(msg),
            ContainerError::NotFound(_)
            | ContainerError::ExecNotFound { .. }
            | ContainerError::ExecutableNotFound(_) => Status::not_found(msg),
            ContainerError::AlreadyExists(_) => Status::already_exists(msg),
            ContainerError::State(_) | ContainerError::Disabled(_) => {
                Status::failed_precondition(msg)
            }
            ContainerError::Unsupported(_) => Status::unimplemented(msg),
            ContainerError::Runtime(_) | ContainerError::Io { .. } => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s: Status = ContainerError::invalid("x").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let s: Status = ContainerError::NotFound("a".into()).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s: Status = ContainerError::Unsupported("tty".into()).into();
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        assert!(s.message().contains("tty"));
    }
}
