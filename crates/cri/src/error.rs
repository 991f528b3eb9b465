//! Errors of CRI calls, each mapped to the gRPC status kubelet acts on.

use tonic::{Code, Status};

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
    #[error("{0}")]
    Internal(String),
}

impl CriError {
    pub fn code(&self) -> Code {
        match self {
            CriError::NotFound(_) => Code::NotFound,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<crate::store::StoreError> for CriError {
    fn from(e: crate::store::StoreError) -> CriError {
        CriError::Internal(e.to_string())
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
}
