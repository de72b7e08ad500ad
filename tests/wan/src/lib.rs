//! p2p-wan: a WAN emulator of the project's own, in user space at packet level (this
//! kernel has no netem).
//!
//! Three network namespaces: `PREFIX-h1` (10.201.0.1/24 on eth0) and `PREFIX-h2`
//! (10.201.0.2/24 on eth0) on one L2 subnet, and `PREFIX-wire`, which holds the other
//! ends of their veth pairs (`h1`, `h2`; no addresses, no forwarding). A forwarder in
//! this process bridges frames between `h1` and `h2` with AF_PACKET sockets and applies,
//! per direction, random loss, a bottleneck rate with a tail-drop queue and a one-way
//! delay ([`model::Link`]), so TCP and QUIC cross exactly the same link. ARP crosses it
//! like any frame. Offloads (TSO/GSO/GRO, tx checksumming) are off on all four veth ends,
//! so every frame is a real ≤ 1514-byte frame with a full checksum.
//!
//! ```no_run
//! let profile = p2p_wan::Profile::parse("lossy").unwrap();
//! let wan = p2p_wan::Wan::up("demo", profile).unwrap();
//! // ip netns exec demo-h2 iperf3 -s … ; ip netns exec demo-h1 iperf3 -c 10.201.0.2 …
//! println!("{:?}", wan.stats());
//! // Dropping `wan` stops the forwarder, kills what runs inside and deletes the namespaces.
//! ```

pub mod forward;
pub mod model;
pub mod netns;
pub mod profile;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

pub use forward::DirectionStats;
pub use model::{LinkParams, LinkStats};
pub use profile::{Profile, ProfileError};

/// The hosts' addresses: host 1 and host 2 on 10.201.0.0/24.
pub const HOST_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)];
/// The loss seed when none is given.
pub const DEFAULT_SEED: u64 = 12;

/// True when running under CI (`CI=true` or `1`): missing prerequisites fail instead of
/// skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this process runs as root (what network namespaces need).
pub fn running_as_root() -> bool {
    effective_uid() == Some(0)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What this machine lacks to bring a WAN up, if anything.
pub fn missing_prerequisite() -> Option<String> {
    if !running_as_root() {
        return Some("not running as root (network namespaces and packet sockets need it)".into());
    }
    if !runs("ip", &["netns", "list"]) {
        return Some("`ip netns` is not available (install iproute2)".into());
    }
    if !runs("ethtool", &["--version"]) {
        return Some("ethtool is not installed (install ethtool)".into());
    }
    None
}

/// The namespace names of a prefix: host 1, host 2, wire.
pub fn namespaces(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}-h1"),
        format!("{prefix}-h2"),
        format!("{prefix}-wire"),
    ]
}

fn check_prefix(prefix: &str) -> Result<()> {
    let mut chars = prefix.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && prefix.len() <= 20;
    if !valid {
        bail!("prefix must be 1-20 lower-case letters/digits, starting with a letter: '{prefix}'");
    }
    Ok(())
}

/// Removes whatever a WAN under `prefix` left: kills the processes inside its
/// namespaces and deletes them. Returns the namespaces that existed.
pub fn teardown(prefix: &str) -> Result<Vec<String>> {
    check_prefix(prefix)?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for ns in namespaces(prefix) {
        match netns::remove(&ns) {
            Ok(true) => removed.push(ns),
            Ok(false) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(removed)
}

/// Builds the three namespaces and the two veth pairs, offloads off.
fn build(prefix: &str) -> Result<()> {
    let [h1, h2, wire] = namespaces(prefix);
    for ns in [&h1, &h2, &wire] {
        netns::add(ns)?;
    }
    netns::exec_in(&wire, "sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
    for (host, wire_end, ip) in [(&h1, "h1", HOST_IPS[0]), (&h2, "h2", HOST_IPS[1])] {
        netns::run(
            "ip",
            [
                "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", wire_end,
                "netns", &wire,
            ],
        )?;
        netns::run(
            "ip",
            [
                "-n",
                host,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
        )?;
        let offloads = [
            "-K", "", "tso", "off", "gso", "off", "gro", "off", "tx", "off",
        ];
        for (ns, dev) in [(host.as_str(), "eth0"), (wire.as_str(), wire_end)] {
            let mut args = offloads;
            args[1] = dev;
            netns::exec_in(ns, "ethtool", &args)
                .with_context(|| format!("cannot turn offloads off on {dev} in {ns}"))?;
        }
        netns::run(
            "ip",
            ["-n", &wire, "link", "set", wire_end, "promisc", "on"],
        )?;
        netns::run("ip", ["-n", &wire, "link", "set", wire_end, "up"])?;
        netns::run("ip", ["-n", host, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// A running emulated WAN. Dropping it stops the forwarder, kills the processes left in
/// its namespaces and deletes them (also when a test panics).
pub struct Wan {
    prefix: String,
    profile: Profile,
    forwarder: Option<forward::Forwarder>,
    final_stats: Option<[DirectionStats; 2]>,
}

impl Wan {
    /// Brings a WAN up under `prefix` with the default loss seed.
    pub fn up(prefix: &str, profile: Profile) -> Result<Wan> {
        Wan::up_with_seed(prefix, profile, DEFAULT_SEED)
    }

    /// Brings a WAN up under `prefix`; `seed` fixes the random loss decisions.
    pub fn up_with_seed(prefix: &str, profile: Profile, seed: u64) -> Result<Wan> {
        check_prefix(prefix)?;
        if let Some(missing) = missing_prerequisite() {
            bail!("cannot bring a WAN up: {missing}");
        }
        let taken: Vec<_> = namespaces(prefix)
            .into_iter()
            .filter(|ns| netns::exists(ns))
            .collect();
        if !taken.is_empty() {
            bail!(
                "namespace {} already exists (`p2p-wan down --prefix {prefix}` removes leftovers)",
                taken.join(", ")
            );
        }
        // From here on whatever exists is removed by Drop, also after a failure.
        let mut wan = Wan {
            prefix: prefix.to_string(),
            profile,
            forwarder: None,
            final_stats: None,
        };
        build(prefix).context("cannot build the namespaces")?;
        let [_, _, wire] = namespaces(prefix);
        wan.forwarder = Some(forward::Forwarder::start(
            &wire,
            "h1",
            "h2",
            wan.profile.link_params(),
            seed,
        )?);
        Ok(wan)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn host_index(host: u8) -> usize {
        assert!(host == 1 || host == 2, "hosts are 1 and 2, not {host}");
        usize::from(host - 1)
    }

    /// The address of host 1 or 2.
    pub fn host_ip(&self, host: u8) -> Ipv4Addr {
        HOST_IPS[Wan::host_index(host)]
    }

    /// The namespace of host 1 or 2 (for `ip netns exec`).
    pub fn netns(&self, host: u8) -> String {
        namespaces(&self.prefix)[Wan::host_index(host)].clone()
    }

    /// The namespace of the forwarder.
    pub fn wire_netns(&self) -> String {
        namespaces(&self.prefix)[2].clone()
    }

    /// A command that runs `program` inside host 1 or 2.
    pub fn command(&self, host: u8, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec"])
            .arg(self.netns(host))
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// Runs `f` on a new thread inside host 1 or 2 (its sockets live there).
    pub fn spawn_in<T, F>(&self, host: u8, f: F) -> JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        netns::spawn_in(&self.netns(host), f)
    }

    /// Counters of both directions: `[h1->h2, h2->h1]` (the final ones after [`Wan::stop`]).
    pub fn stats(&self) -> [DirectionStats; 2] {
        match (&self.forwarder, &self.final_stats) {
            (Some(f), _) => f.stats(),
            (None, Some(stats)) => *stats,
            (None, None) => Default::default(),
        }
    }

    /// Stops the forwarder (the link goes dark; the namespaces stay until drop or
    /// [`Wan::down`]) and returns the final counters.
    pub fn stop(&mut self) -> [DirectionStats; 2] {
        if let Some(forwarder) = self.forwarder.take() {
            self.final_stats = Some(forwarder.stop());
        }
        self.stats()
    }

    /// Tears down now, reporting errors (Drop does the same, printing them).
    pub fn down(mut self) -> Result<[DirectionStats; 2]> {
        let stats = self.stop();
        let prefix = std::mem::take(&mut self.prefix);
        teardown(&prefix)?;
        Ok(stats)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        // Stop the threads first: their sockets live in the wire namespace.
        self.forwarder = None;
        if self.prefix.is_empty() {
            return;
        }
        if let Err(e) = teardown(&self.prefix) {
            eprintln!("warning: p2p-wan teardown of {} failed: {e:#}", self.prefix);
        }
    }
}
