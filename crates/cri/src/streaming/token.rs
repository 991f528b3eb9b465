//! Single-use tokens for streaming URLs: random, consumed by the first connection that names
//! them, expired after a time unused (kubelet's request cache: 1 min, at most 1000 pending).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::error::CriError;
use crate::util::lock;

/// Pending tokens at most; beyond that new requests are refused until some are used or expire.
pub const MAX_PENDING: usize = 1000;
/// Random bytes per token (hex in the URL).
const TOKEN_BYTES: usize = 16;

/// A validated streaming request waiting for its client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl StreamRequest {
    /// The URL path component of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }
}

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// Unknown, already used or expired (404).
    NotFound,
    /// A valid token for another kind of request (consumed anyway, as kubelet does; 400).
    WrongKind,
}

/// The pending tokens of one streaming server.
pub struct TokenStore {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

impl TokenStore {
    pub fn new(ttl: Duration) -> TokenStore {
        TokenStore { ttl, pending: Mutex::new(HashMap::new()) }
    }

    /// Stores `req` under a new random token.
    pub fn insert(&self, req: StreamRequest) -> Result<String, CriError> {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).map_err(|e| {
            CriError::NewId(std::io::Error::other(format!("no random bytes for a token: {e}")))
        })?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut pending = lock(&self.pending);
        pending.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if pending.len() >= MAX_PENDING {
            return Err(CriError::FailedPrecondition(format!(
                "{MAX_PENDING} streaming requests are waiting for their clients; try again later"
            )));
        }
        pending.insert(token.clone(), (now, req));
        Ok(token)
    }

    /// Consumes `token` for a request of `kind` ([`StreamRequest::kind`]).
    pub fn take(&self, kind: &str, token: &str) -> Result<StreamRequest, TakeError> {
        let (at, req) = lock(&self.pending).remove(token).ok_or(TakeError::NotFound)?;
        if at.elapsed() >= self.ttl {
            return Err(TakeError::NotFound);
        }
        if req.kind() != kind {
            return Err(TakeError::WrongKind);
        }
        Ok(req)
    }

    /// How many tokens are pending (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        lock(&self.pending).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> StreamRequest {
        StreamRequest::Exec(cri::ExecRequest { container_id: "c".into(), ..Default::default() })
    }

    #[test]
    fn a_token_is_used_once() {
        let s = TokenStore::new(Duration::from_secs(60));
        let t = s.insert(exec()).unwrap();
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        assert_eq!(s.take("exec", &t), Ok(exec()));
        assert_eq!(s.take("exec", &t), Err(TakeError::NotFound));
        assert_eq!(s.take("exec", "nope"), Err(TakeError::NotFound));
    }

    #[test]
    fn tokens_are_random() {
        let s = TokenStore::new(Duration::from_secs(60));
        let a = s.insert(exec()).unwrap();
        let b = s.insert(exec()).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_token_of_another_kind_is_refused_and_consumed() {
        let s = TokenStore::new(Duration::from_secs(60));
        let t = s.insert(exec()).unwrap();
        assert_eq!(s.take("attach", &t), Err(TakeError::WrongKind));
        assert_eq!(s.take("exec", &t), Err(TakeError::NotFound));
    }

    #[test]
    fn tokens_expire_unused() {
        let s = TokenStore::new(Duration::from_millis(30));
        let t = s.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.take("exec", &t), Err(TakeError::NotFound));
        // Expired entries are swept on insert.
        let _ = s.insert(exec()).unwrap();
        let _ = s.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let _ = s.insert(exec()).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn pending_tokens_are_bounded() {
        let s = TokenStore::new(Duration::from_secs(60));
        for _ in 0..MAX_PENDING {
            s.insert(exec()).unwrap();
        }
        assert!(matches!(s.insert(exec()), Err(CriError::FailedPrecondition(_))));
    }
}
