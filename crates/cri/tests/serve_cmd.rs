//! `carapace serve`'s argument handling (crates/carapace/src/serve_cmd.rs, compiled here so it
//! is tested before the binary wires it in).

#[allow(dead_code)]
#[path = "../../carapace/src/serve_cmd.rs"]
mod serve_cmd;

use clap::Parser;
use serve_cmd::{load_config, ServeArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[test]
fn named_config_and_listen_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, "cgroup_driver = \"systemd\"\n").unwrap();
    let cli = Cli::parse_from([
        "serve",
        "--config",
        cfg_path.to_str().unwrap(),
        "--listen",
        "unix:///tmp/other.sock",
    ]);
    let cfg = load_config(&cli.serve).unwrap();
    assert_eq!(cfg.socket, std::path::PathBuf::from("/tmp/other.sock"));
    assert_eq!(cfg.cgroup_driver, carapace_cri::config::CgroupDriver::Systemd);
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, "[runtime_handlers]\nkata = \"nope\"\n").unwrap();
    let cli = Cli::parse_from(["serve", "--config", cfg_path.to_str().unwrap()]);
    let err = load_config(&cli.serve).unwrap_err();
    assert!(err.contains("runtime_handlers.\"kata\" names profile \"nope\""), "{err}");
    let missing = dir.path().join("missing.toml");
    let cli = Cli::parse_from(["serve", "--config", missing.to_str().unwrap()]);
    assert!(load_config(&cli.serve).unwrap_err().contains("cannot read config file"));
    std::fs::write(&cfg_path, "").unwrap();
    let cli = Cli::parse_from(["serve", "--config", cfg_path.to_str().unwrap(), "--listen", "tcp://x"]);
    assert!(load_config(&cli.serve).unwrap_err().contains("only Unix sockets"));
}
