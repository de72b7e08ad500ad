//! Network namespaces: `ip` commands to build and remove them, and `setns` to move one
//! thread of this process into one.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs a command to completion; its stderr goes into the error.
pub fn run<I, S>(program: &str, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `program args…` inside namespace `ns`.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", all)
}

pub fn exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

/// Creates `ns` with lo up and IPv6 off (no router solicitations or DAD chatter).
pub fn add(ns: &str) -> Result<()> {
    run("ip", ["netns", "add", ns])?;
    exec_in(ns, "sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    exec_in(
        ns,
        "sysctl",
        &["-qw", "net.ipv6.conf.default.disable_ipv6=1"],
    )?;
    run("ip", ["-n", ns, "link", "set", "lo", "up"])
}

/// Kills every process inside `ns` (never this one) and deletes it. Returns whether it
/// existed.
pub fn remove(ns: &str) -> Result<bool> {
    if !exists(ns) {
        return Ok(false);
    }
    let own = std::process::id();
    if let Ok(output) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if pid > 1 && pid as u32 != own {
                // SAFETY: kill has no memory effects; the pid came from `ip netns pids`.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    run("ip", ["netns", "del", ns])?;
    Ok(true)
}

/// Moves the calling thread (only it) into namespace `ns`. Sockets it opens afterwards
/// belong to that namespace for their whole life, whichever thread uses them.
pub fn enter(ns: &str) -> io::Result<()> {
    let file = File::open(Path::new(NETNS_DIR).join(ns))?;
    // SAFETY: a valid fd for the duration of the call; setns only changes this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`.
pub fn spawn_in<T, F>(ns: &str, f: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns).with_context(|| format!("cannot enter network namespace {ns}"))?;
        f()
    })
}
