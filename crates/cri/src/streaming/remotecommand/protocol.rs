//! What the remote command transports share: the protocol versions, the session a request
//! asks for, the timeouts and the exit status message.

use std::time::Duration;

use k8s_cri::v1 as cri;

use crate::streaming::{Backend, Outcome, Stdio};

/// How long the client may take to open the streams it asked for (kubelet: 30 s).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client may take to close the connection after the exit status was sent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Output is sent in data frames (messages) of at most this many bytes.
pub const MAX_DATA_CHUNK: usize = 32 << 10;

/// The remote command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    V2,
    V3,
    V4,
    /// WebSocket only: v4 plus the close signal for stdin.
    V5,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        [Protocol::V2, Protocol::V3, Protocol::V4, Protocol::V5]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// The first protocol in the client's order of preference that the server also supports.
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[Protocol],
) -> Option<Protocol> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|v| Protocol::from_name(v.trim()))
        .find(|p| supported.contains(p))
}

/// A streaming session's request.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
}

/// Which streams a session has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Session {
    pub fn flags(&self) -> Flags {
        match self {
            Session::Exec(r) => {
                Flags { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty }
            }
            Session::Attach(r) => {
                Flags { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty }
            }
        }
    }

    /// What the status message names.
    pub fn describe(&self) -> String {
        match self {
            Session::Exec(r) => format!("command {:?}", r.cmd),
            Session::Attach(r) => format!("attach to container {}", r.container_id),
        }
    }

    pub async fn run(self, backend: &dyn Backend, io: Stdio) -> Outcome {
        match self {
            Session::Exec(r) => backend.exec(r, io).await,
            Session::Attach(r) => backend.attach(r, io).await,
        }
    }
}

/// The error stream's message for an outcome (None: nothing to write).
pub fn status_message(protocol: Protocol, what: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let v = match (protocol >= Protocol::V4, outcome) {
        (true, Outcome::Exited(0)) => serde_json::json!({"metadata": {}, "status": "Success"}),
        (true, Outcome::Exited(code)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing {what}, \
                 exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        (true, Outcome::Failed(msg)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
        (false, Outcome::Exited(0)) => return None,
        (false, Outcome::Exited(code)) => {
            return Some(
                format!("command terminated with non-zero exit code: exit status {code}")
                    .into_bytes(),
            )
        }
        (false, Outcome::Failed(msg)) => return Some(msg.clone().into_bytes()),
    };
    Some(v.to_string().into_bytes())
}
