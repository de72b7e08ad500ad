//! The NAT lab tests: the real `p2p-transfer` binary in Linux network namespaces, behind
//! nftables NAT routers, asking a real coturn; and LAN discovery between two hosts on one
//! bridge. They need root, iproute2, nftables and coturn: without them they print
//! `SKIPPED` and pass, except under CI (`CI=true`), where they fail. `loopback` runs the
//! discovery path on this host's loopback and needs nothing.
//!
//! `natlab.sh` builds the networks (see `docs/natlab.md`); `lab` is its Rust handle.

#[path = "../common/mod.rs"]
mod common;
mod lab;

mod lan;
mod loopback;
mod nat;
mod portmap;
mod punch;
mod swarm;
mod traversal;
mod wan;
