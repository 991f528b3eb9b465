//! Errors of ConfigureNetwork and their gRPC status codes.

use tonic::Status;

use crate::container::ContainerError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    State(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pod(#[from] ContainerError),
    #[error("network thread panicked")]
    Panicked,
}

impl NetError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Io { what: what.into(), source }
    }

    pub(super) fn nl(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Netlink { what, source }
    }
}

impl From<NetError> for Status {
    fn from(e: NetError) -> Status {
        match e {
            NetError::Pod(c) => c.into(),
            NetError::Invalid(_) => Status::invalid_argument(e.to_string()),
            NetError::NotFound(_) => Status::not_found(e.to_string()),
            NetError::State(_) => Status::failed_precondition(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}
