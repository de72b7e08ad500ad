//! Starting the real `p2p-gui` binary where no window can open, and its command line.

use std::process::{Command, Output};

fn gui(args: &[&str], display: Option<&str>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_p2p-gui"));
    command
        .args(args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .env("P2P_TRANSFER_CONFIG_DIR", dir.path().join("config"))
        .env("P2P_TRANSFER_DATA_DIR", dir.path().join("data"))
        .env("RUST_BACKTRACE", "1");
    if let Some(display) = display {
        command.env("DISPLAY", display);
    }
    command.output().expect("run p2p-gui")
}

#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn without_a_display_it_says_so_and_exits_1_without_a_panic() {
    let out = gui(&[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the window: there is no display"),
        "{stderr}"
    );
    assert!(
        stderr.contains("p2p-transfer send"),
        "points to the CLI: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[cfg(all(unix, not(target_os = "macos")))]
#[test]
fn a_display_that_does_not_answer_is_said_plainly_without_a_panic() {
    // No X server listens on display 59999 (its socket would be /tmp/.X11-unix/X59999).
    assert!(!std::path::Path::new("/tmp/.X11-unix/X59999").exists());
    let out = gui(&["--port", "0"], Some(":59999"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the window (the X display \":59999\" does not answer)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

#[test]
fn the_flags_have_the_clis_names() {
    let out = gui(&["--help"], None);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--peer <HOST[:PORT]>",
        "--port <PORT>",
        "--bind <ADDR>",
        "--code <CODE>",
        "--get <TICKET_OR_FILE>",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(!help.contains("--listen"), "{help}");
    // Connecting and listening at once is a command-line error, as in the CLI.
    let out = gui(&["--peer", "127.0.0.1", "--port", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
