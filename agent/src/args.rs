//! Command-line arguments of the agent (hand-parsed: the agent is PID 1 and
//! should stay small) and options from the kernel command line.

use std::ffi::OsString;
use std::path::PathBuf;

use carapace_agent_client::AGENT_VSOCK_PORT;

/// Where the gRPC API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK, VMADDR_CID_ANY, this port (the guest).
    Vsock(u32),
    /// A Unix socket at this path (dev mode on the host, for tests).
    Unix(PathBuf),
}

/// Parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub listen: Listen,
    pub hostname: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {option}")]
    BadValue { option: String, value: String },
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

pub const USAGE: &str = "\
usage: carapace-agent [--vsock-port N | --listen-unix PATH] [--hostname NAME]
  As PID 1 of a carapace guest: sets up the guest and serves the agent API on
  AF_VSOCK port 1024 (default). --listen-unix PATH: dev mode (no mounts, no
  reboot; Shutdown makes the agent exit 0).";

/// Parses the arguments after argv[0].
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, ArgsError> {
    let mut listen = Listen::Vsock(AGENT_VSOCK_PORT);
    let mut hostname = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let name = arg.to_string_lossy().into_owned();
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen-unix" => {
                let v = it.next().ok_or_else(|| ArgsError::MissingValue(name.clone()))?;
                if v.is_empty() {
                    return Err(ArgsError::BadValue { option: name, value: String::new() });
                }
                listen = Listen::Unix(PathBuf::from(v));
            }
            "--vsock-port" => {
                let v = it.next().ok_or_else(|| ArgsError::MissingValue(name.clone()))?;
                let s = v.to_string_lossy().into_owned();
                let port = s
                    .parse::<u32>()
                    .map_err(|_| ArgsError::BadValue { option: name.clone(), value: s.clone() })?;
                listen = Listen::Vsock(port);
            }
            "--hostname" => {
                let v = it.next().ok_or_else(|| ArgsError::MissingValue(name.clone()))?;
                let s = v.to_string_lossy().into_owned();
                if !valid_hostname(&s) {
                    return Err(ArgsError::BadValue { option: name, value: s });
                }
                hostname = Some(s);
            }
            _ => return Err(ArgsError::Unknown(name)),
        }
    }
    Ok(Command::Run(Args { listen, hostname }))
}

/// Options the host passes on the guest kernel command line
/// (`carapace.hostname=NAME`, `carapace.log=FILTER`). Parameters with a dot
/// are not handed to init by the kernel, so they are read from /proc/cmdline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelOpts {
    pub hostname: Option<String>,
    pub log: Option<String>,
}

/// Parses the contents of /proc/cmdline. Unknown words are ignored; an
/// invalid hostname is dropped.
pub fn parse_kernel_cmdline(text: &str) -> KernelOpts {
    let mut opts = KernelOpts::default();
    for word in text.split_ascii_whitespace() {
        if let Some(v) = word.strip_prefix("carapace.hostname=") {
            if valid_hostname(v) {
                opts.hostname = Some(v.to_owned());
            }
        } else if let Some(v) = word.strip_prefix("carapace.log=") {
            if !v.is_empty() {
                opts.log = Some(v.to_owned());
            }
        }
    }
    opts
}

/// RFC 1123-ish: 1..=64 bytes of letters, digits, '-' and '.', not starting
/// with '-' or '.'.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults_to_vsock_1024() {
        assert_eq!(
            p(&[]).unwrap(),
            Command::Run(Args { listen: Listen::Vsock(1024), hostname: None })
        );
    }

    #[test]
    fn parses_options() {
        assert_eq!(
            p(&["--listen-unix", "/tmp/a.sock", "--hostname", "pod-1"]).unwrap(),
            Command::Run(Args {
                listen: Listen::Unix("/tmp/a.sock".into()),
                hostname: Some("pod-1".into())
            })
        );
        assert_eq!(
            p(&["--vsock-port", "5000"]).unwrap(),
            Command::Run(Args { listen: Listen::Vsock(5000), hostname: None })
        );
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(p(&["-h"]).unwrap(), Command::Help);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(p(&["--listen-unix"]), Err(ArgsError::MissingValue(_))));
        assert!(matches!(p(&["--vsock-port", "x"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(p(&["--vsock-port", "-1"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(p(&["--hostname", "a b"]), Err(ArgsError::BadValue { .. })));
        assert!(matches!(p(&["--bogus"]), Err(ArgsError::Unknown(_))));
    }

    #[test]
    fn kernel_cmdline_options() {
        let o = parse_kernel_cmdline(
            "console=ttyS0 reboot=k carapace.hostname=web-0 carapace.log=debug quiet\n",
        );
        assert_eq!(o.hostname.as_deref(), Some("web-0"));
        assert_eq!(o.log.as_deref(), Some("debug"));
        let o = parse_kernel_cmdline("carapace.hostname=bad/name carapace.log=");
        assert_eq!(o, KernelOpts::default());
    }

    #[test]
    fn hostname_rules() {
        assert!(valid_hostname("a"));
        assert!(valid_hostname("pod-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("-a"));
        assert!(!valid_hostname(&"a".repeat(65)));
        assert!(!valid_hostname("a_b"));
    }
}
