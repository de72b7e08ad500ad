#!/usr/bin/env python3
"""Reproducible loopback throughput benchmark for p2p-transfer.

Runs the release binary on 127.0.0.1 only, over two data sets that it generates itself
(one big random file, and a folder of many small random files), with several window
sizes, and measures in the same run what this machine can do at best on the same data:

* a plain TCP copy over loopback into /dev/null (Python, socket.sendfile / recv_into);
* a plain local copy (`cp -r`) onto the same output disk, twice: into the page cache (the
  time `cp` takes), and on disk (`cp` followed by `sync -f` of the output file system).

Every tool that writes files is timed both ways in the same run: until it exits (page
cache), and until a `sync -f` of the output file system, started as soon as it exits, has
returned (on disk). None of them fsyncs its files itself.

With --compare it also runs scp and rsync over a local sshd, and magic-wormhole with its
own local mailbox server and transit relay; it installs and starts these itself and stops
every server it started at the end, even on error.

Unless --skip-resilience is given, it also measures two things that are not throughput:
how close `send --max-speed` 5M, 20M and 50M come to the asked rate over a 10-second
transfer, and how many bytes a `resume` sends again after the sender of a 256 MiB transfer
got SIGINT at 50% (through a counting TCP proxy on 127.0.0.1, in this script's threads).

p2p-transfer runs as between two machines: every connection is TLS 1.3 with device keys
(issue 11), and the sender and the receiver get separate data folders (WORKDIR/
p2p-data-send, WORKDIR/p2p-data-receive: two device keys, neither trusting the other), so
each run pairs them with a fresh one-time code (`receive --code C`, `send --code C`:
SPAKE2). A binary whose `receive --help` does not mention --code (a build before issue
11, e.g. a --baseline-binary) runs without codes.

Unless --skip-setup is given, it also measures session set-up: a 1-byte `send` to a
receiver that is already listening, 20 times each, timed from the sender's start to its
exit, with a code (two data folders), without one (one shared data folder: the same
device, TLS without the code exchange), with --baseline-binary also with that binary, and
the bare start of the process (`--version`). --setup measures that alone (written to
docs/benchmarks-security.md).

Every figure is reported in MiB/s and as a ratio to the limits measured in the same run:
on-disk rates to the on-disk local copy, page-cache rates to the page-cache local copy.
The results are printed and written to docs/benchmarks.md (see --output).

With --slow-link it measures slow links instead, and nothing else (written to
docs/benchmarks-slow-link.md): a 24 MiB `send` through a "shaped link" (a TCP proxy on
127.0.0.1, in this script's threads, that forwards each direction through a token bucket
at --link-rate Mbit/s and --link-rtt/2 ms later, with small socket buffers so that the
rate really limits; default 3 Mbit/s, 40 ms), plain TCP through the same link as its
ceiling, a 20 MiB `send --max-speed 512K` on plain loopback, with --compare rsync over ssh
through the same link, and with --baseline-binary the same p2p-transfer runs with another
binary, for a before/after in one run.

With --wan PROFILE (issue 12) it measures across the project's WAN emulator instead, and
nothing else (written to docs/benchmarks-wan.md): `p2p-wan up --profile PROFILE` (tests/wan;
built with cargo build --release -p p2p-wan if missing) makes two network namespaces joined
through a user-space link with the profile's rate, delay and random loss; every receiver
and server (p2p-transfer receive, sshd, the magic-wormhole mailbox and transit relay, the
iperf3 server) runs in the second, every sender and client in the first. Rows, for a
--wan-size random file (200 MiB) and the small files, under the OS's TCP BBR and then
Cubic (set in both namespaces): p2p-transfer --transport quic and --transport tcp (a
binary without --transport: TCP only, QUIC rows "not available"), scp, rsync over ssh,
magic-wormhole; each with seconds, MiB/s, fraction of the link, SHA-256 check, exit codes
and the emulator's counters for that run; a run still going after --wan-timeout is
killed and reported with the bytes that had arrived. Then (unless --no-wan-share) a share
test: p2p-transfer and one `iperf3 -C cubic` flow on the same link for --share-seconds.
The issue's targets are computed from the same run. --wan-smoke is a quick manual check:
8 MiB over `lossy`, p2p-transfer only, verified, printed. Namespaces, servers and the
emulator are torn down at the end, on Ctrl+C and on errors.

With --relay PROFILE (issue 13) it measures what the TURN relay costs, and nothing else
(written to docs/benchmarks-relay.md): per profile, the emulated link h1 <-> h2, coturn
(use-auth-secret) and `p2p-transfer rendezvous --turn` in h2, and the --size file (200 MiB)
sent from h1 (`send --rendezvous --json`) to h2 (`receive CODE --rendezvous --json`),
directly (P2P_PATH=direct on both sides) and through coturn (P2P_PATH=relay), --repeat
times each (default 3, alternating), under each --relay-cc (default bbr,cubic). Rows: MiB/s
by wall time and by the receiver's `done` rate, the path events, CPU of both ends, coturn
and the emulator; relay/direct ratios against the 80% target.

Typical use:

    python3 benchmark.py                                   # full data sets, no comparison
    python3 benchmark.py --compare                         # with scp, rsync, magic-wormhole
    python3 benchmark.py --big-size 64M --small-count 300 --windows 1,16 --output /tmp/b.md
    python3 benchmark.py --skip-big --skip-small --output /tmp/r.md  # throttle, resume, set-up
    python3 benchmark.py --slow-link --compare --baseline-binary OLD/target/release/p2p-transfer
    python3 benchmark.py --setup --baseline-binary OLD/target/release/p2p-transfer
    python3 benchmark.py --wan intercontinental,lossy,satellite,dsl  # docs/benchmarks-wan.md
    python3 benchmark.py --wan lossy --skip-small --wan-timeout 120 --share-seconds 20
    python3 benchmark.py --wan-smoke
    python3 benchmark.py --relay intercontinental,lossy,dsl   # docs/benchmarks-relay.md

Python 3.11, standard library only. Linux only (pidfd_open, wait4, /proc); --wan needs
root (ip netns, sysctl) and iperf3 for the share test.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import hashlib
import json
import math
import os
import platform
import random
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
REPO = Path(__file__).resolve().parent
DEFAULT_BINARY = REPO / "target" / "release" / "p2p-transfer"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
DEFAULT_SLOW_OUTPUT = REPO / "docs" / "benchmarks-slow-link.md"
DEFAULT_SETUP_OUTPUT = REPO / "docs" / "benchmarks-security.md"
DEFAULT_WAN_OUTPUT = REPO / "docs" / "benchmarks-wan.md"
DEFAULT_SWARM_OUTPUT = REPO / "docs" / "benchmarks-swarm.md"
DEFAULT_CHUNK = 1 * MiB  # p2p-transfer's default chunk size (p2p-core config.rs)
LOOPBACK = "127.0.0.1"
LISTEN_RE = re.compile(r"listening on (\S+)")
SMALL_SEED = 20240601
CONGESTION_SYSCTL = Path("/proc/sys/net/ipv4/tcp_congestion_control")
WORMHOLE_PACKAGES = ["magic-wormhole", "magic-wormhole-mailbox-server",
                     "magic-wormhole-transit-relay"]


class BenchError(Exception):
    """A measurement could not be made."""


class TotalTimeout(BaseException):
    """The whole script ran past --total-timeout."""


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'1G', '64M', '512KiB', '1000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M or 1G)")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    value = int(float(m.group(1)) * factor)
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def parse_wan_profiles(text: str) -> list[str]:
    """'lossy,dsl' -> ['lossy', 'dsl'] (names of WAN_PROFILES)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in WAN_PROFILES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown WAN profile {', '.join(unknown) or repr(text)} (known: "
            f"{', '.join(WAN_PROFILES)})")
    return names


def parse_windows(text: str) -> list[int]:
    try:
        windows = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not windows or any(w < 1 for w in windows):
        raise argparse.ArgumentTypeError("window sizes must be >= 1")
    return windows


def human_size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            value = n / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: "Child | None" = None,
                  expect: bytes | None = None) -> None:
    """Waits until 127.0.0.1:port accepts a connection (and, if given, sends `expect`)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.exited():
            raise BenchError(f"{proc.name} exited before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                if expect is None or s.recv(64).startswith(expect):
                    return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise BenchError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f}s ({last})")


def tail(path: Path, lines: int = 20) -> str:
    try:
        data = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:]) or "(empty)"


def run_quiet(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Runs a short helper command to completion, capturing its output."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, **kw)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def drop_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# --------------------------------------------------------------------------------------
# Processes
#
# Peak RSS comes from wait4() on each measured process. A process started directly by this
# (Python, tens of MiB) script would report at least the script's own RSS: Linux carries the
# high-water mark of the memory image that exec() replaces into ru_maxrss. So each child is
# started by a tiny `sh` that forks it in the background and exits at once; this script is
# a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so the orphan becomes its child and is
# reaped here with its own, clean, rusage. Each child runs in its own process group (that of
# the sh), so it and everything it starts can be killed at the end, whatever happens.
# --------------------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
# Runs "$@" in the background with stdin from /dev/null, writes its PID to fd 0 (a pipe).
# `exec echo`: the external echo replaces the shell, which so never reaps the child. With
# the builtin echo, dash reaped a child that exits within a millisecond or so (`true`,
# `--version`) about one time in ten before this script could (pidfd_open: ESRCH).
LAUNCHER = '"$@" </dev/null & exec echo $! >&0'


def become_subreaper() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@dataclass
class Child:
    name: str
    pid: int
    pgid: int
    out: Path
    err: Path
    returncode: int | None = None  # set once reaped

    def exited(self) -> bool:
        """True once the process has exited (without reaping it: its rusage stays)."""
        if self.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0


@dataclass
class Exit:
    name: str
    returncode: int | None  # None: killed by us after the timeout
    maxrss_kib: int
    cpu_seconds: float  # user + system
    end: float  # time.perf_counter() when the process was seen to exit
    timed_out: bool
    out: Path
    err: Path


class Processes:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(self, name: str, argv: list, *, cwd: Path | None = None,
              env: dict | None = None) -> Child:
        """Starts argv with stdout/stderr redirected to <log_dir>/<name>.out/.err."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.log_dir / f"{name}.out"
        err_path = self.log_dir / f"{name}.err"
        r, w = os.pipe()
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                sh = subprocess.Popen(["/bin/sh", "-c", LAUNCHER, "sh", *map(str, argv)],
                                      stdin=w, stdout=out, stderr=err, cwd=cwd, env=env,
                                      start_new_session=True)
            os.close(w)
            w = -1
            with os.fdopen(r, "rb") as pipe:
                r = -1
                text = pipe.read().decode().strip()
            sh.wait(timeout=30)
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
        if not text.isdigit():
            raise BenchError(f"could not start {argv[0]}: {tail(err_path)}")
        child = Child(name, int(text), sh.pid, out_path, err_path)
        self.started.append(child)
        return child

    @staticmethod
    def kill_group(child: Child, sig: int = signal.SIGKILL) -> None:
        """Signals the child's process group: the child and whatever it started.

        While the child is not reaped, its group id cannot have been reused, so killpg is
        safe. Once it is reaped, only the group's members that descend from this script
        are signalled, one by one, so that a reused group id never hits someone else.
        """
        try:
            if child.returncode is None:
                os.killpg(child.pgid, sig)
                return
        except (ProcessLookupError, PermissionError):
            return
        for pid in our_group_members(child.pgid):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, children: list[Child], timeout: float) -> dict[str, Exit]:
        """Waits for all children to exit, reaping each with os.wait4 for its own peak RSS.

        A child still running after `timeout` seconds is killed (with its group) and
        reported with timed_out=True.
        """
        deadline = time.monotonic() + timeout
        fds: dict[int, Child] = {}
        results: dict[str, Exit] = {}
        timed_out = False
        try:
            for c in children:
                if c.returncode is not None:
                    raise BenchError(f"{c.name} was already reaped")
                fds[os.pidfd_open(c.pid)] = c
            while fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not timed_out:
                    timed_out = True
                    for c in fds.values():
                        self.kill_group(c)
                    deadline = time.monotonic() + 30  # reaping after SIGKILL
                    continue
                if remaining <= 0:
                    raise BenchError("processes did not die after SIGKILL")
                ready, _, _ = select.select(list(fds), [], [], min(remaining, 1.0))
                for fd in ready:
                    c = fds.pop(fd)
                    os.close(fd)
                    _, status, usage = os.wait4(c.pid, 0)
                    end = time.perf_counter()
                    c.returncode = os.waitstatus_to_exitcode(status)
                    results[c.name] = Exit(c.name, None if timed_out else c.returncode,
                                           usage.ru_maxrss, usage.ru_utime + usage.ru_stime,
                                           end, timed_out, c.out, c.err)
                    self.kill_group(c)  # helpers it may have left behind
        finally:
            for fd in fds:
                os.close(fd)
            reap_strays(self.started)
        return results

    def stop(self, child: Child, grace: float = 3.0) -> None:
        """Stops a child's process group: SIGTERM, then SIGKILL after `grace` seconds."""
        if child.returncode is None:
            self.kill_group(child, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not child.exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill_group(child, signal.SIGKILL)
        if child.returncode is None:
            try:
                _, status = os.waitpid(child.pid, 0)
                child.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                child.returncode = -1
        reap_strays(self.started)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            self.stop(child, grace=2.0)


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, pgrp) for every process, from /proc/PID/stat."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def our_group_members(pgid: int) -> list[int]:
    """Live members of process group `pgid` that descend from this script."""
    table = _proc_table()
    me = os.getpid()
    members = []
    for pid, (state, _, pgrp) in table.items():
        if pgrp != pgid or state == "Z":
            continue
        p, hops = pid, 0
        while p in table and p != me and p > 1 and hops < 64:
            p, hops = table[p][1], hops + 1
        if p == me:
            members.append(pid)
    return members


def reap_strays(tracked: list[Child]) -> None:
    """Reaps zombie orphans handed to this subreaper that nobody waits for."""
    keep = {c.pid for c in tracked if c.returncode is None}
    me = os.getpid()
    for pid, (state, ppid, _) in _proc_table().items():
        if state == "Z" and ppid == me and pid not in keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


# --------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------

@dataclass
class Dataset:
    key: str            # "big" / "small"
    label: str          # for tables
    path: Path          # what is sent: a file or a folder
    hashes: dict[str, str]  # path relative to path.parent -> sha256
    total_bytes: int
    files: int


def _write_random(path: Path, size: int, block: int = 4 * MiB) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def _load_meta(meta_path: Path, params: dict, root: Path) -> dict | None:
    """Returns the cached metadata if it was made with `params` and the files still match."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("params") != params:
        return None
    for rel, (size, mtime_ns) in meta["stat"].items():
        try:
            st = (root / rel).stat()
        except OSError:
            return None
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None
    return meta


def _save_meta(meta_path: Path, params: dict, root: Path, rels: list[str]) -> dict:
    stat = {}
    hashes = {}
    for rel in rels:
        st = (root / rel).stat()
        stat[rel] = (st.st_size, st.st_mtime_ns)
        hashes[rel] = sha256_file(root / rel)
    meta = {"params": params, "stat": stat, "hashes": hashes}
    meta_path.write_text(json.dumps(meta))
    return meta


def make_random_file(data_dir: Path, key: str, size: int, kind: str = "random-file") -> Dataset:
    """One file `<key>.bin` of `size` random bytes, reused if an identical one is there."""
    data_dir.mkdir(parents=True, exist_ok=True)
    name = f"{key}.bin"
    path = data_dir / name
    params = {"kind": kind, "size": size}
    meta = _load_meta(data_dir / f"{key}.meta.json", params, data_dir)
    if meta is None:
        print(f"generating {path} ({human_size(size)} random bytes)…", flush=True)
        _write_random(path, size)
        meta = _save_meta(data_dir / f"{key}.meta.json", params, data_dir, [name])
    else:
        print(f"reusing {path}", flush=True)
    return Dataset(key, f"1 file, {human_size(size)}", path, meta["hashes"], size, 1)


def make_big_dataset(data_dir: Path, size: int) -> Dataset:
    """One file of `size` random bytes, reused if an identical one is already there."""
    return make_random_file(data_dir, "big", size, kind="big")


def make_small_dataset(data_dir: Path, count: int) -> Dataset:
    """`count` files of 1–64 KiB random bytes in a few nested folders under small/."""
    data_dir.mkdir(parents=True, exist_ok=True)
    root = data_dir / "small"
    params = {"kind": "small", "count": count, "seed": SMALL_SEED}
    meta = _load_meta(data_dir / "small.meta.json", params, data_dir)
    if meta is None:
        print(f"generating {root} ({count} files of 1–64 KiB)…", flush=True)
        drop_tree(root)
        rng = random.Random(SMALL_SEED)
        rels = []
        for i in range(count):
            top = f"d{i % 5}"
            if i % 10 == 0:
                rel = f"small/{top}/f{i:05d}.bin"
            else:
                rel = f"small/{top}/e{(i // 5) % 4}/g{(i // 20) % 2}/f{i:05d}.bin"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            size = rng.randint(1024, 64 * 1024)
            (data_dir / rel).write_bytes(os.urandom(size))
            rels.append(rel)
        meta = _save_meta(data_dir / "small.meta.json", params, data_dir, rels)
    else:
        print(f"reusing {root}", flush=True)
    total = sum(size for size, _ in meta["stat"].values())
    return Dataset("small", f"{count} files, 1–64 KiB ({human_size(total)})", root,
                   meta["hashes"], total, count)


def verify_output(ds: Dataset, out_dir: Path) -> tuple[list[str], list[str]]:
    """Compares every received file's SHA-256 with the source.

    Returns (errors, extras): missing or differing files, and files that should not be there.
    """
    errors = []
    for rel, digest in ds.hashes.items():
        target = out_dir / rel
        if not target.is_file():
            errors.append(f"missing: {rel}")
        elif (got := sha256_file(target)) != digest:
            errors.append(f"SHA-256 differs: {rel} (got {got[:16]}…, want {digest[:16]}…)")
    extras = []
    for dirpath, _, filenames in os.walk(out_dir):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), out_dir)
            if rel not in ds.hashes:
                extras.append(rel)
    return errors, sorted(extras)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

@dataclass
class Result:
    tool: str                 # row label, e.g. "p2p-transfer w=16"
    kind: str                 # "p2p", "limit-cache", "limit-disk", "limit-tcp", "compare"
    dataset: str              # "big" / "small"
    seconds: list[float] = field(default_factory=list)       # until the tool exited
    disk_seconds: list[float] = field(default_factory=list)  # … and `sync -f` returned
    sender_rss_kib: list[int] = field(default_factory=list)
    receiver_rss_kib: list[int] = field(default_factory=list)
    sender_cpu: list[float] = field(default_factory=list)
    receiver_cpu: list[float] = field(default_factory=list)
    window: int | None = None
    status: str = "ok"        # "ok", "FAILED: …", "unavailable: …"

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.seconds or self.disk_seconds)

    def median_seconds(self, on_disk: bool = False) -> float | None:
        values = self.disk_seconds if on_disk else self.seconds
        return statistics.median(values) if self.ok and values else None

    def mibps(self, total_bytes: int, on_disk: bool = False) -> float | None:
        """Median rate into the page cache, or (on_disk) until the data was on disk."""
        seconds = self.median_seconds(on_disk)
        return total_bytes / MiB / seconds if seconds else None

    def peak(self, side: str) -> float | None:
        values = self.sender_rss_kib if side == "sender" else self.receiver_rss_kib
        return max(values) / 1024 if values else None

    def cpu(self, side: str) -> float | None:
        values = self.sender_cpu if side == "sender" else self.receiver_cpu
        return statistics.median(values) if values else None


class Context:
    """Everything one benchmark run shares."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.out_dir = workdir / "out"
        self.log_dir = workdir / "logs"
        drop_tree(self.log_dir)  # logs of an earlier run in the same workdir
        # Outputs of an earlier run that stopped early stay in WORKDIR/trash until the end
        # of this one (see clear_output): deleting them now would slow the first runs.
        self.procs = Processes(self.log_dir)
        self.run_counter = 0
        self.wormhole_runs = 0
        self.failures: list[str] = []
        self.warnings: list[str] = []
        self.codes_used = 0                      # one-time codes handed out (next_code)
        self.code_support: dict[str, bool] = {}  # binary -> knows --code (supports_code)

    def log_name(self, label: str) -> str:
        self.run_counter += 1
        return f"{self.run_counter:03d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label)

    def fresh_output(self) -> Path:
        """An empty output dir on the same disk as the data, with earlier writes flushed."""
        self.clear_output()
        self.out_dir.mkdir(parents=True)
        os.sync()  # so that writeback from an earlier run does not land in this one
        return self.out_dir

    def clear_output(self) -> None:
        """Moves the last output out of the way. A tree of many files is only renamed
        into `WORKDIR/trash`, emptied at the end of the benchmark: on ext4, creating files
        within a minute or so of deleting thousands makes each create look for a
        "recently deleted" inode to avoid (kernel `recently_deleted()`), which made the
        next run several times slower (5,000 files: 1.5 s into a fresh folder, 4.8–5.7 s
        right after deleting the previous copy). Single files are deleted at once."""
        if not self.out_dir.exists():
            return
        if sum(len(files) for _, _, files in os.walk(self.out_dir)) <= 1:
            drop_tree(self.out_dir)
            return
        trash = self.workdir / "trash"
        trash.mkdir(exist_ok=True)
        self.out_dir.rename(trash / f"{len(list(trash.iterdir())):04d}")

    def empty_trash(self) -> None:
        drop_tree(self.workdir / "trash")


@dataclass
class Run:
    """What one run of a measurement gives."""
    seconds: float | None       # start → the tool exited (data in the page cache); None: n/a
    disk_seconds: float | None  # start → `sync -f OUT` returned after that; None: n/a
    sender: Exit | None = None  # the Exits give peak RSS and CPU time of the two ends
    receiver: Exit | None = None


def start_clock() -> float:
    """Flushes dirty data of earlier work (untimed), then returns the start time of a run,
    so that only this run's writes are charged to its `sync -f`."""
    os.sync()
    return time.perf_counter()


def sync_output(ctx: Context, out: Path, name: str) -> float:
    """Runs `sync -f OUT` (syncfs of the output's file system: after start_clock, its dirty
    data is this run's output, plus whatever else writes to it meanwhile) and returns the
    time.perf_counter() it finished at."""
    sync = ctx.procs.start(f"{name}-sync", ["sync", "-f", out])
    exits = ctx.procs.wait([sync], ctx.args.timeout)
    check_exits(exits, "sync -f")
    return exits[sync.name].end


def fmt_rate(total_bytes: int, seconds: float | None, what: str) -> str:
    return "" if seconds is None else f"{total_bytes / MiB / seconds:9.1f} MiB/s {what}"


def measure(ctx: Context, result: Result, ds: Dataset, once) -> Result:
    """Runs `once(ctx, ds, out_dir, result, repeat_index)` --repeat times, each with a
    fresh, empty output dir that is deleted afterwards.

    `once` returns a Run or raises BenchError.
    """
    for i in range(ctx.args.repeat):
        try:
            out = ctx.fresh_output()
            run = once(ctx, ds, out, result, i)
        except BenchError as e:
            result.status = f"FAILED: {str(e).splitlines()[0]}"
            print(f"\n!!! {result.tool} / {ds.key}: FAILED\n{e}\n", file=sys.stderr, flush=True)
            ctx.failures.append(f"{result.tool} / {ds.key}: {e}")
            break
        finally:
            ctx.clear_output()
        if run.seconds is not None:
            result.seconds.append(run.seconds)
        if run.disk_seconds is not None:
            result.disk_seconds.append(run.disk_seconds)
        rates = [fmt_rate(ds.total_bytes, run.seconds, "page cache"),
                 fmt_rate(ds.total_bytes, run.disk_seconds, "on disk")]
        extra = ""
        sender, receiver = run.sender, run.receiver
        if sender is not None and receiver is not None:
            result.sender_rss_kib.append(sender.maxrss_kib)
            result.receiver_rss_kib.append(receiver.maxrss_kib)
            result.sender_cpu.append(sender.cpu_seconds)
            result.receiver_cpu.append(receiver.cpu_seconds)
            extra = (f", peak RSS {sender.maxrss_kib / 1024:.1f} / {receiver.maxrss_kib / 1024:.1f}"
                     f" MiB, CPU {sender.cpu_seconds:.2f} / {receiver.cpu_seconds:.2f} s"
                     " (sender / receiver)")
        print(f"  {result.tool:<28} {ds.key:<6} run {i + 1}: "
              f"{', '.join(r for r in rates if r)}{extra}", flush=True)
    return result


def check_exits(exits: dict[str, Exit], what: str) -> None:
    bad = [e for e in exits.values() if e.timed_out or e.returncode != 0]
    if not bad:
        return
    lines = []
    for e in exits.values():
        state = "timed out (killed)" if e.timed_out else f"exit status {e.returncode}"
        lines.append(f"--- {e.name}: {state}\n    stdout ({e.out}):\n"
                     + tail(e.out).replace("\n", "\n      ")
                     + f"\n    stderr ({e.err}):\n" + tail(e.err).replace("\n", "\n      "))
    raise BenchError(f"{what} failed\n" + "\n".join(lines))


def check_output(ctx: Context, ds: Dataset, out: Path, result: Result, what: str) -> None:
    errors, extras = verify_output(ds, out)
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise BenchError(f"{what}: received data does NOT match the source "
                         f"({len(errors)} problems):\n  {shown}{more}")
    if extras:
        note = f"{what}: {len(extras)} unexpected file(s) left in the output, e.g. {extras[:3]}"
        if note not in ctx.warnings:
            print(f"warning: {note}", file=sys.stderr)
            ctx.warnings.append(note)


def wait_listening(proc: Child, timeout: float, expect_host: str = LOOPBACK) -> str:
    """Reads `listening on <ip>:<port>` from a freshly started receiver's stderr (or
    stdout); the address must be on `expect_host` (127.0.0.1, or a WAN emulator host)."""
    deadline = time.monotonic() + timeout
    while True:
        for log in (proc.err, proc.out):
            try:
                m = LISTEN_RE.search(log.read_text(errors="replace"))
            except OSError:
                m = None
            if m:
                addr = m.group(1).rstrip(".,;")
                host = addr.rsplit(":", 1)[0].strip("[]")
                if host != expect_host:
                    raise BenchError(f"receiver listens on {addr}, not on {expect_host}; "
                                     "refusing")
                return addr
        if proc.exited():
            raise BenchError(f"{proc.name} exited before listening\n"
                             f"stderr:\n{tail(proc.err)}")
        if time.monotonic() > deadline:
            raise BenchError(f"receiver printed no 'listening on' line within {timeout:.0f}s\n"
                             f"stderr:\n{tail(proc.err)}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------

def measure_p2p(ctx: Context, ds: Dataset, window: int) -> Result:
    """p2p-transfer receive on 127.0.0.1:0, then send with --window-size `window` (two
    data folders, paired by a fresh code); timed until both exit (page cache) and until
    `sync -f` of the output returns (on disk)."""
    result = Result(f"p2p-transfer w={window}", "p2p", ds.key, window=window)

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"p2p-{ds.key}-w{window}-r{i}")
        binary = str(ctx.args.binary)
        recv, addr, pair = start_receiver(ctx, f"{name}-receive", out)
        send_argv = [binary, "send", ds.path, "--peer", addr, *pair,
                     "--window-size", str(window)]
        if ctx.args.chunk_size:
            send_argv += ["--chunk-size", str(ctx.args.chunk_size)]
        send_argv += ctx.args.send_arg
        t0 = start_clock()
        send = ctx.procs.start(f"{name}-send", send_argv, env=p2p_env(ctx, "send"))
        exits = ctx.procs.wait([send, recv], ctx.args.timeout)
        end = max(e.end for e in exits.values())
        check_exits(exits, f"p2p-transfer (window {window})")
        synced = sync_output(ctx, out, name)
        check_output(ctx, ds, out, result, "p2p-transfer")
        return Run(end - t0, synced - t0, exits[f"{name}-send"], exits[f"{name}-receive"])

    return measure(ctx, result, ds, once)


def measure_cache_copy(ctx: Context, ds: Dataset) -> Result:
    """`cp -r` of the data into the output dir (same disk), timed until cp exits: a copy
    into the page cache (no fsync, like p2p-transfer)."""
    result = Result("local copy (page cache)", "limit-cache", ds.key)

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"cp-{ds.key}-r{i}")
        t0 = start_clock()
        cp = ctx.procs.start(name, ["cp", "-r", ds.path, str(out) + "/"])
        exits = ctx.procs.wait([cp], ctx.args.timeout)
        seconds = exits[name].end - t0
        check_exits(exits, "cp -r")
        check_output(ctx, ds, out, result, "cp -r")
        return Run(seconds, None)

    return measure(ctx, result, ds, once)


def measure_disk_copy(ctx: Context, ds: Dataset) -> Result:
    """`cp -r SRC OUT/ && sync -f OUT`, timed as a whole: a local copy onto the disk, the
    ceiling for any tool that writes the data to this disk."""
    result = Result("local copy (on disk)", "limit-disk", ds.key)

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"cp-sync-{ds.key}-r{i}")
        t0 = start_clock()
        cp = ctx.procs.start(name, ["cp", "-r", ds.path, str(out) + "/"])
        exits = ctx.procs.wait([cp], ctx.args.timeout)
        check_exits(exits, "cp -r")
        synced = sync_output(ctx, out, name)
        check_output(ctx, ds, out, result, "cp -r")
        return Run(None, synced - t0)

    return measure(ctx, result, ds, once)


# The two ends of the TCP limit measurement run as separate, bare Python processes
# (-I -S: no site imports), so that neither shares a GIL or an interpreter with this script.
TCP_SINK = r"""
import socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(600)
print("listening on 127.0.0.1:%d" % srv.getsockname()[1], file=sys.stderr, flush=True)
conn, _ = srv.accept()
conn.settimeout(600)
view = memoryview(bytearray(1 << 20))
total = 0
while True:
    n = conn.recv_into(view)
    if not n:
        break
    total += n
conn.close()
print(total, flush=True)
"""

# argv: ADDR FILE_LIST. Connects, then waits for SIGUSR1 before sending, so that the
# measured time is the data copy alone, not Python's start-up or the connection set-up.
TCP_SOURCE = r"""
import signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
host, port = sys.argv[1].rsplit(":", 1)
if host != "127.0.0.1":
    sys.exit("refusing to connect to " + host)
paths = [p for p in open(sys.argv[2]).read().splitlines() if p]
conn = socket.create_connection((host, int(port)), timeout=600)
print("ready", file=sys.stderr, flush=True)
signal.sigwait({signal.SIGUSR1})
for p in paths:
    with open(p, "rb") as f:
        conn.sendfile(f)
conn.shutdown(socket.SHUT_WR)
conn.recv(1)  # returns when the sink has read everything and closed
conn.close()
"""


def wait_for_line(child: Child, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in child.err.read_text(errors="replace"):
        if child.exited():
            raise BenchError(f"{child.name} exited early:\n{tail(child.err)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not print {needle!r} within {timeout:.0f}s")
        time.sleep(0.005)


def measure_tcp_limit(ctx: Context, ds: Dataset) -> Result:
    """Plain TCP over loopback into /dev/null: sendfile() → recv_into() a reused buffer."""
    result = Result("TCP loopback → /dev/null", "limit-tcp", ds.key)
    file_list = ctx.workdir / f"{ds.key}.files"
    file_list.write_text("\n".join(str(ds.path.parent / rel) for rel in sorted(ds.hashes)) + "\n")
    python = [sys.executable, "-I", "-S", "-c"]

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"tcp-{ds.key}-r{i}")
        sink = ctx.procs.start(f"{name}-sink", python + [TCP_SINK])
        source = None
        try:
            addr = wait_listening(sink, timeout=30)
            source = ctx.procs.start(f"{name}-source", python + [TCP_SOURCE, addr, file_list])
            wait_for_line(source, "ready", timeout=30)
        except BenchError:
            for c in (sink, source):
                if c is not None:
                    ctx.procs.stop(c)
            raise
        t0 = time.perf_counter()
        os.kill(source.pid, signal.SIGUSR1)
        exits = ctx.procs.wait([source, sink], ctx.args.timeout)
        seconds = max(e.end for e in exits.values()) - t0
        check_exits(exits, "TCP copy")
        got = exits[f"{name}-sink"].out.read_text().strip()
        if got != str(ds.total_bytes):
            raise BenchError(f"TCP sink received {got!r} bytes, expected {ds.total_bytes}")
        return Run(seconds, None, exits[f"{name}-source"], exits[f"{name}-sink"])

    return measure(ctx, result, ds, once)


# ---- scp / rsync over a local sshd ---------------------------------------------------

@dataclass
class Sshd:
    port: int
    key: Path
    user: str
    host: str = LOOPBACK

    def ssh_options(self) -> list[str]:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", str(self.key)]


def ensure_apt_packages(packages: dict[str, str]) -> None:
    """Installs the Debian packages whose marker file is missing (nothing if all present)."""
    missing = [pkg for pkg, marker in packages.items() if not Path(marker).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"{', '.join(missing)} not installed and not running as root")
    if not shutil.which("apt-get"):
        raise BenchError(f"{', '.join(missing)} not installed and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-q", *missing]
    print(f"installing {' '.join(missing)} with apt-get…", flush=True)
    try:
        r = run_quiet(argv, timeout=600, env=env)
        if r.returncode != 0:  # maybe the package lists are missing or stale
            run_quiet(["apt-get", "update", "-q"], timeout=600, env=env)
            r = run_quiet(argv, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError("apt-get timed out")
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).strip().splitlines() or ["no output"]
        raise BenchError(f"apt-get install {' '.join(missing)} failed ({lines[-1]})\n"
                         + "\n".join(lines[-10:]))


def start_sshd(ctx: Context, wan: "WanLink | None" = None) -> Sshd:
    """A private sshd on 127.0.0.1:<free port> with generated host and client keys; with
    `wan`, on port 22 of the emulated link's second host (inside its namespace)."""
    ensure_apt_packages({"openssh-server": "/usr/sbin/sshd", "rsync": "/usr/bin/rsync"})
    for tool in ("ssh-keygen", "scp", "ssh", "rsync"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found")
    ssh_dir = ctx.workdir / "ssh"
    ssh_dir.mkdir(exist_ok=True)
    host_key = ssh_dir / "host_ed25519"
    client_key = ssh_dir / "client_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            r = run_quiet(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "p2p-bench",
                           "-f", str(key)], timeout=60)
            if r.returncode != 0:
                raise BenchError(f"ssh-keygen failed: {r.stderr.strip()}")
    os.chmod(client_key, 0o600)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text((client_key.with_suffix(".pub")).read_text())
    host = wan.ip2 if wan else LOOPBACK
    port = WAN_SSH_PORT if wan else free_port()
    config = ssh_dir / "sshd_config"
    config.write_text(f"""\
# generated by benchmark.py; used only for this run
ListenAddress {host}
Port {port}
HostKey {host_key}
PidFile {ssh_dir / 'sshd.pid'}
AuthorizedKeysFile {authorized}
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    argv = ["/usr/sbin/sshd", "-D", "-e", "-p", str(port), "-f", str(config)]
    sshd = ctx.procs.start("sshd", wan.in2(argv) if wan else argv)
    try:
        if wan:  # not reachable from here: sshd says when it listens (-e: on stderr)
            wait_for_line(sshd, "Server listening on", 20)
        else:
            wait_for_port(port, 20, sshd, expect=b"SSH-")
    except BenchError as e:
        raise BenchError(f"sshd did not start: {e}\n{tail(sshd.err)}")
    server = Sshd(port, client_key, getpass.getuser(), host)
    argv = ["ssh", *server.ssh_options(), "-p", str(port), f"{server.user}@{host}", "true"]
    r = run_quiet(wan.in1(argv) if wan else argv, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"cannot log in to the sshd on {host}: {r.stderr.strip()}\n"
                         f"{tail(sshd.err)}")
    print(f"sshd listening on {host}:{port}" + (f" (in {wan.ns2})" if wan else ""), flush=True)
    return server


def measure_scp(ctx: Context, ds: Dataset, sshd: Sshd | None, why: str) -> Result:
    result = Result("scp", "compare", ds.key)
    if sshd is None:
        result.status = f"unavailable: {why}"
        return result

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"scp-{ds.key}-r{i}")
        argv = ["scp", "-q", "-r", *sshd.ssh_options(), "-P", str(sshd.port), ds.path,
                f"{sshd.user}@{LOOPBACK}:{out}/"]
        t0 = start_clock()
        p = ctx.procs.start(name, argv)
        exits = ctx.procs.wait([p], ctx.args.timeout)
        end = exits[name].end
        check_exits(exits, "scp")
        synced = sync_output(ctx, out, name)
        check_output(ctx, ds, out, result, "scp")
        return Run(end - t0, synced - t0)

    return measure(ctx, result, ds, once)


def measure_rsync(ctx: Context, ds: Dataset, sshd: Sshd | None, why: str) -> Result:
    result = Result("rsync -a over ssh", "compare", ds.key)
    if sshd is None:
        result.status = f"unavailable: {why}"
        return result

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        name = ctx.log_name(f"rsync-{ds.key}-r{i}")
        rsh = " ".join(shlex.quote(a) for a in ["ssh", *sshd.ssh_options(), "-p", str(sshd.port)])
        argv = ["rsync", "-a", "-e", rsh, ds.path, f"{sshd.user}@{LOOPBACK}:{out}/"]
        t0 = start_clock()
        p = ctx.procs.start(name, argv)
        exits = ctx.procs.wait([p], ctx.args.timeout)
        end = exits[name].end
        check_exits(exits, "rsync")
        synced = sync_output(ctx, out, name)
        check_output(ctx, ds, out, result, "rsync")
        return Run(end - t0, synced - t0)

    return measure(ctx, result, ds, once)


# ---- magic-wormhole with a local mailbox server and transit relay --------------------

@dataclass
class Wormhole:
    bin_dir: Path
    relay_url: str
    transit: str
    version: str


def _wormhole_bin_dir_ok(bin_dir: Path) -> bool:
    python = bin_dir / "python"
    if not python.exists():
        python = bin_dir / "python3"
    if not ((bin_dir / "wormhole").exists() and (bin_dir / "twist").exists() and python.exists()):
        return False
    r = run_quiet([str(python), "-c", "import wormhole, wormhole_mailbox_server, "
                   "wormhole_transit_relay"], timeout=60)
    return r.returncode == 0


def ensure_wormhole(ctx: Context) -> Path:
    """Returns a bin dir with `wormhole` and `twist` whose Python has all three packages."""
    venv = ctx.workdir / "venv-wormhole"
    for bin_dir in (Path(sys.executable).parent, venv / "bin"):
        if _wormhole_bin_dir_ok(bin_dir):
            return bin_dir
    print(f"installing {' '.join(WORMHOLE_PACKAGES)} into {venv}…", flush=True)
    try:
        if not (venv / "bin" / "python").exists():
            r = run_quiet([sys.executable, "-m", "venv", str(venv)], timeout=300)
            if r.returncode != 0:
                raise BenchError(f"python -m venv failed: {r.stderr.strip()}")
        r = run_quiet([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                       *WORMHOLE_PACKAGES], timeout=900)
    except subprocess.TimeoutExpired:
        raise BenchError("pip install timed out")
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).strip().splitlines() or ["no output"]
        raise BenchError(f"pip install failed ({lines[-1]})\n" + "\n".join(lines[-10:]))
    if not _wormhole_bin_dir_ok(venv / "bin"):
        raise BenchError("magic-wormhole installed, but wormhole/twist are not usable")
    return venv / "bin"


def start_wormhole_servers(ctx: Context, wan: "WanLink | None" = None) -> Wormhole:
    """`twist wormhole-mailbox` and `twist transitrelay`, both on 127.0.0.1 only; with
    `wan`, on the emulated link's second host (inside its namespace)."""
    bin_dir = ensure_wormhole(ctx)
    state = ctx.workdir / "wormhole"
    drop_tree(state)  # the mailbox's database of an earlier run or profile
    state.mkdir()
    host = wan.ip2 if wan else LOOPBACK
    if wan:
        mailbox_port, transit_port = WAN_MAILBOX_PORT, WAN_TRANSIT_PORT
    else:
        mailbox_port, transit_port = free_port(), free_port()
    while transit_port == mailbox_port:
        transit_port = free_port()
    wrap = wan.in2 if wan else (lambda argv: argv)
    mailbox = ctx.procs.start("wormhole-mailbox", wrap([
        bin_dir / "twist", "wormhole-mailbox",
        f"--port=tcp:{mailbox_port}:interface={host}",
        f"--channel-db={state / 'relay.sqlite'}"]), cwd=state)
    relay = ctx.procs.start("wormhole-transit", wrap([
        bin_dir / "twist", "transitrelay",
        f"--port=tcp:{transit_port}:interface={host}"]), cwd=state)
    for proc, port in ((mailbox, mailbox_port), (relay, transit_port)):
        try:
            if wan:
                wan.wait_for_port(port, 30, proc)
            else:
                wait_for_port(port, 30, proc)
        except BenchError as e:
            raise BenchError(f"{proc.name}: {e}\n{tail(proc.out)}\n{tail(proc.err)}")
    r = run_quiet([str(bin_dir / "wormhole"), "--version"], timeout=60)
    version = (r.stdout or r.stderr).strip().splitlines()[-1] if r.returncode == 0 else "?"
    print(f"wormhole mailbox on {host}:{mailbox_port}, transit relay on "
          f"{host}:{transit_port} ({version})" + (f" (in {wan.ns2})" if wan else ""),
          flush=True)
    return Wormhole(bin_dir, f"ws://{host}:{mailbox_port}/v1",
                    f"tcp:{host}:{transit_port}", version)


def start_comparison_servers(ctx: Context, extras: dict, wan: "WanLink | None" = None
                             ) -> tuple["Sshd | None", str, "Wormhole | None", str]:
    """sshd (for scp and rsync) and magic-wormhole's servers, on loopback or in the WAN
    link's far namespace; records their versions in `extras`. A server that cannot start
    is (None, why): its rows say so instead of failing the run."""
    sshd, sshd_why, wh, wh_why = None, "", None, ""
    try:
        sshd = start_sshd(ctx, wan)
        r = run_quiet(["ssh", "-V"], timeout=30)
        extras["OpenSSH"] = (r.stderr or r.stdout).strip()
        r = run_quiet(["rsync", "--version"], timeout=30)
        extras["rsync"] = r.stdout.splitlines()[0] if r.stdout else "?"
    except (BenchError, OSError, subprocess.TimeoutExpired) as e:
        sshd_why = str(e).splitlines()[0]
        print(f"scp/rsync unavailable: {e}", file=sys.stderr, flush=True)
    try:
        wh = start_wormhole_servers(ctx, wan)
        extras["magic-wormhole"] = wh.version
    except (BenchError, OSError, subprocess.TimeoutExpired) as e:
        wh_why = str(e).splitlines()[0]
        print(f"magic-wormhole unavailable: {e}", file=sys.stderr, flush=True)
    return sshd, sshd_why, wh, wh_why


def measure_wormhole(ctx: Context, ds: Dataset, wh: Wormhole | None, why: str) -> Result:
    result = Result("magic-wormhole (via relay)", "compare", ds.key)
    if wh is None:
        result.status = f"unavailable: {why}"
        return result

    def once(ctx: Context, ds: Dataset, out: Path, result: Result, i: int):
        ctx.wormhole_runs += 1
        code = f"{6 + ctx.wormhole_runs}-test-code"
        name = ctx.log_name(f"wormhole-{ds.key}-r{i}")
        # --no-listen on both sides: no direct connection hints (which would name this
        # machine's other addresses); all data goes through the local transit relay.
        common = [wh.bin_dir / "wormhole", "--relay-url", wh.relay_url,
                  "--transit-helper", wh.transit]
        tmp = ctx.workdir / "wormhole-tmp"  # the sender zips folders into TMPDIR
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp))
        recv = ctx.procs.start(f"{name}-receive", [
            *common, "receive", "--accept-file", "--hide-progress", "--no-listen", code],
            cwd=out, env=env)
        time.sleep(0.3)  # let it claim the nameplate; it waits for the sender anyway
        t0 = start_clock()
        send = ctx.procs.start(f"{name}-send", [
            *common, "send", "--code", code, "--hide-progress", "--no-listen", "--no-qr",
            ds.path], env=env)
        exits = ctx.procs.wait([send, recv], ctx.args.timeout)
        end = max(e.end for e in exits.values())
        check_exits(exits, "magic-wormhole")
        synced = sync_output(ctx, out, name)
        check_output(ctx, ds, out, result, "magic-wormhole")
        drop_tree(tmp)
        return Run(end - t0, synced - t0, exits[f"{name}-send"], exits[f"{name}-receive"])

    return measure(ctx, result, ds, once)


# ---- resilience: throttle accuracy, bytes re-sent after an interruption --------------

THROTTLE_RATES = [5, 20, 50]       # MiB/s, each sent for THROTTLE_SECONDS
THROTTLE_SECONDS = 10
THROTTLE_TOLERANCE = 5.0           # ± % (the issue's target)
RESUME_SIZE = 256 * MiB
RESUME_SPEED = 64                  # MiB/s, --max-speed of the interrupted attempt
RESUME_AT = 50.0                   # % the receiver reports when the sender gets SIGINT
DEFAULT_WINDOW = 16                # p2p-transfer's default window (chunks in flight)
SAVE_INTERVAL = 0.25               # s: the receiver saves its resume state every 250 ms…
SAVE_BYTES = 16 * MiB              # …or 16 MiB (p2p-core transfer/disk.rs)
DONE_RE = re.compile(r"done: (\d+) file\(s\), (\d+) bytes in ([\d.]+) s \(([^)]*)\)")
PROGRESS_RE = re.compile(r"progress\s+([\d.]+)%\s+(\d+)/(\d+) bytes")
RESUMING_RE = re.compile(r"resuming: (\d+) bytes already there")


def resume_bound(chunk_size: int) -> tuple[int, str]:
    """Bytes a resume may re-send after a kill, and how that figure is made up."""
    in_flight = DEFAULT_WINDOW * chunk_size
    unsaved = min(SAVE_BYTES, int(RESUME_SPEED * MiB * SAVE_INTERVAL))
    how = (f"window {DEFAULT_WINDOW} × chunk {human_size(chunk_size)} = "
           f"{human_size(in_flight)} in flight, + at most {human_size(unsaved)} written but "
           f"not yet saved (state saved every {SAVE_INTERVAL * 1000:.0f} ms or "
           f"{human_size(SAVE_BYTES)}; {RESUME_SPEED} MiB/s × {SAVE_INTERVAL:g} s = "
           f"{human_size(int(RESUME_SPEED * MiB * SAVE_INTERVAL))})")
    return in_flight + unsaved, how


# Every p2p-transfer process gets a data folder of its own side (P2P_TRANSFER_DATA_DIR:
# device key, trusted devices, history) under WORKDIR, never the user's. The sender and
# the receiver have different ones, so they are two devices with two keys that trust
# nobody: each session is let in by a fresh one-time code (SPAKE2 inside TLS 1.3), as
# between two machines. "shared" is one folder for both ends: one device key, let in as
# the same device without a code (the session set-up measurement uses it for TLS without
# the code exchange).
P2P_DATA_DIRS = {"send": "p2p-data-send", "receive": "p2p-data-receive",
                 "shared": "p2p-data-shared"}


def p2p_data_dir(ctx: "Context", side: str) -> Path:
    """WORKDIR/p2p-data-<side>: the data folder of the sender, the receiver, or both."""
    return ctx.workdir / P2P_DATA_DIRS[side]


def p2p_env(ctx: "Context", side: str) -> dict:
    """The environment of a p2p-transfer process of `side` ("send", "receive", or
    "shared"): its device key and history live in p2p_data_dir(ctx, side)."""
    return dict(os.environ, P2P_TRANSFER_DATA_DIR=str(p2p_data_dir(ctx, side)))


def env_prefix(ctx: "Context", side: str) -> str:
    """`P2P_TRANSFER_DATA_DIR=… ` for the command lines shown in a report."""
    return f"P2P_TRANSFER_DATA_DIR={shlex.quote(str(p2p_data_dir(ctx, side)))} "


def supports_code(ctx: "Context", binary: Path) -> bool:
    """Whether `binary receive --help` mentions `--code` (builds since issue 11: TLS 1.3,
    device keys, one-time codes). Asked once per binary; an older build (e.g. a
    --baseline-binary) runs without codes."""
    key = str(binary)
    if key not in ctx.code_support:
        try:
            r = run_quiet([key, "receive", "--help"], timeout=30)
            ctx.code_support[key] = "--code" in (r.stdout + r.stderr)
        except (OSError, subprocess.TimeoutExpired):
            ctx.code_support[key] = False
    return ctx.code_support[key]


def next_code(ctx: "Context") -> str:
    """A fresh one-time code, `N-bench-runI` (N 1–99, the nameplate): a code is single
    use, so every run gets its own."""
    ctx.codes_used += 1
    return f"{(ctx.codes_used - 1) % 99 + 1}-bench-run{ctx.codes_used}"


def receiver_argv(binary: Path, out: Path, code: str | None = None) -> list:
    argv = [str(binary), "receive", "--output", out, "--port", "0", "--bind", LOOPBACK]
    return argv + (["--code", code] if code else [])


def start_receiver(ctx: "Context", name: str, out: Path, binary: Path | None = None,
                   shared: bool = False) -> tuple[Child, str, list[str]]:
    """Starts `receive --output OUT --port 0 --bind 127.0.0.1` with the receiver's data
    folder and, when the binary knows codes, `--code` with a fresh one; waits for its
    `listening on` line. Returns the child, its address, and what the sender must add to
    pair with it (`["--code", CODE]`, or [] for a binary without codes). With `shared`,
    it uses the data folder shared with the sender and no code (the same device)."""
    binary = binary or ctx.args.binary
    code = next_code(ctx) if supports_code(ctx, binary) and not shared else None
    recv = ctx.procs.start(name, receiver_argv(binary, out, code),
                           env=p2p_env(ctx, "shared" if shared else "receive"))
    try:
        return recv, wait_listening(recv, timeout=30), (["--code", code] if code else [])
    except BenchError:
        ctx.procs.stop(recv)
        raise


@dataclass
class ThrottleRun:
    wall_seconds: float             # start of the sender process → its exit
    reported_seconds: float | None  # the sender's own `done: … in S s`
    reported_line: str | None


@dataclass
class ThrottleResult:
    rate_mib: int
    file_bytes: int
    runs: list[ThrottleRun] = field(default_factory=list)
    status: str = "ok"

    def errors(self, reported: bool = False) -> list[float]:
        """Per run: (achieved rate / asked rate − 1) in %."""
        out = []
        for r in self.runs:
            seconds = r.reported_seconds if reported else r.wall_seconds
            if seconds:
                out.append((self.file_bytes / MiB / seconds / self.rate_mib - 1) * 100)
        return out

    def rate(self, reported: bool = False) -> float | None:
        values = [r.reported_seconds if reported else r.wall_seconds for r in self.runs]
        values = [v for v in values if v]
        return self.file_bytes / MiB / statistics.median(values) if values else None

    def passed(self) -> bool | None:
        errors = self.errors()
        if self.status != "ok" or not errors:
            return None
        return all(abs(e) <= THROTTLE_TOLERANCE for e in errors)


def measure_throttle(ctx: "Context", ds: Dataset, rate_mib: int) -> ThrottleResult:
    """send FILE --max-speed <rate>M: achieved rate = bytes / wall time of the sender."""
    result = ThrottleResult(rate_mib, ds.total_bytes)
    binary = str(ctx.args.binary)
    for i in range(ctx.args.repeat):
        name = ctx.log_name(f"throttle-{rate_mib}M-r{i}")
        try:
            out = ctx.fresh_output()
            recv, addr, pair = start_receiver(ctx, f"{name}-receive", out)
            t0 = start_clock()
            send = ctx.procs.start(f"{name}-send", [
                binary, "send", ds.path, "--peer", addr, *pair, "--max-speed", f"{rate_mib}M"],
                env=p2p_env(ctx, "send"))
            exits = ctx.procs.wait([send, recv], ctx.args.timeout)
            check_exits(exits, f"p2p-transfer --max-speed {rate_mib}M")
            wall = exits[send.name].end - t0
            check_output(ctx, ds, out, Result("throttle", "resilience", ds.key), "throttle")
            m = DONE_RE.search(send.out.read_text(errors="replace"))
            run = ThrottleRun(wall, float(m.group(3)) if m and float(m.group(3)) > 0 else None,
                              m.group(0) if m else None)
            if m is None:
                note = f"throttle {rate_mib}M: no `done:` summary line on the sender's stdout"
                if note not in ctx.warnings:
                    ctx.warnings.append(note)
        except BenchError as e:
            result.status = f"FAILED: {str(e).splitlines()[0]}"
            print(f"\n!!! throttle {rate_mib} MiB/s: FAILED\n{e}\n", file=sys.stderr, flush=True)
            ctx.failures.append(f"throttle {rate_mib} MiB/s: {e}")
            break
        finally:
            ctx.clear_output()
        result.runs.append(run)
        err = result.errors()[-1]
        print(f"  throttle {rate_mib:>3} MiB/s run {i + 1}: "
              f"{ds.total_bytes / MiB / wall:7.2f} MiB/s in {wall:.3f} s ({err:+.2f}%); "
              f"sender says: {run.reported_line or 'n/a'}", flush=True)
    return result


class CountingProxy:
    """A TCP proxy on 127.0.0.1:<free port> that forwards every connection it accepts to
    `self.target` (a 127.0.0.1 host:port that may change between connections) and counts
    the bytes that pass in each direction, per connection. Threads only.

    With `sock_buffer`, every socket of the proxy (the listening one, whose accepted
    sockets inherit it, and each one towards the target, set before it connects) gets
    SO_SNDBUF and SO_RCVBUF of that many bytes, so that what the proxy does not forward
    pushes back on the sender at once instead of vanishing into loopback buffering."""

    def __init__(self, sock_buffer: int | None = None) -> None:
        self.sock_buffer = sock_buffer
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._prepare_socket(self.srv)
        self.srv.bind((LOOPBACK, 0))
        self.srv.listen(8)
        self.addr = f"{LOOPBACK}:{self.srv.getsockname()[1]}"
        self.target: str | None = None
        self.lock = threading.Lock()
        self.connections: list[dict] = []  # {"up": client→server, "down": …, "open": …}
        self.errors: list[str] = []
        self.closed = False
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                         name="proxy-accept")
        self.acceptor.start()

    def set_target(self, addr: str) -> None:
        if addr.rsplit(":", 1)[0] != LOOPBACK:
            raise BenchError(f"proxy target {addr} is not on {LOOPBACK}; refusing")
        self.target = addr

    def _prepare_socket(self, sock: socket.socket) -> None:
        if self.sock_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sock_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.sock_buffer)

    def _connect(self, target: str) -> socket.socket:
        host, port = target.rsplit(":", 1)
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._prepare_socket(server)  # before connect(): the window scale is fixed then
            server.settimeout(10)
            server.connect((host, int(port)))
            server.settimeout(None)
        except OSError:
            server.close()
            raise
        return server

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            if self.closed:
                client.close()
                return
            target = self.target
            try:
                if target is None:
                    raise OSError("no target set")
                server = self._connect(target)
            except OSError as e:
                with self.lock:
                    self.errors.append(f"cannot connect to {target}: {e}")
                client.close()
                continue
            conn = {"up": 0, "down": 0, "open": 2, "socks": (client, server)}
            with self.lock:
                self.connections.append(conn)
            for src, dst, key in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, conn, key),
                                 daemon=True, name=f"proxy-{key}").start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: dict, key: str) -> None:
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        clean = False
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    clean = True
                    break
                with self.lock:
                    conn[key] += n  # counted when read: what the sending end put on the wire
                dst.sendall(view[:n])
        except OSError:
            pass
        try:
            if clean:
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
            else:  # a reset or a dead peer: tear the whole connection down
                for s in conn["socks"]:
                    s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self.lock:
            conn["open"] -= 1
            last = conn["open"] == 0
        if last:
            for s in conn["socks"]:
                s.close()

    def totals(self) -> tuple[int, int, int]:
        """(connections, client→server bytes, server→client bytes) so far."""
        with self.lock:
            return (len(self.connections), sum(c["up"] for c in self.connections),
                    sum(c["down"] for c in self.connections))

    def wait_idle(self, timeout: float = 10) -> None:
        """Waits until every proxied connection has closed both ways."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(c["open"] == 0 for c in self.connections):
                    return
            time.sleep(0.02)

    def close(self) -> None:
        """Stops accepting and tears down every connection. The listening socket is shut
        down before it is closed, which wakes the thread blocked in accept(): a bare close()
        would not, and that thread, woken later, could accept on a new socket that reused
        the descriptor number (another proxy's)."""
        self.closed = True
        try:
            self.srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.acceptor.join(timeout=10)
        try:
            self.srv.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            for s in c["socks"]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@dataclass
class ResumeRun:
    file_bytes: int
    killed_at_pct: float            # what the receiver reported when SIGINT was sent
    killed_at_bytes: int
    wire_first: int                 # client→server bytes through the proxy, 1st attempt
    wire_second: int                # … 2nd attempt
    skipped: int | None             # `resuming: N bytes already there` of the 2nd attempt
    first_exits: str                # "sender 130 / receiver 3"
    resume_hint: bool               # the interrupted sender printed a resume command
    second_seconds: float
    connections: int

    @property
    def wire_total(self) -> int:
        return self.wire_first + self.wire_second

    @property
    def resent(self) -> int:
        return self.wire_total - self.file_bytes


@dataclass
class ResumeResult:
    runs: list[ResumeRun] = field(default_factory=list)
    status: str = "ok"
    bound: int = 0
    bound_how: str = ""

    def passed(self) -> bool | None:
        if self.status != "ok" or not self.runs:
            return None
        return all(r.resent <= self.bound for r in self.runs)


def wait_progress(ctx: "Context", recv: Child, send: Child, pct: float,
                  timeout: float) -> tuple[float, int]:
    """Polls the receiver's plain progress lines until one reports ≥ pct %."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = recv.out.read_text(errors="replace")
        except OSError:
            text = ""
        found = PROGRESS_RE.findall(text)
        if found and float(found[-1][0]) >= pct:
            return float(found[-1][0]), int(found[-1][1])
        if send.exited() or recv.exited():
            raise BenchError(f"the transfer ended before the receiver reported {pct:g}% "
                             f"(last: {found[-1][0] + '%' if found else 'no progress line'})"
                             f"\nsender stderr:\n{tail(send.err)}\n"
                             f"receiver stderr:\n{tail(recv.err)}")
        if time.monotonic() > deadline:
            raise BenchError(f"the receiver did not report {pct:g}% within {timeout:.0f}s")
        time.sleep(0.01)


def measure_resume(ctx: "Context", ds: Dataset, chunk_size: int) -> ResumeResult:
    """resume <new id> through a counting proxy at --max-speed 64M, SIGINT to the sender
    once the receiver reports ≥ 50%, then a new receiver on the same output folder and the
    same resume command unthrottled; counts what crossed the proxy towards the receiver."""
    bound, how = resume_bound(chunk_size)
    result = ResumeResult(bound=bound, bound_how=how)
    binary = str(ctx.args.binary)
    for i in range(ctx.args.repeat):
        name = ctx.log_name(f"resume-r{i}")
        transfer_id = str(uuid.uuid4())
        proxy = CountingProxy()
        send_base = [binary, "resume", transfer_id, "--path", ds.path, "--peer", proxy.addr]
        try:
            out = ctx.fresh_output()
            # 1st attempt: throttled, interrupted at ≥ 50%.
            recv, addr, pair = start_receiver(ctx, f"{name}-1-receive", out)
            proxy.set_target(addr)
            send = ctx.procs.start(f"{name}-1-send",
                                   send_base + pair + ["--max-speed", f"{RESUME_SPEED}M"],
                                   env=p2p_env(ctx, "send"))
            try:
                pct, at_bytes = wait_progress(ctx, recv, send, RESUME_AT, ctx.args.timeout)
                os.kill(send.pid, signal.SIGINT)
            except BaseException:
                for c in (send, recv):
                    ctx.procs.stop(c)
                raise
            e_send = ctx.procs.wait([send], 60)[send.name]
            if e_send.timed_out:
                raise BenchError("after SIGINT, the sender did not exit within 60 s")
            if e_send.returncode == 0:
                raise BenchError("the sender finished before it could be interrupted")
            # Since issue 15 the receiver is told the sender stopped and waits for the
            # resume (keeping what arrived); builds before it exited with 3.
            quiet_until = time.monotonic() + 5
            while not recv.exited() and time.monotonic() < quiet_until:
                time.sleep(0.05)
            waiting = not recv.exited()
            e_recv = None if waiting else ctx.procs.wait([recv], 5)[recv.name]
            proxy.wait_idle()
            _, wire_first, _ = proxy.totals()
            first_exits = (f"sender {e_send.returncode} / receiver "
                           + ("waits" if e_recv is None else str(e_recv.returncode)))
            err_text = send.err.read_text(errors="replace")
            hint_line = next((line.strip() for line in err_text.splitlines()
                              if f" resume {transfer_id}" in line), None)
            hint = hint_line is not None
            recv_code = e_recv.returncode if e_recv else None
            expected = (130, None) if waiting else (130, 3)
            if (e_send.returncode, recv_code) != expected or not hint:
                note = (f"resume run {i + 1}: after SIGINT, {first_exits} (expected 130 / "
                        "waits, or 130 / 3 before issue 15)"
                        + ("" if hint else "; the sender printed no resume command"))
                print(f"warning: {note}", file=sys.stderr)
                ctx.warnings.append(note)
            if waiting:
                # 2nd attempt: the receiver still waiting, the code the sender's resume
                # command names (the follow-up code both sides derived), no throttle.
                words = hint_line.split() if hint_line else []
                follow_up = next((words[k + 1] for k in range(len(words) - 1)
                                  if words[k] == "--code"), None)
                recv2, pair2 = recv, (["--code", follow_up] if follow_up else [])
            else:
                # Older builds: a new receiver on the same folder (and a new code).
                recv2, addr2, pair2 = start_receiver(ctx, f"{name}-2-receive", out)
                proxy.set_target(addr2)
            t0 = time.perf_counter()
            send2 = ctx.procs.start(f"{name}-2-send", send_base + pair2,
                                    env=p2p_env(ctx, "send"))
            # Once one end has exited, the other gets 30 s (not the whole --timeout): a
            # receiver whose sender failed would wait for it for ever.
            deadline = time.monotonic() + ctx.args.timeout
            while (not send2.exited() and not recv2.exited()
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            exits = ctx.procs.wait([send2, recv2],
                                   max(0.0, min(30.0, deadline - time.monotonic())))
            seconds = max(e.end for e in exits.values()) - t0
            try:
                check_exits(exits, "p2p-transfer resume (2nd attempt)")
            except BenchError as e:
                raise BenchError(f"{e}\nproxy: {proxy.totals()[0]} connection(s)"
                                 + (f"; errors: {proxy.errors}" if proxy.errors else ""))
            proxy.wait_idle()
            conns, wire_total, _ = proxy.totals()
            check_output(ctx, ds, out, Result("resume", "resilience", ds.key), "resume")
            m = RESUMING_RE.search(send2.out.read_text(errors="replace"))
            run = ResumeRun(ds.total_bytes, pct, at_bytes, wire_first, wire_total - wire_first,
                            int(m.group(1)) if m else None, first_exits, hint, seconds, conns)
        except BenchError as e:
            result.status = f"FAILED: {str(e).splitlines()[0]}"
            print(f"\n!!! resume after an interruption: FAILED\n{e}\n", file=sys.stderr,
                  flush=True)
            ctx.failures.append(f"resume after an interruption: {e}")
            break
        finally:
            proxy.close()
            ctx.clear_output()
        result.runs.append(run)
        print(f"  resume run {i + 1}: SIGINT at {pct:.1f}% ({first_exits}); on the wire "
              f"{run.wire_first / MiB:.1f} + {run.wire_second / MiB:.1f} MiB = "
              f"{run.wire_total / MiB:.1f} MiB for a {ds.total_bytes / MiB:.0f} MiB file: "
              f"re-sent {run.resent / MiB:.2f} MiB ({run.resent / ds.total_bytes:.1%}); "
              f"2nd attempt skipped "
              f"{'n/a' if run.skipped is None else f'{run.skipped / MiB:.1f} MiB'}, "
              f"took {seconds:.2f} s", flush=True)
    return result


def fmt_mib(n: int | None, spec: str = ".1f") -> str:
    return "n/a" if n is None else f"{n / MiB:{spec}} MiB"


def throttle_rows(results: list[ThrottleResult]) -> list[list[str]]:
    rows = []
    for t in results:
        if t.status != "ok" or not t.runs:
            rows.append([f"{t.rate_mib} MiB/s", human_size(t.file_bytes), t.status,
                         "", "", "", "", ""])
            continue
        errs, rep = t.errors(), t.errors(reported=True)
        worst = max(errs, key=abs)
        rows.append([
            f"{t.rate_mib} MiB/s", human_size(t.file_bytes),
            f"{t.rate():.2f}", f"{statistics.median(errs):+.2f}%",
            f"{worst:+.2f}%",
            f"{t.rate(reported=True):.2f}" if rep else "n/a",
            f"{statistics.median(rep):+.2f}% / {max(rep, key=abs):+.2f}%" if rep else "n/a",
            "**PASS**" if t.passed() else "**FAIL**",
        ])
    return rows


THROTTLE_HEADERS = ["--max-speed", "file", "achieved MiB/s (sender wall time)",
                    "error (median)", "error (worst run)", "sender's own figure MiB/s",
                    "its error median / worst", f"±{THROTTLE_TOLERANCE:g}%"]

RESUME_HEADERS = ["run", "SIGINT when the receiver reported", "sender / receiver exit",
                  "on the wire: 1st + 2nd attempt", "total on the wire", "re-sent",
                  "re-sent % of file", "2nd attempt skipped",
                  "sent in the 1st attempt but not kept", "2nd attempt s", "re-sent ≤ bound"]


def resume_rows(res: ResumeResult) -> list[list[str]]:
    rows = []
    for i, r in enumerate(res.runs, 1):
        rows.append([
            str(i), f"{r.killed_at_pct:.1f}% ({fmt_mib(r.killed_at_bytes)})", r.first_exits,
            f"{fmt_mib(r.wire_first)} + {fmt_mib(r.wire_second)}",
            f"{r.wire_total:,} B ({fmt_mib(r.wire_total)})",
            f"{r.resent:,} B ({fmt_mib(r.resent, '.2f')})",
            f"{r.resent / r.file_bytes:.2%}",
            "n/a" if r.skipped is None else f"{r.skipped:,} B ({fmt_mib(r.skipped)})",
            "n/a" if r.skipped is None else f"{r.wire_first - r.skipped:,} B",
            f"{r.second_seconds:.2f}",
            "**PASS**" if r.resent <= res.bound else "**FAIL**",
        ])
    if res.status != "ok":
        rows.append(["—", res.status] + [""] * (len(RESUME_HEADERS) - 2))
    return rows


def simple_markdown(headers: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(["---"] * left + ["---:"] * (len(headers) - left)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return lines


def resilience_targets(throttle: list[ThrottleResult], resume: ResumeResult | None,
                       resume_ds: Dataset | None) -> list[Target]:
    targets = []
    if throttle:
        measured = [t for t in throttle if t.passed() is not None]
        failed = [t for t in throttle if t.status != "ok"]
        parts = []
        for t in measured:
            worst = max(t.errors(), key=abs)
            rep = t.errors(reported=True)
            parts.append(f"{t.rate_mib} MiB/s: worst {worst:+.2f}%"
                         + (f" (sender's figure {max(rep, key=abs):+.2f}%)" if rep else ""))
        parts += [f"{t.rate_mib} MiB/s: {t.status}" for t in failed]
        verdict = ("FAIL" if failed or any(not t.passed() for t in measured)
                   else "PASS" if measured else "n.a.")
        targets.append(Target(
            f"--max-speed within ±{THROTTLE_TOLERANCE:g}% over a {THROTTLE_SECONDS} s "
            "transfer (bytes / sender wall time)", verdict, "; ".join(parts)))
    if resume is not None:
        name = (f"resume after SIGINT to the sender at ≥ {RESUME_AT:g}% re-sends ≤ window × "
                f"chunk + unsaved data = {human_size(resume.bound)}")
        if resume.passed() is None:
            targets.append(Target(name, "n.a." if resume.status == "ok" else "FAIL",
                                  resume.status))
        else:
            worst = max(resume.runs, key=lambda r: r.resent)
            targets.append(Target(
                name, "PASS" if resume.passed() else "FAIL",
                f"worst of {len(resume.runs)}: {worst.resent:,} B "
                f"({worst.resent / MiB:.2f} MiB) re-sent "
                f"({worst.resent / worst.file_bytes:.2%} of the "
                f"{human_size(worst.file_bytes)} file; SIGINT at {worst.killed_at_pct:.1f}%)"))
    return targets


# ---- session set-up: a one-byte send, with a code, without one, and the baseline -------

SETUP_RUNS = 20                    # timed runs per variant (--setup-runs)
SETUP_TARGET_MS = 100.0            # issue 11: a session with a code, on loopback
SETUP_SIZE = 1                     # bytes of the file sent
SETUP_MODES = {
    "code": "TLS 1.3 + one-time code (SPAKE2); two data folders: two devices",
    "shared": "TLS 1.3, no code; one data folder: the same device",
    "plain": "older build without `--code`; two data folders",
    "start": "`--version` only: process start and exit, no connection",
}


@dataclass
class SetupResult:
    """One variant of the session set-up measurement; ms: the timed runs."""
    binary: Path
    tool: str                      # "p2p-transfer", "p2p-transfer (baseline)"
    mode: str                      # a key of SETUP_MODES
    baseline: bool = False
    commands: list[str] = field(default_factory=list)  # those of the first timed run
    ms: list[float] = field(default_factory=list)
    verified: int = 0              # timed runs whose byte arrived intact (both exits 0)
    control: str = ""              # mode "code": the same sender without a code
    status: str = "ok"

    @property
    def what(self) -> str:
        return SETUP_MODES[self.mode]

    @property
    def short(self) -> str:
        """A few words for the progress lines."""
        return ("--version" if self.mode == "start"
                else f"{'baseline' if self.baseline else 'ours'} {self.mode}")

    def median(self) -> float | None:
        return statistics.median(self.ms) if self.ms else None

    def p90(self) -> float | None:
        """Nearest rank: the time 90% of the runs did not exceed (the 18th of 20)."""
        if not self.ms:
            return None
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def setup_once(ctx: "Context", v: SetupResult, ds: Dataset, i: int) -> float:
    """One run of variant `v` (run 0 is the untimed warm-up); returns its time in ms.

    A receiver is started and its `listening on` line seen first; the clock starts right
    before the sender is launched and stops when the sender has exited (seen through its
    pidfd). Then the receiver must exit 0 and the byte must have arrived intact."""
    name = ctx.log_name(f"setup-{'baseline-' if v.baseline else ''}{v.mode}-r{i}")
    if v.mode == "start":
        argv = [str(v.binary), "--version"]
        t0 = time.perf_counter()
        proc = ctx.procs.start(f"{name}-version", argv)
        exits = ctx.procs.wait([proc], ctx.args.timeout)
        check_exits(exits, f"{v.tool} --version")
        if i == 1:
            v.commands = [shlex.join(argv)]
        return (exits[proc.name].end - t0) * 1000
    shared = v.mode == "shared"
    try:
        out = ctx.fresh_output()
        recv, addr, pair = start_receiver(ctx, f"{name}-receive", out, v.binary, shared)
        argv = [str(v.binary), "send", str(ds.path), "--peer", addr, *pair]
        t0 = time.perf_counter()
        send = ctx.procs.start(f"{name}-send", argv, env=p2p_env(ctx, "shared" if shared
                                                                  else "send"))
        exits = ctx.procs.wait([send], ctx.args.timeout)
        ms = (exits[send.name].end - t0) * 1000
        # The receiver ends after its one transfer; after a failed send it would wait on.
        grace = SLOW_GRACE if exits[send.name].returncode == 0 else 0.5
        exits.update(ctx.procs.wait([recv], grace))
        check_exits(exits, f"{v.tool} session set-up ({v.mode})")
        check_output(ctx, ds, out, Result("setup", "setup", ds.key), "session set-up")
    finally:
        ctx.clear_output()
    if i == 1:
        code = pair[1] if pair else None
        v.commands = [
            env_prefix(ctx, "shared" if shared else "receive")
            + shlex.join(map(str, receiver_argv(v.binary, out, code)))
            + f"    # → listening on {addr}",
            env_prefix(ctx, "shared" if shared else "send") + shlex.join(argv)
            + "    # timed: start → exit"]
    return ms


def setup_control(ctx: "Context", v: SetupResult, ds: Dataset) -> None:
    """The sender of variant `v` ("code") once more, without --code, to a receiver that
    waits for one: it must be refused (exit 8, nothing written). That shows the two data
    folders are two devices that only the code lets in (not "the same device")."""
    name = ctx.log_name(f"setup-{'baseline-' if v.baseline else ''}control")
    recv = None
    try:
        out = ctx.fresh_output()
        recv, addr, _ = start_receiver(ctx, f"{name}-receive", out, v.binary)
        send = ctx.procs.start(f"{name}-send", [str(v.binary), "send", str(ds.path),
                                                "--peer", addr], env=p2p_env(ctx, "send"))
        e = ctx.procs.wait([send], ctx.args.timeout)[send.name]
        written = [f for _, _, files in os.walk(out) for f in files]
    except BenchError as err:
        v.control = f"could not be run: {str(err).splitlines()[0]}"
        ctx.failures.append(f"{v.tool} session set-up, control without a code: {err}")
        return
    finally:
        if recv is not None:
            ctx.procs.stop(recv)
        ctx.clear_output()
    line = last_line(e.err, "error") or "no error line"
    if e.returncode == 0 or e.timed_out or written:
        v.control = (f"NOT refused: exit {fmt_exit(e)}, {len(written)} file(s) written")
        ctx.failures.append(f"{v.tool}: a sender without a code was let in by a receiver "
                            "waiting for one: the two data folders are not two devices")
    else:
        v.control = f"refused: exit {e.returncode}, nothing written (`{line}`)"
        if e.returncode != 8:  # p2p-transfer's exit code for "not let in"
            note = f"{v.tool}: the sender without a code exited {e.returncode}, not 8"
            print(f"warning: {note}", file=sys.stderr)
            ctx.warnings.append(note)


def run_setup(ctx: "Context") -> list[SetupResult]:
    """The session set-up measurement: --setup-runs timed runs of each variant, after one
    warm-up run each; the variants take turns run by run, so that a change in the
    machine's load hits all of them alike. Then the control without a code."""
    args = ctx.args
    ds = make_random_file(ctx.data_dir, "setup-1B", SETUP_SIZE)
    variants = [SetupResult(args.binary, "p2p-transfer", "start")]
    binaries = [(args.binary, "p2p-transfer", False)]
    if args.baseline_binary is not None:
        binaries.append((args.baseline_binary, "p2p-transfer (baseline)", True))
    for binary, tool, baseline in binaries:
        modes = ["code", "shared"] if supports_code(ctx, binary) else ["plain"]
        variants += [SetupResult(binary, tool, m, baseline) for m in modes]
    print(f"\n== session set-up: send of a {human_size(SETUP_SIZE)} file to a listening "
          f"receiver, {args.setup_runs} timed runs per variant (after 1 warm-up)", flush=True)
    for i in range(args.setup_runs + 1):
        figures = []
        for v in variants:
            if v.status != "ok":
                continue
            try:
                ms = setup_once(ctx, v, ds, i)
            except BenchError as e:
                v.status = f"FAILED: {str(e).splitlines()[0]}"
                print(f"\n!!! session set-up, {v.tool}, {v.mode}: FAILED\n{e}\n",
                      file=sys.stderr, flush=True)
                ctx.failures.append(f"session set-up, {v.tool}, {v.mode}: {e}")
                continue
            if i > 0:
                v.ms.append(ms)
                v.verified += v.mode != "start"
            figures.append(f"{v.short} {ms:.1f} ms")
        print(f"  set-up {'warm-up' if i == 0 else f'run {i}'}: {', '.join(figures)}",
              flush=True)
    for v in variants:
        if v.mode == "code" and v.status == "ok":
            setup_control(ctx, v, ds)
            print(f"  control, {v.tool} without --code: {v.control}", flush=True)
    return variants


SETUP_HEADERS = ["binary", "variant", "timed runs", "median ms", "p90 ms", "min ms",
                 "max ms", "let in, exit 0, verified"]


def setup_rows(setups: list[SetupResult]) -> list[list[str]]:
    rows = []
    for v in setups:
        if v.status != "ok" and not v.ms:
            rows.append([v.tool, v.what, v.status, "", "", "", "", ""])
            continue
        rows.append([
            v.tool, v.what, str(len(v.ms)) + ("" if v.status == "ok" else f" ({v.status})"),
            fmt_num(v.median()), fmt_num(v.p90()),
            fmt_num(min(v.ms) if v.ms else None), fmt_num(max(v.ms) if v.ms else None),
            NOT_MEASURED if v.mode == "start" else f"{v.verified} of {len(v.ms)}",
        ])
    return rows


def setup_variant(setups: list[SetupResult], mode: str,
                  baseline: bool = False) -> SetupResult | None:
    return next((v for v in setups if v.mode == mode and v.baseline == baseline and v.ms),
                None)


def setup_differences(setups: list[SetupResult]) -> list[str]:
    """What the code exchange, and the change against the baseline, cost (medians)."""
    code, shared = setup_variant(setups, "code"), setup_variant(setups, "shared")
    start = setup_variant(setups, "start")
    lines = []
    if code and shared:
        lines.append(f"the code exchange (SPAKE2 and its key confirmation) on top of TLS: "
                     f"{code.median() - shared.median():+.1f} ms (median with a code − "
                     f"median without), p90 {code.p90() - shared.p90():+.1f} ms")
    for mode in ("code", "shared", "plain"):
        base = setup_variant(setups, mode, baseline=True)
        if code and base:
            lines.append(f"against the baseline, {base.what}: "
                         f"{code.median() - base.median():+.1f} ms (median with a code − "
                         f"the baseline's median), p90 {code.p90() - base.p90():+.1f} ms")
    if start:
        lines.append(f"of each time, starting and ending a process: median "
                     f"{start.median():.1f} ms (`--version`)")
    return lines


def setup_targets(setups: list[SetupResult]) -> list[Target]:
    name = (f"session set-up with a code ≤ {SETUP_TARGET_MS:g} ms on loopback (median, "
            "sender start → exit, 1-byte file)")
    code = setup_variant(setups, "code")
    failed = [v for v in setups if v.status != "ok" and not v.baseline]
    if code is None:
        why = (failed[0].status if failed else
               "this binary has no --code" if setup_variant(setups, "plain") else "no run")
        return [Target(name, "n.a." if not failed else "FAIL", why)]
    verdict = "PASS" if code.median() <= SETUP_TARGET_MS and not failed else "FAIL"
    detail = (f"median {code.median():.1f} ms, p90 {code.p90():.1f} ms over {len(code.ms)} "
              f"runs; {code.verified} of {len(code.ms)} paired by the code and verified; "
              f"without a code: {code.control or 'not checked'}")
    if failed:
        detail += "; " + "; ".join(f"{v.mode}: {v.status}" for v in failed)
    return [Target(name, verdict, detail)]


def print_setup(setups: list[SetupResult]) -> None:
    """The session set-up table and differences on stdout."""
    rows = setup_rows(setups)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(SETUP_HEADERS)]
    print("\nSession set-up (sender start → exit, ms):")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(SETUP_HEADERS, widths)).rstrip())
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for line in setup_differences(setups):
        print(f"  {line}")
    for v in setups:
        if v.control:
            print(f"  control, {v.tool} without --code: {v.control}")


def setup_report(ctx: "Context", setups: list[SetupResult]) -> list[str]:
    """The 'Session set-up' section: the table, the differences, the exact commands."""
    if not setups:
        return []
    runs = ctx.args.setup_runs
    lines = [
        "## Session set-up",
        "",
        f"How long a `send` of a {human_size(SETUP_SIZE)} file takes to a receiver that "
        "is already listening on 127.0.0.1 (started before, its `listening on` line seen): "
        "from just before the sender process is launched until it has exited (through a "
        "tiny `sh` that starts it, see below: the `--version` row shows what starting and "
        "ending a process costs). That is process start, loading the device key, TCP "
        "connect, the TLS 1.3 handshake, admission (with a code: SPAKE2 and a key "
        "confirmation), the session handshake, the 1-byte transfer and its "
        f"acknowledgement, and the close. {runs} timed runs per variant after one untimed "
        "warm-up run (which also creates the device keys); the variants take turns run "
        "by run; a fresh receiver, output folder and, with a code, code for every run; "
        "after every run both ends must have exited 0 (the sender was let in: by the code, "
        "or as the same device) and the byte must match (SHA-256). "
        f"p90 = nearest rank (the {max(1, math.ceil(0.9 * runs))}th of {runs}). "
        f"Target (issue 11): ≤ {SETUP_TARGET_MS:g} ms with a code on loopback.",
        "",
        *simple_markdown(SETUP_HEADERS, setup_rows(setups), left=2),
        "",
    ]
    diffs = setup_differences(setups)
    if diffs:
        lines += ["Differences (of the medians, and of the p90s):", "",
                  *(f"- {d}" for d in diffs), ""]
    controls = [v for v in setups if v.control]
    if controls:
        lines += ["Control: the same sender without `--code`, to a receiver waiting for a "
                  "code (it must be refused: two devices, neither trusting the other):", ""]
        lines += [f"- {v.tool}: {v.control}" for v in controls]
        lines.append("")
    lines += ["The exact commands of the first timed run of each variant (the port and the "
              "code change with every run; `OUT` is a fresh empty folder, `WORKDIR` the "
              "benchmark's work directory):", ""]
    for v in setups:
        lines += [f"- {v.tool}, {v.what}:", ""]
        if v.commands:
            shown = (c.replace(str(ctx.out_dir), "OUT").replace(str(ctx.workdir), "WORKDIR")
                     for c in v.commands)
            lines += ["  ```sh", *(f"  {c}" for c in shown),
                      "  ```", ""]
        else:
            lines += [f"  (not run: {v.status})", ""]
    return lines


# ---- slow links: a shaped link on 127.0.0.1, and the sender's throttle below 1 MiB/s --

LINK_MBIT = 3.0                    # Mbit/s (10^6 bit/s) each way: the issue's emulated link
LINK_RTT_MS = 40.0                 # ms round trip; half of it is added to each direction
SLOW_SIZE = 24 * MiB               # sent through the shaped link (the issue's file)
SLOW_THROTTLE_SIZE = 20 * MiB      # sent with --max-speed SLOW_THROTTLE_RATE on loopback
SLOW_THROTTLE_RATE = "512K"        # in p2p-transfer's units: 512 KiB/s
SHAPED_SOCKET_BUFFER = 32 * 1024   # SO_SNDBUF / SO_RCVBUF of the link's sockets (the
                                   # kernel doubles it), as in tests/slow_links.rs
SHAPED_MSS = 1460                  # TCP_MAXSEG of the link's sockets: a 1500-byte MTU's
SHAPED_PIECE_SECONDS = 0.005       # the link forwards pieces of about 5 ms of data…
SHAPED_PIECE_MIN = 1024            # …but at least 1 KiB…
SHAPED_PIECE_MAX = 16 * 1024       # …and at most 16 KiB
SHAPED_BURST_PIECES = 4            # credit a direction's bucket keeps, in pieces (about
                                   # 20 ms: a thread that wakes late loses no capacity)
SHAPED_LINE_MIN = 64 * 1024        # bytes a direction's delay line may hold, at least
SLOW_GRACE = 30.0                  # s the other end may take once one end has exited


def sleep_until(when: float) -> None:
    """Sleeps until time.monotonic() reaches `when` (at once if it has)."""
    left = when - time.monotonic()
    if left > 0:
        time.sleep(left)


class LinkBucket:
    """The bottleneck of one direction of a shaped link: a token bucket of `rate` bytes per
    second holding at most `depth` bytes of credit (a few ms: a link does not save up what
    it did not carry). take(n) reserves n bytes and returns the time.monotonic() at which they have
    crossed; reservations queue up behind each other (the bucket goes into debt), so the
    connections that share a direction share its rate. Thread-safe."""

    def __init__(self, rate: float, depth: int) -> None:
        self.rate = rate
        self.depth = depth
        self.tokens = float(depth)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            return now if self.tokens >= 0 else now - self.tokens / self.rate


def shaped_piece(rate: float) -> int:
    """Bytes a shaped link of `rate` bytes/s reads and forwards at a time."""
    return int(min(SHAPED_PIECE_MAX, max(SHAPED_PIECE_MIN, rate * SHAPED_PIECE_SECONDS)))


def shaped_line_limit(rate: float, delay: float) -> int:
    """Bytes one direction of a shaped link holds between its bottleneck and its far end."""
    return max(SHAPED_LINE_MIN, int(2 * rate * delay))


class ShapedLink(CountingProxy):
    """A CountingProxy that behaves like a slow link (the "shaped link"), in this script's
    threads. Each direction (client→server "up", server→client "down") is a bottleneck of
    `rate` bytes per second shared by all the link's connections (a LinkBucket keeping
    SHAPED_BURST_PIECES pieces of credit), followed by a fixed one-way `delay` in seconds:

    * a reader thread per connection and direction reads a piece (about 5 ms of data at the
      rate) only once the previous one has crossed the bottleneck, so the only buffering in
      front of the bottleneck is the link's small socket buffers (SHAPED_SOCKET_BUFFER);
      what else waits, waits in the sender's own socket, as in front of a real slow link;
    * a writer thread forwards each piece `delay` seconds after it crossed, in order, and
      passes a half-close (or a reset) on the same way, as late as the data before it;
    * the delay line between them holds at most max(SHAPED_LINE_MIN, 2 × rate × delay)
      bytes: when the far end stops reading, the writer blocks, the line fills, and the
      reader stops reading too, so the receiver's flow control reaches the sender;
    * its sockets use segments of SHAPED_MSS bytes, as a path with a 1500-byte MTU would.

    The counts (totals()) are the bytes read from each side, as in CountingProxy."""

    def __init__(self, rate: float, delay: float) -> None:
        self.rate = rate
        self.delay = delay
        self.piece = shaped_piece(rate)
        self.line_limit = shaped_line_limit(rate, delay)
        self.buckets = {key: LinkBucket(rate, SHAPED_BURST_PIECES * self.piece)
                        for key in ("up", "down")}
        super().__init__(sock_buffer=SHAPED_SOCKET_BUFFER)

    def _prepare_socket(self, sock: socket.socket) -> None:
        super()._prepare_socket(sock)
        # Segments as on an Ethernet path, not loopback's 64 KiB: the peers' kernels size
        # their socket buffers by segments in flight (2 × cwnd × segment), so loopback's
        # MSS would let a sender queue megabytes in its own socket, seconds at this rate.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SHAPED_MSS)

    def _pump(self, src: socket.socket, dst: socket.socket, conn: dict, key: str) -> None:
        line: list[tuple[float, bytes | str]] = []  # (release time, piece or "eof"/"reset")
        cond = threading.Condition()
        state = {"held": 0, "dead": False}
        writer = threading.Thread(target=self._release, args=(dst, conn, line, cond, state),
                                  daemon=True, name=f"link-{key}-release")
        writer.start()
        bucket = self.buckets[key]
        buf = bytearray(self.piece)
        end = "reset"
        try:
            while True:
                with cond:  # the far end does not read: neither does the link
                    while state["held"] >= self.line_limit and not state["dead"]:
                        cond.wait(1.0)
                    if state["dead"]:
                        break
                n = src.recv_into(buf)
                if not n:
                    end = "eof"
                    break
                with self.lock:
                    conn[key] += n
                crossed = bucket.take(n)
                sleep_until(crossed)  # the next piece is read once this one has crossed
                with cond:
                    line.append((crossed + self.delay, bytes(buf[:n])))
                    state["held"] += n
                    cond.notify_all()
        except OSError:
            pass
        finally:
            with cond:  # after the last piece: release times never go backwards
                line.append((time.monotonic() + self.delay, end))
                cond.notify_all()
        writer.join()
        with self.lock:
            conn["open"] -= 1
            last = conn["open"] == 0
        if last:
            for s in conn["socks"]:
                s.close()

    @staticmethod
    def _release(dst: socket.socket, conn: dict, line: list, cond: threading.Condition,
                 state: dict) -> None:
        while True:
            with cond:
                while not line:  # the reader always ends the line with "eof" or "reset"
                    cond.wait(1.0)
                due, piece = line[0]
            sleep_until(due)
            with cond:
                line.pop(0)
                if isinstance(piece, bytes):
                    state["held"] -= len(piece)
                cond.notify_all()
            try:
                if piece == "eof":
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                    return
                if piece == "reset":
                    raise OSError("the other side broke off")
                dst.sendall(piece)
            except OSError:
                with cond:
                    state["dead"] = True
                    cond.notify_all()
                for s in conn["socks"]:  # a reset or a dead peer: tear the connection down
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return


@dataclass
class LinkSpec:
    mbit: float    # Mbit/s each way
    rtt_ms: float  # round trip added by the link

    @property
    def rate(self) -> float:
        """Bytes per second each way."""
        return self.mbit * 1e6 / 8

    @property
    def mibps(self) -> float:
        return self.rate / MiB

    @property
    def label(self) -> str:
        return f"shaped link {self.mbit:g} Mbit/s, {self.rtt_ms:g} ms RTT"

    def open(self) -> ShapedLink:
        return ShapedLink(self.rate, self.rtt_ms / 2000)


@dataclass
class SlowRun:
    tool: str                      # "p2p-transfer", "p2p-transfer (baseline)", "rsync …"
    link: str                      # the link's label, or "loopback, --max-speed 512K"
    commands: list[str]            # the exact command lines, in the order they started
    file_bytes: int
    exits: str                     # "0 / 0" (sender / receiver), "0" (one process)
    seconds: float | None          # start of the sender → every end exited; None: not run
    done: bool                     # every process exited 0 and the data arrived intact
    verified: str                  # "yes", "NO: …", "n/a …"
    reference: float | None        # MiB/s the run is held against (link rate, asked rate)
    reference_what: str            # "link", "asked"
    note: str = ""
    baseline: bool = False         # its failure is a finding, not a failure of the benchmark

    def mibps(self) -> float | None:
        return self.file_bytes / MiB / self.seconds if self.done and self.seconds else None


def wait_ends(ctx: "Context", children: list[Child], timeout: float) -> dict[str, Exit]:
    """Waits until one of `children` exits (within `timeout` s), then gives the others up
    to SLOW_GRACE s (within the same timeout) before they are killed: a receiver whose
    sender gave up may wait for it for ever."""
    deadline = time.monotonic() + timeout
    while not any(c.exited() for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    return ctx.procs.wait(children, max(1.0, min(SLOW_GRACE, deadline - time.monotonic())))


def fmt_exit(e: Exit) -> str:
    return "killed" if e.timed_out else str(e.returncode)


def last_line(path: Path, prefix: str = "") -> str | None:
    """The last non-empty line of a log (the last one starting with `prefix`, if given)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln and ln.startswith(prefix)]
    return lines[-1] if lines else None


def verify_file(ds: Dataset, out: Path) -> tuple[bool, str]:
    """(intact, what to report) for a one-file data set received into `out`."""
    errors, extras = verify_output(ds, out)
    if not errors:
        return True, "yes" + (f" (and {len(extras)} other file(s) left)" if extras else "")
    target = out / ds.path.name
    if not target.is_file():
        return False, "no: no output file"
    return False, f"NO: {errors[0]}"


def measure_slow_p2p(ctx: "Context", binary: Path, tool: str, ds: Dataset,
                     spec: LinkSpec | None, max_speed: str | None, baseline: bool) -> SlowRun:
    """receive on 127.0.0.1:0, then `send FILE --peer ADDR` through a fresh shaped link
    (`spec`), or straight to the receiver with --max-speed `max_speed` (two data folders,
    a fresh code if the binary knows codes). Time: start of the sender → both ends exited
    (once one has exited, the other gets SLOW_GRACE s)."""
    if spec is not None:
        link_label, reference, ref_what = spec.label, spec.mibps, "link"
    else:
        link_label = f"loopback, --max-speed {max_speed}"
        reference, ref_what = parse_size(max_speed) / MiB, "asked"
    name = ctx.log_name(f"slow-{'baseline' if baseline else 'p2p'}-"
                        f"{'link' if spec else 'throttle'}")
    run = SlowRun(tool, link_label, [], ds.total_bytes, "n/a", None, False, "n/a",
                  reference, ref_what, baseline=baseline)
    link = spec.open() if spec is not None else None
    try:
        out = ctx.fresh_output()
        recv, addr, pair = start_receiver(ctx, f"{name}-receive", out, binary)
        code = pair[1] if pair else None
        run.commands.append(env_prefix(ctx, "receive")
                            + f"{shlex.join(map(str, receiver_argv(binary, out, code)))}"
                            f"    # → listening on {addr}")
        peer = addr
        if link is not None:
            link.set_target(addr)
            peer = link.addr
            run.commands.append(f"# shaped link (this script's threads): {link.addr} → {addr}, "
                                f"{spec.mbit:g} Mbit/s and {spec.rtt_ms / 2:g} ms each way")
        send_argv = [str(binary), "send", str(ds.path), "--peer", peer, *pair]
        if max_speed:
            send_argv += ["--max-speed", max_speed]
        run.commands.append(env_prefix(ctx, "send") + shlex.join(send_argv))
        t0 = start_clock()
        send = ctx.procs.start(f"{name}-send", send_argv, env=p2p_env(ctx, "send"))
        exits = wait_ends(ctx, [send, recv], ctx.args.timeout)
        e_send, e_recv = exits[send.name], exits[recv.name]
        run.seconds = max(e_send.end, e_recv.end) - t0
        run.exits = f"{fmt_exit(e_send)} / {fmt_exit(e_recv)}"
        intact, run.verified = verify_file(ds, out)
        clean = all(e.returncode == 0 and not e.timed_out for e in (e_send, e_recv))
        run.done = clean and intact
        notes = []
        if run.done:
            m = DONE_RE.search(send.out.read_text(errors="replace"))
            notes.append(f"sender: `{m.group(0)}`" if m else "no `done:` line from the sender")
        else:
            for who, child in (("sender", send), ("receiver", recv)):
                line = last_line(child.err, "error") or last_line(child.err)
                if line:
                    notes.append(f"{who}: `{line}`")
            found = PROGRESS_RE.findall(recv.out.read_text(errors="replace"))
            if found:
                notes.append(f"receiver's last progress line: {found[-1][0]}% "
                             f"({int(found[-1][1]) / MiB:.1f} of "
                             f"{int(found[-1][2]) / MiB:.1f} MiB)")
        notes.append(f"sender exited after {e_send.end - t0:.1f} s, receiver after "
                     f"{e_recv.end - t0:.1f} s")
        if link is not None:
            link.wait_idle(5)
            conns, up, down = link.totals()
            notes.append(f"through the link: {up:,} B towards the receiver, {down:,} B "
                         f"back, {conns} connection(s)")
        run.note = "; ".join(notes)
    except BenchError as e:
        run.note = f"could not be run: {str(e).splitlines()[0]}"
        print(f"\n!!! {tool} / {link_label}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"{tool} / {link_label}: {e}")
        return run
    finally:
        if link is not None:
            link.close()
        ctx.clear_output()
    report_slow_run(ctx, run)
    return run


def measure_slow_rsync(ctx: "Context", ds: Dataset, spec: LinkSpec, sshd: Sshd | None,
                       why: str) -> SlowRun:
    """rsync -a over ssh through a fresh shaped link in front of the local sshd."""
    tool = "rsync -a over ssh"
    run = SlowRun(tool, spec.label, [], ds.total_bytes, "n/a", None, False, "n/a",
                  spec.mibps, "link")
    if sshd is None:
        run.note = f"unavailable: {why}"
        return run
    name = ctx.log_name("slow-rsync-link")
    link = spec.open()
    try:
        out = ctx.fresh_output()
        link.set_target(f"{LOOPBACK}:{sshd.port}")
        port = link.addr.rsplit(":", 1)[1]
        rsh = shlex.join(["ssh", *sshd.ssh_options(), "-p", port])
        argv = ["rsync", "-a", "-e", rsh, str(ds.path), f"{sshd.user}@{LOOPBACK}:{out}/"]
        run.commands += [f"# shaped link (this script's threads): {link.addr} → sshd on "
                         f"{LOOPBACK}:{sshd.port}, {spec.mbit:g} Mbit/s and "
                         f"{spec.rtt_ms / 2:g} ms each way", shlex.join(argv)]
        t0 = start_clock()
        p = ctx.procs.start(name, argv)
        exits = ctx.procs.wait([p], ctx.args.timeout)
        e = exits[name]
        run.seconds = e.end - t0
        run.exits = fmt_exit(e)
        intact, run.verified = verify_file(ds, out)
        run.done = e.returncode == 0 and not e.timed_out and intact
        link.wait_idle(5)
        conns, up, down = link.totals()
        notes = [f"through the link: {up:,} B towards sshd, {down:,} B back, "
                 f"{conns} connection(s)"]
        if not run.done and (line := last_line(e.err)):
            notes.insert(0, f"rsync: `{line}`")
        run.note = "; ".join(notes)
    except BenchError as e:
        run.note = f"could not be run: {str(e).splitlines()[0]}"
        print(f"\n!!! {tool} / {spec.label}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"{tool} / {spec.label}: {e}")
        return run
    finally:
        link.close()
        ctx.clear_output()
    report_slow_run(ctx, run)
    return run


def measure_slow_tcp(ctx: "Context", ds: Dataset, spec: LinkSpec) -> SlowRun:
    """The link's own ceiling: a plain TCP copy (TCP_SOURCE → TCP_SINK, as in
    measure_tcp_limit) through a fresh shaped link."""
    tool = "plain TCP → /dev/null"
    run = SlowRun(tool, spec.label, [], ds.total_bytes, "n/a", None, False, "n/a",
                  spec.mibps, "link")
    name = ctx.log_name("slow-tcp-link")
    file_list = ctx.workdir / f"{ds.key}.files"
    file_list.write_text(f"{ds.path}\n")
    python = [sys.executable, "-I", "-S", "-c"]
    link = spec.open()
    sink = source = None
    try:
        sink = ctx.procs.start(f"{name}-sink", python + [TCP_SINK])
        addr = wait_listening(sink, timeout=30)
        link.set_target(addr)
        source = ctx.procs.start(f"{name}-source",
                                 python + [TCP_SOURCE, link.addr, file_list])
        wait_for_line(source, "ready", timeout=30)
        run.commands += [
            f"python3 -I -S -c \"$TCP_SINK\"    # → listening on {addr}",
            f"# shaped link (this script's threads): {link.addr} → {addr}, "
            f"{spec.mbit:g} Mbit/s and {spec.rtt_ms / 2:g} ms each way",
            f"python3 -I -S -c \"$TCP_SOURCE\" {link.addr} {file_list}    # then SIGUSR1: "
            "sendfile() of the file, timed from the signal"]
        t0 = time.perf_counter()
        os.kill(source.pid, signal.SIGUSR1)
        exits = ctx.procs.wait([source, sink], ctx.args.timeout)
        e_source, e_sink = exits[source.name], exits[sink.name]
        run.seconds = max(e_source.end, e_sink.end) - t0
        run.exits = f"{fmt_exit(e_source)} / {fmt_exit(e_sink)}"
        got = e_sink.out.read_text().strip()
        counted = got == str(ds.total_bytes)
        run.verified = (f"n/a: {int(got):,} bytes counted, not kept" if got.isdigit()
                        else "n/a: the sink counted nothing")
        run.done = counted and all(e.returncode == 0 and not e.timed_out
                                   for e in (e_source, e_sink))
        link.wait_idle(5)
        conns, up, down = link.totals()
        run.note = f"through the link: {up:,} B, {conns} connection(s)"
    except BenchError as e:
        for c in (sink, source):
            if c is not None and c.returncode is None:
                ctx.procs.stop(c)
        run.note = f"could not be run: {str(e).splitlines()[0]}"
        print(f"\n!!! {tool} / {spec.label}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"{tool} / {spec.label}: {e}")
        return run
    finally:
        link.close()
    report_slow_run(ctx, run)
    return run


def report_slow_run(ctx: "Context", run: SlowRun) -> None:
    rate = run.mibps()
    what = f"{rate:.3f} MiB/s" if rate is not None else "did not complete"
    print(f"  {run.tool:<26} {run.link}: exit {run.exits}, {fmt_num(run.seconds)} s, "
          f"{what}, verified: {run.verified}", flush=True)
    if not run.done and not run.baseline:  # the baseline's failures are findings
        ctx.failures.append(f"{run.tool} / {run.link}: exit {run.exits} after "
                            f"{fmt_num(run.seconds)} s, verified: {run.verified}")


def run_slow_link(ctx: "Context", spec: LinkSpec) -> list[SlowRun]:
    """The --slow-link section: every measurement once per --repeat, in this order."""
    args = ctx.args
    link_ds = make_random_file(ctx.data_dir, f"slow-{SLOW_SIZE // MiB}M", SLOW_SIZE)
    throttle_ds = make_random_file(ctx.data_dir, f"slow-throttle-{SLOW_THROTTLE_SIZE // MiB}M",
                                   SLOW_THROTTLE_SIZE)
    sshd, why = None, ""
    if args.compare:
        try:
            sshd = start_sshd(ctx)
        except (BenchError, OSError, subprocess.TimeoutExpired) as e:
            why = str(e).splitlines()[0]
            print(f"rsync unavailable: {e}", file=sys.stderr, flush=True)
    binaries = [(args.binary, "p2p-transfer", False)]
    if args.baseline_binary is not None:
        binaries.append((args.baseline_binary, "p2p-transfer (baseline)", True))
    runs: list[SlowRun] = []
    for i in range(args.repeat):
        print(f"\n== slow link: {spec.label}, {link_ds.label}"
              + (f" (run {i + 1} of {args.repeat})" if args.repeat > 1 else ""), flush=True)
        runs.append(measure_slow_tcp(ctx, link_ds, spec))
        for binary, tool, baseline in binaries:
            runs.append(measure_slow_p2p(ctx, binary, tool, link_ds, spec, None, baseline))
        if args.compare:
            runs.append(measure_slow_rsync(ctx, link_ds, spec, sshd, why))
        print(f"\n== loopback, --max-speed {SLOW_THROTTLE_RATE}, {throttle_ds.label}",
              flush=True)
        for binary, tool, baseline in binaries:
            runs.append(measure_slow_p2p(ctx, binary, tool, throttle_ds, None,
                                         SLOW_THROTTLE_RATE, baseline))
    return runs


# --------------------------------------------------------------------------------------
# Machine, congestion control, binary
# --------------------------------------------------------------------------------------

def read_congestion() -> str:
    try:
        return CONGESTION_SYSCTL.read_text().strip()
    except OSError:
        return "unknown"


def set_congestion(wanted: str) -> tuple[str, str | None]:
    """Sets net.ipv4.tcp_congestion_control; returns (value in force, old value to restore)."""
    old = read_congestion()
    if wanted == "default" or wanted == old:
        return old, None
    try:
        CONGESTION_SYSCTL.write_text(wanted + "\n")
    except OSError as e:
        r = None
        if shutil.which("sysctl"):
            r = run_quiet(["sysctl", "-w", f"net.ipv4.tcp_congestion_control={wanted}"],
                          timeout=30)
        if r is None or r.returncode != 0:
            print(f"warning: cannot set tcp_congestion_control={wanted} ({e}); "
                  f"keeping {old}", file=sys.stderr)
            return read_congestion(), None
    now = read_congestion()
    if now != wanted:
        print(f"warning: asked for congestion control {wanted}, got {now}", file=sys.stderr)
    return now, old


def restore_congestion(old: str | None) -> None:
    if old is None:
        return
    try:
        CONGESTION_SYSCTL.write_text(old + "\n")
    except OSError:
        if shutil.which("sysctl"):
            run_quiet(["sysctl", "-w", f"net.ipv4.tcp_congestion_control={old}"], timeout=30)
    if read_congestion() != old:
        print(f"warning: could not restore tcp_congestion_control to {old}", file=sys.stderr)


def machine_info(workdir: Path) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except (OSError, ValueError):
        pass
    fs = "unknown"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(workdir).startswith(mnt) and len(mnt) >= len(best):
                best, fs = mnt, f"{fstype} on {mnt} ({dev})"
    except (OSError, ValueError):
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return {
        "load": load,
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "filesystem": fs,
        "python": platform.python_version(),
    }


def binary_info(binary: Path) -> str:
    parts = []
    try:
        built = datetime.datetime.fromtimestamp(binary.stat().st_mtime).astimezone()
        parts.append(f"built {built.strftime('%Y-%m-%d %H:%M %Z')}")
    except OSError:
        pass
    try:
        r = run_quiet([str(binary), "--version"], timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            parts.append(r.stdout.strip().splitlines()[0])
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        # The work tree the binary was built in (its target/ lies inside it), else this
        # script's. Changes to this script and to docs/ do not change the binary, so they
        # do not count as uncommitted changes here.
        tree = REPO
        r = run_quiet(["git", "-C", str(binary.parent), "rev-parse", "--show-toplevel"],
                      timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            tree = Path(r.stdout.strip())
        r = run_quiet(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], timeout=30)
        if r.returncode == 0:
            commit = r.stdout.strip()
            d = run_quiet(["git", "-C", str(tree), "status", "--porcelain",
                           "--untracked-files=no", "--", ".", ":(exclude)benchmark.py",
                           ":(exclude)docs"], timeout=30)
            if d.returncode == 0 and d.stdout.strip():
                commit += " + uncommitted changes"
            parts.append(f"work tree at commit {commit}"
                         + ("" if tree == REPO else f" ({tree})"))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ", ".join(parts) or "unknown"


def ensure_binary(args: argparse.Namespace) -> None:
    if args.binary.exists():
        return
    if args.binary != DEFAULT_BINARY:
        raise SystemExit(f"error: {args.binary} does not exist")
    print(f"{args.binary} missing: running cargo build --release…", flush=True)
    try:
        r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, stdin=subprocess.DEVNULL,
                           timeout=3600)
    except subprocess.TimeoutExpired:
        raise SystemExit("error: cargo build --release timed out")
    if r.returncode != 0 or not args.binary.exists():
        raise SystemExit("error: cargo build --release failed")


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def fmt_num(value: float | None, spec: str = ".1f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


NOT_MEASURED = "—"  # a figure this row does not measure by design (n/a: could not be measured)


def ratio(ours: float | None, theirs: float | None) -> str:
    return NOT_MEASURED if ours is None or not theirs else f"{ours / theirs:.2f}"


def limit_rate(results: list[Result], ds: Dataset, kind: str, on_disk: bool) -> float | None:
    r = next((r for r in results if r.kind == kind and r.dataset == ds.key), None)
    return r.mibps(ds.total_bytes, on_disk) if r else None


def table_rows(results: list[Result], datasets: dict[str, Dataset]) -> list[list[str]]:
    rows = []
    for key, ds in datasets.items():
        cache_limit = limit_rate(results, ds, "limit-cache", on_disk=False)
        disk_limit = limit_rate(results, ds, "limit-disk", on_disk=True)
        tcp_limit = limit_rate(results, ds, "limit-tcp", on_disk=False)
        for r in (x for x in results if x.dataset == key):
            if not r.ok:
                rows.append([r.tool, key, r.status] + [""] * (len(HEADERS) - 3))
                continue
            rate = r.mibps(ds.total_bytes)
            disk_rate = r.mibps(ds.total_bytes, on_disk=True)
            rows.append([
                r.tool, key,
                fmt_num(rate, missing=NOT_MEASURED),
                fmt_num(disk_rate, missing=NOT_MEASURED),
                ratio(disk_rate, disk_limit),
                ratio(rate, cache_limit),
                ratio(rate, tcp_limit),
                " / ".join(fmt_num(r.median_seconds(d), ".3f", NOT_MEASURED)
                           for d in (False, True)),
                fmt_num(r.peak("sender")),
                fmt_num(r.peak("receiver")),
                (f"{r.cpu('sender'):.2f} / {r.cpu('receiver'):.2f}"
                 if r.cpu("sender") is not None else "n/a"),
            ])
    return rows


HEADERS = ["tool / window", "dataset", "MiB/s page cache", "MiB/s on disk",
           "× local copy (on disk)", "× page-cache copy", "× TCP limit",
           "seconds page cache / on disk", "sender peak RSS MiB", "receiver peak RSS MiB",
           "CPU s sender / receiver"]


def is_status_row(row: list[str]) -> bool:
    return all(c == "" for c in row[3:])


def text_table(rows: list[list[str]]) -> str:
    figures = [r for r in rows if not is_status_row(r)]
    widths = [max([len(h)] + [len(r[i]) for r in (rows if i < 2 else figures)])
              for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        if is_status_row(r):  # a status instead of figures
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2]]))
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADERS) - 2)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    verdict: str  # PASS / FAIL / n.a.
    detail: str


def best_p2p(results: list[Result], ds: Dataset | None,
             on_disk: bool = False) -> tuple[Result | None, float | None]:
    """The p2p-transfer run with the highest rate (page cache, or on disk) on `ds`."""
    if ds is None:
        return None, None
    ok = [r for r in results if r.kind == "p2p" and r.dataset == ds.key
          and r.mibps(ds.total_bytes, on_disk) is not None]
    if not ok:
        return None, None
    best = max(ok, key=lambda r: r.mibps(ds.total_bytes, on_disk))
    return best, best.mibps(ds.total_bytes, on_disk)


def rate_of(results: list[Result], ds: Dataset | None, tool: str,
            on_disk: bool = False) -> float | None:
    if ds is None:
        return None
    r = next((r for r in results if r.tool == tool and r.dataset == ds.key), None)
    return r.mibps(ds.total_bytes, on_disk) if r else None


def versus(ours: float | None, ours_result: Result | None, theirs: float | None,
           theirs_name: str) -> str:
    """'802.5 MiB/s (w=4) vs scp 254.1 MiB/s = 3.16×', or why it cannot be said."""
    if ours is None or theirs is None:
        return "not measured"
    return (f"{ours:.1f} MiB/s (w={ours_result.window}) vs {theirs_name} "
            f"{theirs:.1f} MiB/s = {ours / theirs:.2f}×")


def ratio_target(name: str, ours: float | None, ours_result: Result | None,
                 theirs: float | None, factor: float, theirs_name: str, why_na: str,
                 measure: str, other: str = "") -> Target:
    """PASS if ours ≥ factor × theirs (rates by `measure`); `other` adds the comparison by
    the other measure, for information."""
    if ours is None or theirs is None:
        return Target(name, "n.a.", why_na)
    detail = (f"{measure}: {versus(ours, ours_result, theirs, theirs_name)} "
              f"(need ≥ {factor:g}×)")
    return Target(name, "PASS" if ours >= factor * theirs else "FAIL",
                  detail + (f"; {other}" if other else ""))


def evaluate_targets(results: list[Result], datasets: dict[str, Dataset],
                     chunk_size: int, compare: bool) -> list[Target]:
    """The local-copy target compares on-disk rates (the honest ceiling for a tool that
    writes to disk); the tool-vs-tool and small-vs-big targets compare page-cache rates
    (each tool's own speed), and give the on-disk comparison alongside."""
    big, small = datasets.get("big"), datasets.get("small")
    big_best, big_rate = best_p2p(results, big)
    small_best, small_rate = best_p2p(results, small)
    big_best_d, big_rate_d = best_p2p(results, big, on_disk=True)
    small_best_d, small_rate_d = best_p2p(results, small, on_disk=True)
    targets = []

    big_name = f"{human_size(big.total_bytes)} file" if big else "big file"
    targets.append(ratio_target(
        f"{big_name} ≥ 85% of local copy (on disk)", big_rate_d, big_best_d,
        rate_of(results, big, "local copy (on disk)", on_disk=True), 0.85,
        "local copy (on disk)", "big-file run or on-disk local copy missing", "on disk",
        "page cache, for information: " + versus(
            big_rate, big_best, rate_of(results, big, "local copy (page cache)"),
            "page-cache copy")))
    for ours_name, ds, best, rate, best_d, rate_d, tool, tool_name in (
            (big_name, big, big_best, big_rate, big_best_d, big_rate_d, "scp", "scp"),
            ("small files", small, small_best, small_rate, small_best_d, small_rate_d,
             "rsync -a over ssh", "rsync")):
        targets.append(ratio_target(
            f"{ours_name} ≥ 2× {tool_name} (page cache)", rate, best,
            rate_of(results, ds, tool), 2, tool_name,
            f"{tool_name} not measured (run with --compare)" if not compare
            else f"{tool_name} or {ds.key if ds else ours_name} run missing", "page cache",
            "on disk: " + versus(rate_d, best_d, rate_of(results, ds, tool, on_disk=True),
                                 tool_name)))
    targets.append(ratio_target(
        "small files ≥ 50% of our big-file rate (page cache)", small_rate, small_best,
        big_rate, 0.5, f"our big-file rate (w={big_best.window if big_best else '?'})",
        "needs a successful p2p run on both data sets", "page cache"))

    p2p_runs = [r for r in results if r.kind == "p2p"]
    failed = [f"{r.dataset} w={r.window}" for r in p2p_runs if not r.ok]
    if p2p_runs:
        targets.append(Target(
            "every p2p-transfer run completed and verified", "FAIL" if failed else "PASS",
            f"failed: {', '.join(failed)}" if failed else f"{len(p2p_runs)} of {len(p2p_runs)}"))

    rss_rows = [r for r in results if r.kind == "p2p" and r.ok]
    if not rss_rows:
        targets.append(Target("peak RSS ≤ 64 MiB + window × chunk", "n.a.", "no p2p run"))
    else:
        failures, worst = [], 0.0
        for r in rss_rows:
            limit = 64 + r.window * chunk_size / MiB
            for side in ("sender", "receiver"):
                peak = r.peak(side)
                if peak is None:
                    continue
                worst = max(worst, peak / limit)
                if peak > limit:
                    failures.append(f"{r.dataset} w={r.window} {side} {peak:.1f} MiB > "
                                    f"{limit:.0f} MiB")
        detail = ("; ".join(failures) if failures else
                  f"all {len(rss_rows)} runs within the limit; worst is {worst:.0%} of its limit")
        targets.append(Target(f"peak RSS of each side ≤ 64 MiB + window × "
                              f"{human_size(chunk_size)}", "FAIL" if failures else "PASS",
                              detail))
    return targets


def resilience_report(ctx: Context, throttle: list[ThrottleResult],
                      resume: ResumeResult | None, resume_ds: Dataset | None) -> list[str]:
    """The 'Throttle accuracy' and 'Resume after an interruption' sections."""
    lines: list[str] = []
    code = " --code C" if supports_code(ctx, ctx.args.binary) else ""
    if throttle:
        lines += [
            "## Throttle accuracy (`--max-speed`)",
            "",
            f"For each rate R, a file of R × {THROTTLE_SECONDS} s of random bytes is sent "
            "with the default window and chunk size, each time to a fresh receiver"
            + (" (and a fresh code C)" if code else "") + ":",
            "",
            "```",
            f"p2p-transfer receive --output OUT --port 0 --bind 127.0.0.1{code}",
            f"p2p-transfer send DATA/throttle-<R>M.bin --peer ADDR{code} --max-speed <R>M",
            "```",
            "",
            "Achieved rate = bytes of the file / wall time of the sender process (from its "
            "start to its exit: it includes process start-up, connection set-up and the "
            "handshake). The sender's own figure comes from its summary line on stdout, "
            "`done: 1 file(s), N bytes in S s (R MiB/s)` (N / S here, S being printed to "
            "0.01 s), which leaves out start-up and connection set-up. Error = achieved / "
            f"asked − 1. Target: within ±{THROTTLE_TOLERANCE:g}% over a "
            f"{THROTTLE_SECONDS}-second transfer, in every run (by the wall-time figure); "
            f"{ctx.args.repeat} run(s) per rate, the median time gives the rate.",
            "",
            *simple_markdown(THROTTLE_HEADERS, throttle_rows(throttle), left=2),
            "",
        ]
    if resume is not None:
        size = human_size(resume_ds.total_bytes) if resume_ds else "?"
        lines += [
            "## Resume after an interruption at 50%",
            "",
            f"A {size} random file is sent under a new transfer id (a random UUID; "
            "`resume` with an id the receiver does not know is a first send under that id) "
            "through a counting TCP proxy on 127.0.0.1 (Python threads in the benchmark "
            "script; it counts the bytes going from the sender to the receiver):",
            "",
            "```",
            f"p2p-transfer receive --output OUT --port 0 --bind 127.0.0.1{code}        "
            "# → ADDR; proxy → ADDR",
            f"p2p-transfer resume UUID --path DATA/{resume_ds.path.name if resume_ds else 'FILE'}"
            f" --peer PROXY{code} --max-speed {RESUME_SPEED}M",
            f"# the receiver's progress line reports ≥ {RESUME_AT:g}%: SIGINT to the sender "
            "(expected: exit 130; the receiver is told and waits)",
            f"p2p-transfer resume UUID --path DATA/{resume_ds.path.name if resume_ds else 'FILE'}"
            f" --peer PROXY{code.replace('C', 'F')}                    # no throttle; must exit 0",
            "```",
            *(["", "The 2nd attempt is the command the interrupted sender printed, against the "
               "receiver still waiting: F is the follow-up code both sides derived from the "
               "first session (C is used up). A build from before issue 15, whose receiver "
               "exits with 3, gets a new receiver on the same OUT and a new code instead."]
              if code else []),
            "",
            "The receiver prints a plain progress line about once a second, so the SIGINT "
            f"lands at {RESUME_AT:g}% or up to about one second "
            f"({RESUME_SPEED} MiB) later. Then the received file's SHA-256 is checked. "
            "Re-sent = all bytes on the wire towards the receiver (both attempts, including "
            "protocol framing and the handshakes) − the file size. `2nd attempt skipped` is "
            "the sender's `resuming: N bytes already there`; `sent in the 1st attempt but "
            "not kept` = bytes on the wire in the 1st attempt − that.",
            "",
            f"**Bound: {human_size(resume.bound)}.** The target says that after a kill at "
            "any point, a resume re-sends at most window × chunk size more than the data "
            "that had not yet been made durable. A kill of the receiving process keeps the "
            "page cache, so what the receiver's quick saves (no flush) record counts; after "
            "a power cut only what its flushing saves (every 5 s) record does. With the "
            "defaults, for a kill: "
            f"{resume.bound_how}. Total {human_size(resume.bound)} "
            f"({resume.bound:,} bytes). The 2nd attempt is not interrupted; the bound is "
            f"about what the interrupted 1st attempt, at {RESUME_SPEED} MiB/s, loses.",
            "",
            "Note that SIGINT stops the sender gracefully: the receiver sees the connection "
            "close and, as it stops for a reason that may pass, saves its resume state once "
            "more, synchronously, covering everything it wrote. So what this measures is the "
            "bookkeeping (nothing that arrived should be sent again), not the durability "
            "margin: the bound above is for a hard kill of the receiver (SIGKILL, a crash), "
            "which this benchmark does not do; tests/faults.rs kills it ten times.",
            "",
            *simple_markdown(RESUME_HEADERS, resume_rows(resume), left=3),
            "",
        ]
    return lines


def results_section(rows: list[list[str]]) -> list[str]:
    """The throughput 'Results' section of the main report."""
    return [
        "",
        "## Results",
        "",
        "MiB/s = bytes of the data set / wall time. For p2p-transfer, TCP and magic-wormhole "
        "the time starts with the sender (the receiver is started and listening before); "
        "for `cp`, `scp` and `rsync` with the command. **Page cache**: the time ends when "
        "the tool has exited (both ends); **on disk**: it ends when a `sync -f` of the "
        "output file system, started right after that, has returned, i.e. when the data is "
        "on the disk. `× local copy (on disk)` is the on-disk rate divided by that of "
        "`cp -r` + `sync -f` of the same data in the same run, the ceiling for a tool that "
        "writes to this disk; `× page-cache copy` is the page-cache rate divided by that "
        "of a plain `cp -r` (no sync); `× TCP limit` is the page-cache rate divided by that "
        "of a plain TCP copy over loopback into /dev/null. `—`: not part of this "
        "measurement. `CPU s` is the user + system CPU time of each end (from the same "
        "`wait4()` as the peak RSS): an end whose CPU time is close to the wall time is "
        "bound by one core.",
        "",
        markdown_table(rows),
        "",
    ]


THROUGHPUT_TARGETS_NOTE = (
    "The throughput targets are evaluated on the fastest window measured for each data "
    "set (by the measure the target uses). The local-copy target compares on-disk "
    "rates; the targets against scp and rsync, and small files against big, compare "
    "page-cache rates (each tool's own speed, which the disk would otherwise hide), and "
    "the verdict refers to those; the on-disk comparison is given alongside. The "
    "throttle, resume and session set-up rows refer to those sections above.")


def targets_section(targets: list[Target], note: str = THROUGHPUT_TARGETS_NOTE) -> list[str]:
    """The 'Targets' section: `note`, then one row per target."""
    lines = [
        "## Targets",
        "",
        note,
        "",
        "| target | verdict | evidence |",
        "|---|---|---|",
    ]
    for t in targets:
        lines.append(f"| {t.name} | **{t.verdict}** | {t.detail} |")
    lines.append("")
    return lines


def security_line(ctx: "Context", binary: Path) -> str:
    """How `binary`'s connections are made in this run, for a report's setup lines."""
    if supports_code(ctx, binary):
        return ("encrypted: every connection is TLS 1.3 with a device key on each side; the "
                "sender and the receiver have separate data folders (`WORKDIR/"
                f"{P2P_DATA_DIRS['send']}`, `WORKDIR/{P2P_DATA_DIRS['receive']}`: two "
                "devices, two keys, neither trusting the other) and pair with a fresh "
                "one-time code in every run (`receive --code C`, `send --peer ADDR --code "
                "C`: SPAKE2 inside TLS)")
    return ("without codes: this binary has no `--code` (a build from before issue 11's "
            "TLS 1.3 and one-time codes); it gets the same separate data folders")


def security_baseline_lines(ctx: "Context", setups: list[SetupResult] | None) -> list[str]:
    """The baseline binary's setup line, when the session set-up measurement used one."""
    base = next((v for v in setups or [] if v.baseline), None)
    if base is None:
        return []
    return [f"- **p2p-transfer (baseline, session set-up only):** `{base.binary}` "
            f"({binary_info(base.binary)}); runs {security_line(ctx, base.binary)}"]


def write_report(path: Path, *, command: str, started: datetime.datetime, machine: dict,
                 congestion: str, binary: str, datasets: dict[str, Dataset],
                 results: list[Result], targets: list[Target], ctx: Context,
                 chunk_size: int, extras: dict[str, str],
                 throttle: list[ThrottleResult] | None = None,
                 resume: ResumeResult | None = None,
                 resume_ds: Dataset | None = None,
                 setups: list[SetupResult] | None = None) -> None:
    rows = table_rows(results, datasets)
    code = " --code C" if supports_code(ctx, ctx.args.binary) else ""
    try:
        load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load_end = "unknown"
    lines = [
        "# Benchmarks",
        "",
        "Produced by `benchmark.py`; rerun it to refresh this page (it overwrites it).",
        "",
        f"- **Date:** {started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}, data and output on {machine['filesystem']}; "
        f"load average (1, 5, 15 min) at the start {machine['load']}, at the end "
        f"{load_end} (other work on the machine skews every figure)",
        f"- **net.ipv4.tcp_congestion_control:** {congestion} (this machine defaults to BBR, "
        "most users run Cubic: the same benchmark with `--congestion cubic --output "
        "docs/benchmarks-cubic.md` is in [benchmarks-cubic.md](benchmarks-cubic.md), with "
        "BBR in [benchmarks.md](benchmarks.md))",
        f"- **p2p-transfer:** {binary}; chunk size "
        f"{human_size(chunk_size)}{'' if ctx.args.chunk_size else ' (default)'}"
        + (f"; extra send flags: `{' '.join(ctx.args.send_arg)}`" if ctx.args.send_arg else ""),
        f"- **p2p-transfer runs** {security_line(ctx, ctx.args.binary)}",
        *security_baseline_lines(ctx, setups),
    ]
    for k, v in extras.items():
        lines.append(f"- **{k}:** {v}")
    lines += [
        f"- **Repeats:** {ctx.args.repeat} per measurement; the median time is reported "
        "(of each time separately), and the highest peak RSS"
        + (f"; session set-up: {ctx.args.setup_runs} timed runs per variant" if setups
           else ""),
        "",
    ]
    if datasets:
        lines += ["## Data sets", ""]
    for ds in datasets.values():
        lines.append(f"- **{ds.key}**: {ds.label}, {ds.total_bytes:,} bytes of random "
                     "(incompressible) data")
    if datasets:
        lines += results_section(rows)
    lines += resilience_report(ctx, throttle or [], resume, resume_ds)
    lines += setup_report(ctx, setups or [])
    lines += targets_section(targets)
    lines += [
        "## How it is measured",
        "",
        "- Everything runs on 127.0.0.1. `p2p-transfer receive --output OUT --port 0 --bind "
        f"127.0.0.1{code}` is started first"
        + (" (C: a fresh one-time code for every run)" if code else "")
        + "; its `listening on` line gives the address for "
        f"`p2p-transfer send DATA --peer ADDR{code} --window-size N`.",
        "- Every received file's SHA-256 is compared with the source after every run (after "
        "the timed `sync -f`); a mismatch fails the run. The output is deleted between runs, "
        "and `sync` is run, untimed, just before each run starts.",
        "- Peak RSS is each process's own `ru_maxrss` from `wait4()` on that process (not "
        "the sum over children). Each measured process is forked by a tiny `sh` that exits "
        "at once, and the script, a child subreaper, reaps the orphan: started straight from "
        "the Python script, a process would report at least the script's own RSS, because "
        "Linux carries the peak RSS of the image that `exec()` replaces into `ru_maxrss`. "
        "For scp and rsync only the local client would be measurable (the receiving side is "
        "a child of sshd), so they are reported as n/a.",
        "- Page cache vs on disk: p2p-transfer, like `cp`, `scp` and `rsync`, does not "
        "fsync the files it writes, so when it exits its output may still be only in RAM, "
        "and a copy into the page cache runs at memory speed, far above what the disk "
        "takes. A tool that writes to disk cannot deliver data faster than the disk "
        "accepts it, so the honest ceiling is a local copy onto the disk (`cp -r` + `sync "
        "-f`), and the local-copy target compares it with the transfer + `sync -f`; the "
        "page-cache rates (no sync) show each tool's own speed. `sync -f` flushes the "
        "whole output file system, so other writes on the machine during a run are "
        "charged to it; the source data is in the page cache (warm) for every run.",
        "- TCP limit: a Python sender calling `socket.sendfile()` for each file in turn on "
        "one connection, and a receiver calling `recv_into()` on one reused 1 MiB buffer "
        "and discarding the data. Its time starts once both processes run and are "
        "connected, so it leaves out process start-up and connection set-up.",
        "- scp and rsync go through an sshd started for the run on 127.0.0.1 with generated "
        "keys (OpenSSH default cipher; scp uses the SFTP protocol since OpenSSH 9). "
        "magic-wormhole uses its own mailbox server and transit relay on 127.0.0.1, with "
        "`--no-listen` on both sides so that all data goes through the local relay; it zips "
        "a folder before sending it.",
        "- The data is random, so compression cannot help; p2p-transfer runs with its default "
        "(adaptive zstd) settings unless extra send flags are listed above (they, and "
        "`--chunk-size`, apply to the throughput runs only, not to the throttle and resume "
        "runs, which use the defaults).",
        "- p2p-transfer keeps its device key, trusted devices and history in `WORKDIR/"
        f"{P2P_DATA_DIRS['send']}` (sender) and `WORKDIR/{P2P_DATA_DIRS['receive']}` "
        "(receiver), given as `P2P_TRANSFER_DATA_DIR`, not in the user's data folder: "
        "two devices, each session let in by its code"
        + (" (the session set-up variant without a code shares one folder, `WORKDIR/"
           f"{P2P_DATA_DIRS['shared']}`)" if setups else "") + ".",
    ]
    write_markdown(ctx, path, lines)


def write_markdown(ctx: "Context", path: Path, lines: list[str]) -> None:
    """Writes a markdown report, ending with the warnings and failures of the run."""
    if ctx.warnings or ctx.failures:
        lines = lines + ["", "## Problems seen in this run", ""]
        for w in ctx.warnings:
            lines.append(f"- warning: {w}")
        for f in ctx.failures:
            lines.append(f"- FAILED: {f.splitlines()[0]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


SLOW_HEADERS = ["#", "tool", "link", "exit (sender / receiver)", "seconds", "MiB/s",
                "× link rate or asked rate", "SHA-256 verified", "notes"]
SLOW_ALIGN = ["---:", "---", "---", "---:", "---:", "---:", "---:", "---", "---"]


def slow_summary(runs: list[SlowRun]) -> list[str]:
    """Per tool and link: how many runs completed, and the median time of those."""
    groups: dict[tuple[str, str], list[SlowRun]] = {}
    for r in runs:
        if r.seconds is not None:
            groups.setdefault((r.tool, r.link), []).append(r)
    lines = []
    for (tool, link), rs in groups.items():
        done = [r.seconds for r in rs if r.done]
        failed = [f"exit {r.exits} after {r.seconds:.1f} s" for r in rs if not r.done]
        lines.append(f"{tool}, {link}: completed {len(done)} of {len(rs)}"
                     + (f", median {statistics.median(done):.1f} s "
                        f"({rs[0].file_bytes / MiB / statistics.median(done):.3f} MiB/s)"
                        if done else "")
                     + (f"; failed: {', '.join(failed)}" if failed else ""))
    return lines


def slow_rows(runs: list[SlowRun]) -> list[list[str]]:
    rows = []
    for i, r in enumerate(runs, 1):
        rate = r.mibps()
        rows.append([
            str(i), r.tool, r.link, r.exits, fmt_num(r.seconds),
            fmt_num(rate, ".3f", "— (did not complete)" if r.seconds is not None else "n/a"),
            (f"{rate / r.reference:.2f} × {r.reference_what}" if rate and r.reference
             else NOT_MEASURED),
            r.verified, r.note,
        ])
    return rows


def write_slow_report(path: Path, *, command: str, started: datetime.datetime, machine: dict,
                      congestion: str, binary: str, baseline: str | None,
                      extras: dict[str, str], spec: LinkSpec, runs: list[SlowRun],
                      ctx: Context) -> None:
    try:
        load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load_end = "unknown"
    floor = SLOW_SIZE / spec.rate
    piece, held = shaped_piece(spec.rate), shaped_line_limit(spec.rate, spec.rtt_ms / 2000)
    lines = [
        "# Benchmarks: slow links",
        "",
        "Produced by `benchmark.py --slow-link`; rerun it to refresh this page (it "
        "overwrites it). The other benchmarks are in [benchmarks.md](benchmarks.md).",
        "",
        "Issue 10 (\"Hold up on slow links\"): on an emulated 3 Mbit/s, 40 ms link a 24 MiB "
        "`send` ended after about 48 s with `error: the peer stopped answering for 30.0 s` "
        "(exit 3) while rsync completed on the same link, and so did `send --max-speed "
        "512K` of any file over 16 MiB. This page measures both, with the binary under test "
        "and, where given (`--baseline-binary`), an older one in the same run.",
        "",
        f"- **Date:** {started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}, data and output on {machine['filesystem']}; "
        f"load average (1, 5, 15 min) at the start {machine['load']}, at the end "
        f"{load_end} (other work on the machine skews every figure)",
        f"- **net.ipv4.tcp_congestion_control:** {congestion} (of every socket here: the "
        "tools', and the shaped link's own on both of its sides)",
        f"- **p2p-transfer:** {binary}",
        f"- **p2p-transfer runs** {security_line(ctx, ctx.args.binary)}",
    ]
    if baseline:
        lines.append(f"- **p2p-transfer (baseline):** {baseline}; runs "
                     f"{security_line(ctx, ctx.args.baseline_binary)}")
    for k, v in extras.items():
        lines.append(f"- **{k}:** {v}")
    lines += [
        f"- **Shaped link:** {spec.mbit:g} Mbit/s each way ({spec.rate:,.0f} B/s, "
        f"{spec.mibps:.3f} MiB/s), {spec.rtt_ms:g} ms round trip ({spec.rtt_ms / 2:g} ms "
        f"each way); {human_size(SLOW_SIZE)} take at least {floor:.1f} s across it "
        "(payload alone, no framing or handshake)",
        f"- **Repeats:** {ctx.args.repeat}; every run is a row of its own",
        "",
        "## Results",
        "",
        "Seconds: from the start of the sender (the receiver is started and listening "
        "before) until both ends have exited (once one end has exited, the other gets "
        f"{SLOW_GRACE:.0f} s before it is killed); for rsync, the command; for plain TCP, "
        "from the signal that starts the copy (connection already set up). MiB/s = file "
        "size / seconds, only for runs that completed: every process exited 0 and the "
        "received file's SHA-256 matches the source (checked after every run). `× link` "
        "= MiB/s ÷ the link's rate; `× asked` = MiB/s ÷ the `--max-speed` asked. Exit 3 is "
        "p2p-transfer's exit code for a connection problem (no connection, the connection "
        "closed, the peer stopped answering). A baseline run that fails is a finding, not a failure of "
        "the benchmark.",
        "",
        "| " + " | ".join(SLOW_HEADERS) + " |",
        "|" + "|".join(SLOW_ALIGN) + "|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in slow_rows(runs)),
        "",
        *([f"Over the {ctx.args.repeat} runs:", "",
           *(f"- {line}" for line in slow_summary(runs)), ""] if ctx.args.repeat > 1 else []),
        "## Commands",
        "",
        "The exact command lines of each row, in the order they were started (paths are "
        "those of this run's work directory; `$TCP_SINK` and `$TCP_SOURCE` are the two "
        "small Python programs of the same names in `benchmark.py`).",
        "",
    ]
    for i, r in enumerate(runs, 1):
        lines += [f"{i}. {r.tool}, {r.link}:", ""]
        if r.commands:
            lines += ["   ```", *(f"   {c}" for c in r.commands), "   ```", ""]
        else:
            lines += [f"   (not run: {r.note})", ""]
    lines += [
        "## How the link is emulated",
        "",
        "- Everything runs on 127.0.0.1. The shaped link is a TCP proxy on 127.0.0.1 in the "
        "benchmark script's own threads (`ShapedLink`); the sender (or ssh) connects to it "
        "and it connects to the receiver (or sshd). A fresh link is made for each run.",
        f"- Each direction is a bottleneck of {spec.rate:,.0f} B/s shared by all the "
        f"link's connections (a token bucket keeping at most {SHAPED_BURST_PIECES} pieces of "
        "credit), followed "
        f"by a fixed {spec.rtt_ms / 2:g} ms delay: the link reads a piece of up to "
        f"{human_size(piece)} (about {SHAPED_PIECE_SECONDS * 1000:g} ms of data at the "
        "rate) only once the previous piece has crossed the bottleneck, and writes each "
        f"piece out {spec.rtt_ms / 2:g} ms after it crossed, in order; a half-close or a "
        "reset is passed on the same way, after the data before it.",
        f"- Buffering is bounded, so the rate really limits: the link's sockets have "
        f"SO_SNDBUF and SO_RCVBUF of {human_size(SHAPED_SOCKET_BUFFER)} (set before "
        "connect and listen; the kernel doubles the figure), and the delay line of a "
        f"direction holds at most {human_size(held)}: when the far end does not read, "
        "the link stops reading too and the receiver's flow control reaches the "
        "sender. What waits in front of the bottleneck waits in the sender's own socket "
        "buffer, as in front of a real slow link; nothing is ever dropped, so TCP sees "
        "queueing delay but no loss.",
        f"- The link's sockets set TCP_MAXSEG {SHAPED_MSS} (the segments of a path with a "
        "1500-byte MTU) on both of its sides, not loopback's 64 KiB: a kernel sizes a "
        "socket's send buffer by segments in flight, so with loopback's segments a sender "
        "would queue megabytes in its own socket, many seconds at this rate.",
        "- The `--max-speed` rows go straight from sender to receiver on loopback: there the "
        "sender's own throttle is the only slow part.",
        "- rsync runs as `rsync -a -e 'ssh -p LINK_PORT …' FILE USER@127.0.0.1:OUT/` against "
        "an sshd started for the run on 127.0.0.1 with generated keys (OpenSSH default "
        "cipher, no compression): the reference that completes on the same link.",
        "- Plain TCP: a Python sender calling `socket.sendfile()` through the link and a "
        "receiver discarding what it reads; the link's own ceiling for one TCP connection.",
        "- p2p-transfer runs with its defaults (window 16, chunk 1 MiB, adaptive zstd, which "
        "gives up on random data) and keeps its device key and history in `WORKDIR/"
        f"{P2P_DATA_DIRS['send']}` (sender) and `WORKDIR/{P2P_DATA_DIRS['receive']}` "
        "(receiver) (`P2P_TRANSFER_DATA_DIR`): two devices, each run paired by a fresh code "
        "when the binary has `--code`; the commands above show both. The TLS records and "
        "the handshakes cross the link too. The data are random (incompressible) files "
        "generated by "
        f"the script: {human_size(SLOW_SIZE)} through the link, "
        f"{human_size(SLOW_THROTTLE_SIZE)} with `--max-speed {SLOW_THROTTLE_RATE}`.",
    ]
    write_markdown(ctx, path, lines)


# --------------------------------------------------------------------------------------
# WAN: two network namespaces joined through the project's emulator (tests/wan, p2p-wan)
# --------------------------------------------------------------------------------------

@dataclass
class WanProfile:
    name: str
    mbit: float | None  # Mbit/s (10^6 bit/s) each way; None: not limited (plain veth)
    rtt_ms: float       # round trip the link adds
    loss_pct: float     # random loss, % of packets, each direction

    @property
    def mibps(self) -> float | None:
        """The link's rate in MiB/s (the reference of every `fraction of link`)."""
        return self.mbit * 1e6 / 8 / MiB if self.mbit else None

    @property
    def label(self) -> str:
        if self.mbit is None:
            return f"`{self.name}`: a plain veth pair (no emulator: no rate limit, delay or loss)"
        return (f"`{self.name}`: {self.mbit:g} Mbit/s ({self.mibps:.2f} MiB/s) each way, "
                f"{self.rtt_ms:g} ms round trip, {self.loss_pct:g}% random loss each way")


# The emulator's profiles (issue 12, point 4), as the p2p-wan binary defines them; here
# only for the report and for `fraction of link`. `veth` is this script's own: two
# namespaces joined by a plain veth pair, to check the script without the emulator.
WAN_PROFILES = {p.name: p for p in [
    WanProfile("dsl", 20, 40, 0.1),
    WanProfile("intercontinental", 100, 150, 0.5),
    WanProfile("lossy", 50, 30, 2.0),
    WanProfile("satellite", 50, 600, 0.5),
    WanProfile("lan", 1000, 1, 0.0),
    WanProfile("veth", None, 0, 0.0),
]}
WAN_TARGETS = {"intercontinental": 0.85, "lossy": 0.90, "satellite": 0.75, "dsl": 0.90}
WAN_VS_OTHERS = {"bbr": 1.5, "cubic": 30.0}  # intercontinental: × the best of the others
WAN_CCS = ["bbr", "cubic"]          # the OS's TCP congestion control of each group of rows
WAN_SIZE = "200M"                   # --wan-size default
WAN_TIMEOUT = 600.0                 # s: one run, then "did not finish" (--wan-timeout)
WAN_SHARE_SECONDS = 60              # --share-seconds default
WAN_SHARE_TICK = 0.5                # s between two samples of the share test
WAN_SHARE_FILE_MAX = 2 << 30        # the share test's file: link rate × (time + 15 s), capped
WAN_SMOKE_PROFILE = "lossy"
WAN_SMOKE_SIZE = 8 * MiB
WAN_STATS_EVERY = 0.5               # s: p2p-wan --stats-every
WAN_GAUGES = {"queue_bytes", "max_queue_bytes"}  # p2p-wan's stats that are not counters
WAN_SSH_PORT = 22                   # inside the second host's namespace: nothing else there
WAN_MAILBOX_PORT = 4000
WAN_TRANSIT_PORT = 4001
WAN_IPERF_PORT = 5201
WAN_VETH_H1, WAN_VETH_H2 = "10.201.0.1", "10.201.0.2"  # what p2p-wan uses too
CONNECTED_RE = re.compile(r"connected to \S+ over (\w+)")  # the sender, on stderr
WAN_READY_RE = re.compile(r"^ready h1=(\S+) h2=(\S+) netns1=(\S+) netns2=(\S+)", re.M)
WAN_SYSCTLS = ["net.ipv4.tcp_congestion_control", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
               "net.core.rmem_max", "net.core.wmem_max"]
QUIC_NA = "not available in this binary"


def default_wan_emulator() -> Path:
    """Where `cargo build --release -p p2p-wan` puts the emulator (CARGO_TARGET_DIR too)."""
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else REPO / "target") / "release" / "p2p-wan"


def ensure_wan_emulator(path: Path) -> None:
    if path.exists():
        return
    if path != default_wan_emulator():
        raise SystemExit(f"error: {path} does not exist")
    print(f"{path} missing: running cargo build --release -p p2p-wan…", flush=True)
    try:
        r = subprocess.run(["cargo", "build", "--release", "-p", "p2p-wan"], cwd=REPO,
                           stdin=subprocess.DEVNULL, timeout=3600)
    except subprocess.TimeoutExpired:
        raise SystemExit("error: cargo build --release -p p2p-wan timed out")
    if r.returncode != 0 or not path.exists():
        raise SystemExit("error: cargo build --release -p p2p-wan failed (is tests/wan in "
                         "this work tree?)")


def supports_transport(ctx: "Context", binary: Path) -> bool:
    """Whether `binary send --help` and `receive --help` mention `--transport` (issue 12:
    QUIC). Asked once per binary; without it only the TCP rows run."""
    key = f"transport:{binary}"
    if key not in ctx.code_support:
        ok = True
        for sub in ("send", "receive"):
            try:
                r = run_quiet([str(binary), sub, "--help"], timeout=30)
                ok = ok and "--transport" in (r.stdout + r.stderr)
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        ctx.code_support[key] = ok
    return ctx.code_support[key]


ALLOWED_SYSCTL = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


def allow_congestion(ctx: "Context", cc: str) -> None:
    """Adds `cc` to the host's tcp_allowed_congestion_control (remembering the old list
    once, in ctx.allowed_old) so that a network namespace may choose it."""
    try:
        allowed = ALLOWED_SYSCTL.read_text().split()
    except OSError:
        return
    if cc in allowed:
        return
    if getattr(ctx, "allowed_old", None) is None:
        ctx.allowed_old = " ".join(allowed)
    try:
        ALLOWED_SYSCTL.write_text(" ".join(allowed + [cc]) + "\n")
    except OSError as e:
        raise BenchError(f"cannot add {cc} to tcp_allowed_congestion_control: {e}")


def restore_allowed_congestion(ctx: "Context") -> None:
    old = getattr(ctx, "allowed_old", None)
    if old is None:
        return
    try:
        ALLOWED_SYSCTL.write_text(old + "\n")
        ctx.allowed_old = None
    except OSError as e:
        print(f"warning: could not restore tcp_allowed_congestion_control to {old!r}: {e}",
              file=sys.stderr)


def bytes_under(path: Path) -> int:
    """Bytes in the regular files under `path` (what arrived, finished or not)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def wait_for_text(child: Child, path: Path, needle: str, timeout: float) -> None:
    """Waits until `needle` appears in one of `child`'s logs (`path`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if needle in path.read_text(errors="replace"):
                return
        except OSError:
            pass
        if child.exited():
            raise BenchError(f"{child.name} exited early:\n{tail(child.err)}\n{tail(child.out)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not print {needle!r} within {timeout:.0f}s\n"
                             f"{tail(child.err)}")
        time.sleep(0.02)


class WanLink:
    """Two network namespaces, h1 (the sender's, the client's) and h2 (the receiver's,
    the server's), joined through `p2p-wan up --profile NAME` (or, for the `veth`
    profile, a plain veth pair made here). Everything measured runs inside them with
    `ip netns exec`: the data cross the emulated link once, from h1 to h2."""

    def __init__(self, ctx: "Context", profile: WanProfile, emulator: Path | None, seed: int):
        self.ctx = ctx
        self.profile = profile
        self.emulator = emulator if profile.mbit is not None else None
        self.seed = seed
        # Short (interface names have 15 characters at most), starts with "bw", unique.
        self.prefix = f"bw{uuid.uuid4().hex[:5]}"
        self.ns1 = self.ns2 = ""
        self.ip1, self.ip2 = WAN_VETH_H1, WAN_VETH_H2
        self.child: Child | None = None
        self.made: list[str] = []        # namespaces made here (the veth profile)
        self.commands: list[str] = []    # how the link was made, for the report
        self.ready_line = ""
        self.latest: dict[str, dict] = {}  # direction -> the emulator's last stats object
        self.stats_lines = 0
        self.first_stats: dict | None = None
        self._offset = 0
        self._partial = b""
        self.started = 0                 # index in ctx.procs.started at up()

    # -- commands inside the hosts -----------------------------------------------------

    @staticmethod
    def inside(ns: str, argv: list) -> list[str]:
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    def in1(self, argv: list) -> list[str]:
        return self.inside(self.ns1, argv)

    def in2(self, argv: list) -> list[str]:
        return self.inside(self.ns2, argv)

    def _ip(self, *argv: str) -> None:
        self.commands.append(shlex.join(["ip", *argv]))
        r = run_quiet(["ip", *argv], timeout=30)
        if r.returncode != 0:
            raise BenchError(f"ip {' '.join(argv)} failed: {r.stderr.strip()}")

    # -- up / down ---------------------------------------------------------------------

    def up(self) -> None:
        self.started = len(self.ctx.procs.started)
        if self.emulator is not None:
            argv = [self.emulator, "up", "--prefix", self.prefix, "--profile",
                    self.profile.name, "--seed", str(self.seed),
                    "--stats-every", str(WAN_STATS_EVERY)]
            self.commands.append(shlex.join(map(str, argv)))
            self.child = self.ctx.procs.start(f"wan-{self.profile.name}", argv)
            deadline = time.monotonic() + 60
            while True:
                m = WAN_READY_RE.search(self.child.out.read_text(errors="replace"))
                if m:
                    break
                if self.child.exited() or time.monotonic() > deadline:
                    raise BenchError(f"p2p-wan up --profile {self.profile.name} printed no "
                                     f"`ready` line:\n{tail(self.child.err)}")
                time.sleep(0.05)
            self.ready_line = m.group(0)
            self.ip1, self.ip2, self.ns1, self.ns2 = m.groups()
            said = last_line(self.child.err, "p2p-wan:")
            if said:
                self.ready_line += f"  (stderr: {said})"
        else:
            self.ns1, self.ns2 = f"{self.prefix}-h1", f"{self.prefix}-h2"
            for ns in (self.ns1, self.ns2):
                self._ip("netns", "add", ns)
                self.made.append(ns)
            a, b = f"{self.prefix}-a", f"{self.prefix}-b"
            self._ip("link", "add", a, "netns", self.ns1, "type", "veth", "peer", "name", b,
                     "netns", self.ns2)
            for ns, dev, ip in ((self.ns1, a, self.ip1), (self.ns2, b, self.ip2)):
                self._ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
            self.ready_line = f"veth {a} ({self.ns1}, {self.ip1}) ↔ {b} ({self.ns2}, {self.ip2})"
        for ns in (self.ns1, self.ns2):  # local connections inside a host (wormhole, sshd)
            self._ip("-n", ns, "link", "set", "lo", "up")
        print(f"WAN link up: {self.ready_line}", flush=True)

    def down(self) -> None:
        """Stops what runs inside the hosts, then the emulator (SIGTERM: it tears its
        namespaces down), then `p2p-wan down` for leftovers; deletes namespaces made here."""
        procs = self.ctx.procs
        for child in reversed(procs.started[self.started:]):
            if child is not self.child:
                procs.stop(child, grace=2.0)
        if self.child is not None:
            procs.stop(self.child, grace=15.0)
            self._read_stats()
            if self.child.returncode not in (0, None):
                note = (f"p2p-wan ({self.profile.name}) exited with status "
                        f"{self.child.returncode} when stopped: {tail(self.child.err, 3)}")
                self.ctx.warnings.append(note)
        if self.emulator is not None and self.prefix:
            try:
                run_quiet([str(self.emulator), "down", "--prefix", self.prefix], timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for ns in self.made:
            run_quiet(["ip", "netns", "del", ns], timeout=30)
        self.made = []
        try:
            left = [ns for ns in run_quiet(["ip", "netns", "list"], timeout=30).stdout.split()
                    if ns.startswith(self.prefix)]
        except (OSError, subprocess.TimeoutExpired):
            left = []
        if left:
            self.ctx.warnings.append(f"namespaces left after tearing down: {', '.join(left)}")

    # -- inside the hosts ----------------------------------------------------------------

    def sysctl(self, ns: str, key: str, value: str | None = None) -> str:
        argv = ["sysctl", "-n", key] if value is None else ["sysctl", "-w", f"{key}={value}"]
        r = run_quiet(self.inside(ns, argv), timeout=30)
        if r.returncode != 0:
            raise BenchError(f"sysctl {key} in {ns}: {(r.stderr or r.stdout).strip()}")
        return run_quiet(self.inside(ns, ["sysctl", "-n", key]), timeout=30).stdout.strip()

    def set_congestion(self, cc: str) -> str:
        """net.ipv4.tcp_congestion_control (per namespace) = cc in both hosts. A namespace
        other than the first may only choose an algorithm of the (global)
        net.ipv4.tcp_allowed_congestion_control, so `cc` is added there first (and the
        list restored at the end: restore_allowed_congestion). Raises BenchError if
        either host does not end up with `cc`."""
        allow_congestion(self.ctx, cc)
        got = []
        for ns in (self.ns1, self.ns2):
            try:
                got.append(self.sysctl(ns, "net.ipv4.tcp_congestion_control", cc))
            except BenchError as e:
                raise BenchError(f"cannot set the TCP congestion control to {cc}: {e}")
        if got[0] == got[1] == cc:
            return cc
        raise BenchError(f"asked both hosts for tcp_congestion_control={cc}, got "
                         f"{got[0]} / {got[1]}")

    def sysctls(self) -> dict[str, str]:
        out = {}
        for key in WAN_SYSCTLS:
            vals = []
            for ns in (self.ns1, self.ns2):
                try:
                    vals.append(self.sysctl(ns, key).replace("\t", " "))
                except BenchError:
                    vals.append("?")
            out[key] = vals[0] if vals[0] == vals[1] else f"{vals[0]} (h1) / {vals[1]} (h2)"
        return out

    def wait_for_port(self, port: int, timeout: float, proc: Child | None = None) -> None:
        """Waits until ip2:port accepts a connection made inside h2 (not across the link)."""
        probe = ("import socket,sys\n"
                 "socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()")
        deadline = time.monotonic() + timeout
        while True:
            r = run_quiet(self.in2([sys.executable, "-I", "-S", "-c", probe, self.ip2,
                                    str(port)]), timeout=30)
            if r.returncode == 0:
                return
            if proc is not None and proc.exited():
                raise BenchError(f"{proc.name} exited before listening")
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listening on {self.ip2}:{port} in {self.ns2} "
                                 f"after {timeout:.0f}s")
            time.sleep(0.1)

    # -- the emulator's statistics ---------------------------------------------------------

    def _read_stats(self) -> None:
        """Parses the JSON lines the emulator printed since the last call (one per
        direction every WAN_STATS_EVERY s, cumulative counters)."""
        if self.child is None:
            return
        try:
            with open(self.child.out, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if self.first_stats is None:
                self.first_stats = obj
            key = str(next((obj[k] for k in ("direction", "dir", "from", "name") if k in obj),
                           "link"))
            self.latest[key] = obj
            self.stats_lines += 1

    def snapshot(self) -> dict[str, dict]:
        """The emulator's counters now: waits for the next line of every direction (at
        most a few seconds), so that a snapshot taken while the link is idle is exact."""
        if self.child is None:
            return {}
        self._read_stats()
        wanted = self.stats_lines + max(2, len(self.latest))
        deadline = time.monotonic() + 3 * WAN_STATS_EVERY + 2
        while self.stats_lines < wanted and time.monotonic() < deadline:
            if self.child.exited():
                break
            time.sleep(0.05)
            self._read_stats()
        return json.loads(json.dumps(self.latest))

    @staticmethod
    def stats_diff(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
        """Per direction: every counter's increase between two snapshots (the gauges,
        WAN_GAUGES, as they are in `after`)."""
        diff = {}
        for direction, obj in after.items():
            old = before.get(direction, {})
            diff[direction] = {k: v if k in WAN_GAUGES else v - old.get(k, 0)
                               for k, v in obj.items()
                               if isinstance(v, int) and not isinstance(v, bool)}
        return diff

    @staticmethod
    def fmt_stats(diff: dict[str, dict]) -> str:
        """`h1->h2: forwarded 1,234 frames (1.8 MiB), dropped by loss 6, by the queue 0`
        per direction; the emulator's other counters only when not zero; a field it
        does not name as expected, as it names it."""
        if not diff:
            return NOT_MEASURED
        parts = []
        for direction, c in sorted(diff.items()):
            if "forwarded_frames" in c:
                text = (f"forwarded {c['forwarded_frames']:,} frames "
                        f"({c.get('forwarded_bytes', 0) / MiB:.1f} MiB), dropped by loss "
                        f"{c.get('dropped_loss_frames', 0):,}, by the queue "
                        f"{c.get('dropped_queue_frames', 0):,}")
                known = {"forwarded_frames", "forwarded_bytes", "dropped_loss_frames",
                         "dropped_loss_bytes", "dropped_queue_frames", "dropped_queue_bytes",
                         *WAN_GAUGES}
                rest = [f"{k} {v:,}" for k, v in c.items()
                        if k not in known and isinstance(v, int) and v]
                text += "".join(f", {r}" for r in rest)
            else:
                text = ", ".join(f"{k} {v:,}" for k, v in c.items() if v) or "nothing"
            parts.append(f"{direction}: {text}")
        return "; ".join(parts)


# ---- the rows ------------------------------------------------------------------------

@dataclass
class WanRun:
    profile: str
    tool: str                  # the row's label
    key: str                   # "quic", "tcp", "scp", "rsync", "wormhole"
    dataset: str               # "big" / "small"
    dataset_label: str
    cc: str                    # the OS's TCP congestion control in both hosts
    file_bytes: int
    link_mibps: float | None
    commands: list[str] = field(default_factory=list)
    exits: str = "n/a"
    seconds: float | None = None   # start of the sender → every end exited
    done: bool = False             # every process exited 0 and the data are intact
    verified: str = "n/a"
    arrived: int | None = None     # bytes in the output when it did not finish
    timed_out: bool = False
    stats: str = NOT_MEASURED
    note: str = ""
    status: str = "ok"             # or why it was not run

    def mibps(self) -> float | None:
        return self.file_bytes / MiB / self.seconds if self.done and self.seconds else None

    def partial_mibps(self) -> float | None:
        """For a run that did not finish: what arrived ÷ the time it had."""
        if self.done or not self.seconds or self.arrived is None:
            return None
        return self.arrived / MiB / self.seconds

    def fraction(self) -> float | None:
        rate = self.mibps()
        return rate / self.link_mibps if rate is not None and self.link_mibps else None


def wan_p2p_label(transport: str | None, has_transport: bool) -> str:
    if transport == "quic":
        return "p2p-transfer --transport quic"
    return "p2p-transfer --transport tcp" if has_transport else "p2p-transfer (TCP only)"


def check_transport(child: Child, asked: str, has_transport: bool) -> tuple[str, str | None]:
    """(what the sender says it connected over, or "?"; a problem, or None): a row must
    run over the transport it is labelled with."""
    try:
        m = CONNECTED_RE.search(child.err.read_text(errors="replace"))
    except OSError:
        m = None
    if m is None:  # a failure before connecting (the exit codes say so), or an old build
        return "?" if has_transport else "TCP", None
    seen = m.group(1).upper()
    if seen != asked.upper():
        return seen, f"asked for {asked.upper()}, the sender connected over {seen}"
    return seen, None


def finish_wan_run(ctx: "Context", wan: WanLink, run: WanRun, ds: Dataset, out: Path,
                   exits: list[Exit], t0: float, before: dict) -> None:
    """Fills in a run from its processes' exits, the output and the emulator's counters."""
    run.seconds = max(e.end for e in exits) - t0
    run.exits = " / ".join(fmt_exit(e) for e in exits)
    run.timed_out = any(e.timed_out for e in exits)
    clean = all(e.returncode == 0 and not e.timed_out for e in exits)
    errors, extras = verify_output(ds, out)
    if not errors:
        run.verified = "yes" + (f" ({len(extras)} other file(s) left)" if extras else "")
    elif run.timed_out:
        run.verified = f"no: did not finish ({len(errors)} of {len(ds.hashes)} file(s) missing or short)"
    else:
        run.verified = f"NO: {errors[0]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
    run.done = clean and not errors
    if not run.done:
        run.arrived = bytes_under(out)
    run.stats = wan.fmt_stats(wan.stats_diff(before, wan.snapshot()))
    if run.timed_out:
        run.note = (f"did not finish in {ctx.args.wan_timeout:.0f} s: "
                    f"{(run.arrived or 0) / MiB:.1f} of {ds.total_bytes / MiB:.1f} MiB arrived"
                    + (f"; {run.note}" if run.note else ""))


def wan_failed(ctx: "Context", run: WanRun, e: BenchError) -> WanRun:
    run.status = f"could not be run: {str(e).splitlines()[0]}"
    print(f"\n!!! {run.tool} / {run.profile} / {run.dataset}: {e}\n", file=sys.stderr,
          flush=True)
    ctx.failures.append(f"{run.tool} / {run.profile} / {run.dataset} ({run.cc}): {e}")
    return run


def report_wan_run(ctx: "Context", run: WanRun) -> None:
    if run.status != "ok":
        print(f"  {run.tool:<32} {run.dataset:<5} {run.cc:<5} {run.status}", flush=True)
        return
    rate, frac = run.mibps(), run.fraction()
    what = (f"{rate:8.2f} MiB/s" + (f" ({frac:.0%} of link)" if frac is not None else "")
            if rate is not None else f"did not complete ({run.note or run.verified})")
    print(f"  {run.tool:<32} {run.dataset:<5} {run.cc:<5} exit {run.exits}, "
          f"{fmt_num(run.seconds)} s, {what}, verified: {run.verified}", flush=True)
    if not run.done and not run.timed_out:  # a run that ran out of time is a finding
        ctx.failures.append(f"{run.tool} / {run.profile} / {run.dataset} ({run.cc}): exit "
                            f"{run.exits} after {fmt_num(run.seconds)} s, verified: "
                            f"{run.verified}")


def new_wan_run(ctx: "Context", wan: WanLink, tool: str, key: str, ds: Dataset,
                cc: str) -> WanRun:
    return WanRun(wan.profile.name, tool, key, ds.key, ds.label, cc, ds.total_bytes,
                  wan.profile.mibps)


def measure_wan_p2p(ctx: "Context", wan: WanLink, ds: Dataset, transport: str,
                    cc: str) -> WanRun:
    """receive in h2 (--bind h2 --port 0, --code, --transport), send in h1 to the address
    it prints; time: start of the sender → both ends exited (the other gets SLOW_GRACE
    s once one has exited; both are killed at --wan-timeout)."""
    binary = ctx.args.binary
    has_transport = supports_transport(ctx, binary)
    run = new_wan_run(ctx, wan, wan_p2p_label(transport, has_transport), transport, ds, cc)
    if transport == "quic" and not has_transport:
        run.status = QUIC_NA
        report_wan_run(ctx, run)
        return run
    name = ctx.log_name(f"wan-{wan.profile.name}-{transport}-{cc}-{ds.key}")
    targs = ["--transport", transport] if has_transport else []
    try:
        out = ctx.fresh_output()
        code = next_code(ctx) if supports_code(ctx, binary) else None
        pair = ["--code", code] if code else []
        recv_argv = [str(binary), "receive", "--output", str(out), "--port", "0",
                     "--bind", wan.ip2, *pair, *targs]
        recv = ctx.procs.start(f"{name}-receive", wan.in2(recv_argv),
                               env=p2p_env(ctx, "receive"))
        try:
            addr = wait_listening(recv, 30, wan.ip2)
        except BenchError:
            ctx.procs.stop(recv)
            raise
        send_argv = [str(binary), "send", str(ds.path), "--peer", addr, *pair, *targs]
        run.commands += [env_prefix(ctx, "receive") + shlex.join(wan.in2(recv_argv))
                         + f"    # → listening on {addr}",
                         env_prefix(ctx, "send") + shlex.join(wan.in1(send_argv))]
        os.sync()
        before = wan.snapshot()
        t0 = time.perf_counter()
        send = ctx.procs.start(f"{name}-send", wan.in1(send_argv), env=p2p_env(ctx, "send"))
        exits = wait_ends(ctx, [send, recv], ctx.args.wan_timeout)
        finish_wan_run(ctx, wan, run, ds, out, [exits[send.name], exits[recv.name]], t0, before)
        seen, problem = check_transport(send, transport, has_transport)
        if problem:
            run.done = False
            run.verified += f"; {problem}"
        m = DONE_RE.search(send.out.read_text(errors="replace"))
        if run.done:
            run.note = (f"over {seen}; sender: `{m.group(0)}`" if m
                        else f"over {seen}; no `done:` line from the sender")
        elif not run.timed_out:
            for who, child in (("sender", send), ("receiver", recv)):
                line = last_line(child.err, "error") or last_line(child.err)
                if line:
                    run.note += f"{who}: `{line}`; "
    except BenchError as e:
        return wan_failed(ctx, run, e)
    finally:
        ctx.clear_output()
    report_wan_run(ctx, run)
    return run


def measure_wan_ssh(ctx: "Context", wan: WanLink, ds: Dataset, tool: str, cc: str,
                    sshd: Sshd | None, why: str) -> WanRun:
    """scp -r, or rsync -a over ssh, from h1 to the sshd in h2."""
    label = "scp" if tool == "scp" else "rsync -a over ssh"
    run = new_wan_run(ctx, wan, label, tool, ds, cc)
    if sshd is None:
        run.status = f"unavailable: {why}"
        report_wan_run(ctx, run)
        return run
    name = ctx.log_name(f"wan-{wan.profile.name}-{tool}-{cc}-{ds.key}")
    try:
        out = ctx.fresh_output()
        dest = f"{sshd.user}@{sshd.host}:{out}/"
        if tool == "scp":
            argv = ["scp", "-q", "-r", *sshd.ssh_options(), "-P", str(sshd.port),
                    str(ds.path), dest]
        else:
            rsh = shlex.join(["ssh", *sshd.ssh_options(), "-p", str(sshd.port)])
            argv = ["rsync", "-a", "-e", rsh, str(ds.path), dest]
        run.commands.append(shlex.join(wan.in1(argv)))
        os.sync()
        before = wan.snapshot()
        t0 = time.perf_counter()
        p = ctx.procs.start(name, wan.in1(argv))
        exits = ctx.procs.wait([p], ctx.args.wan_timeout)
        finish_wan_run(ctx, wan, run, ds, out, [exits[name]], t0, before)
        if not run.done and not run.timed_out and (line := last_line(p.err)):
            run.note = f"{tool}: `{line}`"
    except BenchError as e:
        return wan_failed(ctx, run, e)
    finally:
        ctx.clear_output()
    report_wan_run(ctx, run)
    return run


def measure_wan_wormhole(ctx: "Context", wan: WanLink, ds: Dataset, cc: str,
                         wh: Wormhole | None, why: str) -> WanRun:
    """wormhole send in h1, wormhole receive in h2, mailbox and transit relay in h2
    (--no-listen on both sides: every byte goes through the relay)."""
    run = new_wan_run(ctx, wan, "magic-wormhole (via relay)", "wormhole", ds, cc)
    if wh is None:
        run.status = f"unavailable: {why}"
        report_wan_run(ctx, run)
        return run
    name = ctx.log_name(f"wan-{wan.profile.name}-wormhole-{cc}-{ds.key}")
    tmp = ctx.workdir / "wormhole-tmp"  # the sender zips folders into TMPDIR
    try:
        out = ctx.fresh_output()
        ctx.wormhole_runs += 1
        code = f"{6 + ctx.wormhole_runs}-test-code"
        common = [str(wh.bin_dir / "wormhole"), "--relay-url", wh.relay_url,
                  "--transit-helper", wh.transit]
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp))
        recv_argv = [*common, "receive", "--accept-file", "--hide-progress", "--no-listen",
                     code]
        send_argv = [*common, "send", "--code", code, "--hide-progress", "--no-listen",
                     "--no-qr", str(ds.path)]
        run.commands += [f"cd {shlex.quote(str(out))} && " + shlex.join(wan.in2(recv_argv)),
                         f"TMPDIR={shlex.quote(str(tmp))} " + shlex.join(wan.in1(send_argv))]
        recv = ctx.procs.start(f"{name}-receive", wan.in2(recv_argv), cwd=out, env=env)
        time.sleep(0.3)  # let it claim the nameplate; it waits for the sender anyway
        os.sync()
        before = wan.snapshot()
        t0 = time.perf_counter()
        send = ctx.procs.start(f"{name}-send", wan.in1(send_argv), env=env)
        exits = wait_ends(ctx, [send, recv], ctx.args.wan_timeout)
        finish_wan_run(ctx, wan, run, ds, out, [exits[send.name], exits[recv.name]], t0,
                       before)
        if not run.done and not run.timed_out:
            for who, child in (("sender", send), ("receiver", recv)):
                line = last_line(child.err)
                if line:
                    run.note += f"{who}: `{line}`; "
    except BenchError as e:
        return wan_failed(ctx, run, e)
    finally:
        drop_tree(tmp)
        ctx.clear_output()
    report_wan_run(ctx, run)
    return run


# ---- the share test ------------------------------------------------------------------

@dataclass
class ShareRun:
    profile: str
    tool: str                 # p2p-transfer's label
    cc: str                   # OS TCP congestion control in both hosts
    seconds: float            # asked
    link_mibps: float | None
    commands: list[str] = field(default_factory=list)
    overlap: float | None = None   # seconds both flows were measured moving
    ours: int | None = None        # bytes p2p-transfer moved within the overlap
    theirs: int | None = None      # bytes the Cubic iperf3 flow moved within it
    stats: str = NOT_MEASURED
    note: str = ""
    status: str = "ok"

    def share(self) -> float | None:
        total = (self.ours or 0) + (self.theirs or 0)
        return self.ours / total if self.ours is not None and total else None

    def rate(self, n: int | None) -> float | None:
        return n / MiB / self.overlap if n is not None and self.overlap else None


def p2p_json_done(path: Path) -> int:
    """The last `done_bytes` (or `bytes` of `done`) of a --json receiver so far."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        if '"progress"' not in line and '"done"' not in line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "progress":
            return int(obj.get("done_bytes") or 0)
        if obj.get("event") == "done":
            return int(obj.get("bytes") or 0)
    return 0


def iperf_received(wan: WanLink) -> int:
    """bytes_received of the iperf3 server's data connection in h2 (`ss -ti`: the kernel's
    own count, exact at the moment it is read)."""
    r = run_quiet(wan.in2(["ss", "-tinH", "state", "established",
                           f"( sport = :{WAN_IPERF_PORT} )"]), timeout=30)
    found = [int(n) for n in re.findall(r"bytes_received:(\d+)", r.stdout)]
    return max(found, default=0)


def measure_wan_share(ctx: "Context", wan: WanLink, ds: Dataset, transport: str,
                      cc: str) -> ShareRun:
    """p2p-transfer (receive in h2 with --json, send in h1 of a file longer than the
    test) and one iperf3 flow with -C cubic (server in h2, client in h1) started
    together, for --share-seconds. Every WAN_SHARE_TICK s: p2p-transfer's bytes from the
    receiver's last `progress` event, iperf3's from its connection's bytes_received.
    Each one's share is over the overlap: from the first sample where both have moved
    bytes to the last one within the time asked."""
    binary = ctx.args.binary
    has_transport = supports_transport(ctx, binary)
    seconds = ctx.args.share_seconds
    run = ShareRun(wan.profile.name, wan_p2p_label(transport, has_transport), cc, seconds,
                   wan.profile.mibps)
    if transport == "quic" and not has_transport:
        run.status = QUIC_NA
        print(f"  share {run.tool}: {run.status}", flush=True)
        return run
    name = ctx.log_name(f"wan-{wan.profile.name}-share-{transport}-{cc}")
    targs = ["--transport", transport] if has_transport else []
    children: list[Child] = []
    try:
        out = ctx.fresh_output()
        code = next_code(ctx) if supports_code(ctx, binary) else None
        pair = ["--code", code] if code else []
        recv_argv = [str(binary), "receive", "--json", "--output", str(out), "--port", "0",
                     "--bind", wan.ip2, *pair, *targs]
        recv = ctx.procs.start(f"{name}-receive", wan.in2(recv_argv),
                               env=p2p_env(ctx, "receive"))
        children.append(recv)
        addr = wait_listening(recv, 30, wan.ip2)
        server_argv = ["iperf3", "-s", "-1", "--forceflush", "-B", wan.ip2, "-p",
                       str(WAN_IPERF_PORT)]
        server = ctx.procs.start(f"{name}-iperf3-server", wan.in2(server_argv))
        children.append(server)
        wait_for_text(server, server.out, "Server listening", 20)
        client_argv = ["iperf3", "-c", wan.ip2, "-p", str(WAN_IPERF_PORT), "-C", "cubic",
                       "-t", str(seconds + 2), "-i", "0"]
        send_argv = [str(binary), "send", str(ds.path), "--peer", addr, *pair, *targs]
        run.commands += [
            env_prefix(ctx, "receive") + shlex.join(wan.in2(recv_argv))
            + f"    # → listening on {addr}",
            shlex.join(wan.in2(server_argv)),
            "# then together:",
            shlex.join(wan.in1(client_argv)),
            env_prefix(ctx, "send") + shlex.join(wan.in1(send_argv))
            + f"    # stopped (SIGTERM) after {seconds} s",
        ]
        before = wan.snapshot()
        t0 = time.perf_counter()
        client = ctx.procs.start(f"{name}-iperf3-client", wan.in1(client_argv))
        children.append(client)
        send = ctx.procs.start(f"{name}-send", wan.in1(send_argv), env=p2p_env(ctx, "send"))
        children.append(send)
        samples: list[tuple[float, int, int]] = []
        ended = ""
        tick = t0
        while True:
            tick += WAN_SHARE_TICK
            if tick > t0 + seconds:
                break
            sleep_until(tick)
            now = time.perf_counter()
            samples.append((now, p2p_json_done(recv.out), iperf_received(wan)))
            if send.exited() or recv.exited():
                ended = f"p2p-transfer ended after {now - t0:.1f} s"
                break
            if client.exited():
                ended = f"iperf3 ended after {now - t0:.1f} s"
                break
        for c in (send, recv):
            ctx.procs.stop(c, grace=5.0)
        exits = ctx.procs.wait([client], 30)
        ctx.procs.wait([server], 10)
        run.stats = wan.fmt_stats(wan.stats_diff(before, wan.snapshot()))
        both = [i for i, (_, a, b) in enumerate(samples) if a > 0 and b > 0]
        if not both or both[0] == len(samples) - 1:
            raise BenchError("the two flows were never seen moving bytes together"
                             + (f" ({ended})" if ended else "")
                             + f"\niperf3 client:\n{tail(client.err)}\n"
                               f"receiver:\n{tail(recv.err)}")
        (ta, pa, ia), (tb, pb, ib) = samples[both[0]], samples[-1]
        run.overlap, run.ours, run.theirs = tb - ta, pb - pa, ib - ia
        notes = [f"both moving from {ta - t0:.1f} s to {tb - t0:.1f} s after the start"]
        if ended:
            notes.append(ended)
        seen, problem = check_transport(send, transport, has_transport)
        if problem:
            raise BenchError(problem)
        notes.insert(0, f"p2p-transfer over {seen}")
        e = exits[client.name]
        if e.timed_out or e.returncode != 0:
            notes.append(f"iperf3 client exit {fmt_exit(e)}: {last_line(e.err) or ''}")
        run.note = "; ".join(notes)
        share = run.share()
        print(f"  share {run.tool} vs iperf3 -C cubic ({cc}): "
              f"{fmt_num(run.rate(run.ours), '.2f')} vs {fmt_num(run.rate(run.theirs), '.2f')} "
              f"MiB/s over {run.overlap:.1f} s; p2p-transfer's share "
              f"{fmt_num(share * 100 if share is not None else None)}%", flush=True)
    except BenchError as e:
        run.status = f"could not be run: {str(e).splitlines()[0]}"
        print(f"\n!!! share {run.tool} / {run.profile}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"share {run.tool} / {run.profile}: {e}")
    finally:
        for c in children:
            if c.returncode is None:
                ctx.procs.stop(c, grace=2.0)
        ctx.clear_output()
    return run


# ---- one profile -----------------------------------------------------------------------

@dataclass
class WanProfileResult:
    profile: WanProfile
    link_line: str = ""
    link_commands: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    runs: list[WanRun] = field(default_factory=list)
    shares: list[ShareRun] = field(default_factory=list)
    emulator_stats: str = ""   # its last counters, over the whole profile
    error: str = ""


def run_wan_profile(ctx: "Context", profile: WanProfile, datasets: dict[str, Dataset],
                    share_ds: Dataset | None, extras: dict[str, str]) -> WanProfileResult:
    """Brings the link up, runs every row of the profile across it, tears it down."""
    args = ctx.args
    res = WanProfileResult(profile)
    wan = WanLink(ctx, profile, args.wan_emulator, args.wan_seed)
    try:
        print(f"\n== WAN profile {profile.label}", flush=True)
        wan.up()
        res.link_line, res.link_commands = wan.ready_line, wan.commands
        res.sysctls = wan.sysctls()
        sshd, sshd_why, wh, wh_why = None, "", None, ""
        if not args.wan_p2p_only:
            sshd, sshd_why, wh, wh_why = start_comparison_servers(ctx, extras, wan)
        for ds in datasets.values():
            for i in range(args.repeat):
                for cc in WAN_CCS:
                    print(f"\n-- {profile.name}, {ds.label}, TCP congestion control "
                          f"{cc}" + (f" (run {i + 1} of {args.repeat})"
                                     if args.repeat > 1 else ""), flush=True)
                    in_force = wan.set_congestion(cc)
                    res.runs.append(measure_wan_p2p(ctx, wan, ds, "quic", in_force))
                    res.runs.append(measure_wan_p2p(ctx, wan, ds, "tcp", in_force))
                    if not args.wan_p2p_only:
                        res.runs.append(measure_wan_ssh(ctx, wan, ds, "scp", in_force,
                                                        sshd, sshd_why))
                        res.runs.append(measure_wan_ssh(ctx, wan, ds, "rsync", in_force,
                                                        sshd, sshd_why))
                        res.runs.append(measure_wan_wormhole(ctx, wan, ds, in_force, wh,
                                                             wh_why))
        if share_ds is not None:
            in_force = wan.set_congestion("cubic")
            print(f"\n-- {profile.name}, share test: {args.share_seconds} s against one "
                  f"iperf3 -C cubic flow (TCP congestion control {in_force})", flush=True)
            for transport in ("quic", "tcp"):
                res.shares.append(measure_wan_share(ctx, wan, share_ds, transport, in_force))
    except BenchError as e:
        res.error = str(e).splitlines()[0]
        print(f"\n!!! WAN profile {profile.name}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"WAN profile {profile.name}: {e}")
    finally:
        wan.down()
        if wan.latest:
            res.emulator_stats = wan.fmt_stats(wan.stats_diff({}, wan.latest))
    return res


# ---- targets and report ----------------------------------------------------------------

def wan_rate(runs: list[WanRun]) -> tuple[float | None, bool]:
    """(MiB/s, finished): the median of the runs that completed, else the best of what
    those that did not finish moved per second (finished=False), else None."""
    done = [r.mibps() for r in runs if r.mibps() is not None]
    if done:
        return statistics.median(done), True
    partial = [r.partial_mibps() for r in runs if r.partial_mibps() is not None]
    return (max(partial), False) if partial else (None, False)


def wan_ours(res: WanProfileResult, cc: str, ds_key: str = "big") -> tuple[list[WanRun], str]:
    """p2p-transfer's rows that the targets use: QUIC where the binary has it, else TCP."""
    ran = [r for r in res.runs if r.dataset == ds_key and r.cc == cc and r.status == "ok"]
    quic = [r for r in ran if r.key == "quic"]
    if quic:
        return quic, "QUIC"
    return [r for r in ran if r.key == "tcp"], f"TCP (QUIC {QUIC_NA})"


def wan_targets(results: list[WanProfileResult]) -> list[Target]:
    by_name = {res.profile.name: res for res in results}
    targets: list[Target] = []
    for name, need in WAN_TARGETS.items():
        profile = WAN_PROFILES[name]
        title = (f"{name}: p2p-transfer ≥ {need:.0%} of the link (≥ {need * profile.mibps:.1f} "
                 f"MiB/s) on {WAN_SIZE_LABEL}, whatever the OS's TCP congestion control")
        res = by_name.get(name)
        if res is None:
            targets.append(Target(title, "n.a.", "profile not run (--wan " + name + ")"))
            continue
        parts, verdicts = [], []
        for cc in WAN_CCS:
            runs, what = wan_ours(res, cc)
            rate, finished = wan_rate(runs)
            if rate is None or not finished:
                verdicts.append("FAIL" if runs else "n.a.")
                parts.append(f"{cc}: {what} " + ("did not complete" if runs else "not run"))
                continue
            verdicts.append("PASS" if rate >= need * profile.mibps else "FAIL")
            parts.append(f"{cc}: {what} {rate:.2f} MiB/s = {rate / profile.mibps:.0%}")
        verdict = ("FAIL" if "FAIL" in verdicts else "n.a." if "n.a." in verdicts
                   else "PASS")
        targets.append(Target(title, verdict, "; ".join(parts)))
        if name != "intercontinental":
            continue
        for cc, factor in WAN_VS_OTHERS.items():
            title = (f"{name}: p2p-transfer ≥ {factor:g}× the best of scp / rsync / "
                     f"magic-wormhole with the OS's {cc}")
            runs, what = wan_ours(res, cc)
            ours, ours_done = wan_rate(runs)
            best, best_name, best_done = None, "", True
            for key, label in (("scp", "scp"), ("rsync", "rsync"),
                               ("wormhole", "magic-wormhole")):
                rate, done = wan_rate([r for r in res.runs if r.key == key and r.cc == cc
                                       and r.dataset == "big" and r.status == "ok"])
                if rate is not None and (best is None or rate > best):
                    best, best_name, best_done = rate, label, done
            if ours is None or not ours_done or best is None:
                targets.append(Target(title, "n.a." if best is None else "FAIL",
                                      f"p2p-transfer ({what}): "
                                      + (f"{ours:.2f} MiB/s" if ours_done and ours
                                         else "did not complete")
                                      + f"; best other: {fmt_num(best, '.3f')}"))
                continue
            detail = (f"{what} {ours:.2f} MiB/s vs {best_name} {best:.3f} MiB/s"
                      + ("" if best_done else " (did not finish: what arrived ÷ the time "
                         "it had)") + f" = {ours / best:.1f}× (need ≥ {factor:g}×)")
            targets.append(Target(title, "PASS" if ours >= factor * best else "FAIL", detail))
    return targets


WAN_SIZE_LABEL = "the big file"
WAN_HEADERS = ["#", "tool", "data set", "OS TCP CC (both hosts)", "exit", "seconds", "MiB/s",
               "fraction of link", "SHA-256 verified", "emulator, this run", "notes"]
WAN_ALIGN = ["---:", "---", "---", "---", "---:", "---:", "---:", "---:", "---", "---", "---"]
SHARE_HEADERS = ["p2p-transfer", "OS TCP CC (both hosts)", "overlap s", "p2p-transfer MiB/s",
                 "iperf3 -C cubic MiB/s", "p2p-transfer's share", "sum ÷ link",
                 "emulator, this test", "notes"]
SHARE_ALIGN = ["---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---"]


def wan_rows(runs: list[WanRun]) -> list[list[str]]:
    rows = []
    for i, r in enumerate(runs, 1):
        if r.status != "ok":
            rows.append([str(i), r.tool, r.dataset_label, r.cc, NOT_MEASURED, NOT_MEASURED,
                         NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED, r.status])
            continue
        rate, frac = r.mibps(), r.fraction()
        if rate is not None:
            shown = f"{rate:.2f}"
        elif r.timed_out:
            shown = (f"did not finish (killed after {fmt_num(r.seconds, '.0f')} s; "
                     f"{(r.arrived or 0) / MiB:.1f} MiB arrived)")
        else:
            shown = "— (failed)"
        rows.append([str(i), r.tool, r.dataset_label, r.cc, r.exits, fmt_num(r.seconds),
                     shown, f"{frac:.1%}" if frac is not None else NOT_MEASURED,
                     r.verified, r.stats, r.note.rstrip("; ")])
    return rows


def share_rows(shares: list[ShareRun]) -> list[list[str]]:
    rows = []
    for s in shares:
        if s.status != "ok":
            rows.append([s.tool, s.cc, *([NOT_MEASURED] * 6), s.status])
            continue
        ours, theirs = s.rate(s.ours), s.rate(s.theirs)
        share = s.share()
        total = (ours or 0) + (theirs or 0)
        rows.append([s.tool, s.cc, fmt_num(s.overlap), fmt_num(ours, ".2f"),
                     fmt_num(theirs, ".2f"), f"{share:.1%}" if share is not None else "n/a",
                     f"{total / s.link_mibps:.1%}" if s.link_mibps else NOT_MEASURED,
                     s.stats, s.note])
    return rows


def md_table(headers: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |"
              for r in rows)]


def write_wan_report(path: Path, *, command: str, started: datetime.datetime, machine: dict,
                     binary: str, emulator: str, extras: dict[str, str],
                     datasets: dict[str, Dataset], share_ds: Dataset | None,
                     results: list[WanProfileResult], targets: list[Target],
                     ctx: Context) -> None:
    args = ctx.args
    try:
        load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load_end = "unknown"
    has_transport = supports_transport(ctx, args.binary)
    lines = [
        "# Benchmarks: WAN links (emulated)",
        "",
        "Produced by `benchmark.py --wan PROFILE`; rerun it to refresh this page (it "
        "overwrites it). The loopback benchmarks are in [benchmarks.md](benchmarks.md), the "
        "slow-link ones in [benchmarks-slow-link.md](benchmarks-slow-link.md).",
        "",
        "Issue 12 (\"Full speed over long, lossy links\"): over a long link p2p-transfer was "
        "only as fast as the operating system's TCP — about half the link with BBR and about "
        "1% of it with Cubic on a 100 Mbit/s, 150 ms, 0.5% loss link. This page runs "
        "p2p-transfer over QUIC and over TCP (with the OS's BBR and Cubic) side by side "
        "with scp, rsync over ssh and magic-wormhole across the same emulated link, and a "
        "share test against one Cubic TCP flow.",
        "",
        f"- **Date:** {started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}, data and output on {machine['filesystem']}; "
        f"load average (1, 5, 15 min) at the start {machine['load']}, at the end "
        f"{load_end} (the emulator forwards every packet in user space on the same CPUs: "
        "other work on the machine skews every figure)",
        f"- **p2p-transfer:** {binary}; "
        + ("has `--transport auto|quic|tcp`" if has_transport else
           f"has no `--transport` (QUIC rows: {QUIC_NA}; its TCP rows run without the "
           "option)"),
        f"- **p2p-transfer runs** {security_line(ctx, args.binary)}",
        f"- **WAN emulator:** {emulator}",
    ]
    for k, v in extras.items():
        lines.append(f"- **{k}:** {v}")
    lines += [
        "- **Data sets:** " + "; ".join(ds.label for ds in datasets.values())
        + (f"; share test: {share_ds.label} (longer than the test)" if share_ds else ""),
        f"- **Repeats:** {args.repeat}; every run is a row of its own; the targets use the "
        "median of the runs that completed",
        f"- **Time limit per run:** {args.wan_timeout:.0f} s (`--wan-timeout`); a run "
        "still going then is killed and reported as \"did not finish\", with the bytes "
        "that had arrived",
        "",
        "## Targets",
        "",
        "The issue's targets, computed from this run (the big file; p2p-transfer's QUIC "
        "rows where the binary has QUIC, else its TCP rows). `n.a.`: not measured in this "
        "run.",
        "",
        *(f"- **{t.verdict}** {t.name}: {t.detail}" for t in targets),
        "",
    ]
    for res in results:
        p = res.profile
        lines += [f"## Profile {p.label}", ""]
        if res.link_line:
            lines.append(f"- **Link:** `{res.link_line}`")
        if res.emulator_stats:
            lines.append(f"- **Emulator's counters at the end of the profile** (every run "
                         f"and set-up): {res.emulator_stats}")
        for key, value in res.sysctls.items():
            lines.append(f"- **{key}** in the hosts (at the start): `{value}`")
        lines.append("- **OS TCP congestion control:** set in both hosts' namespaces "
                     "(`sysctl -w net.ipv4.tcp_congestion_control=…` inside each) before "
                     "each group of rows; the column shows what was read back")
        if res.error:
            lines.append(f"- **Stopped early:** {res.error}")
        lines += ["", "### Transfers", "",
                  "Seconds: from the start of the sender (the receiver or server is ready "
                  "before) until every end has exited (once one end has exited, the other "
                  f"gets {SLOW_GRACE:.0f} s). MiB/s = data set size ÷ seconds, only for runs "
                  "that completed (every process exited 0 and every file's SHA-256 matches "
                  "the source); fraction of link = MiB/s ÷ the link's rate in MiB/s. "
                  "`emulator, this run`: the emulator's counters (per direction) over the "
                  "run (set-up and handshakes included).", "",
                  *md_table(WAN_HEADERS, WAN_ALIGN, wan_rows(res.runs)), ""]
        if res.shares:
            lines += ["### Share test", "",
                      f"p2p-transfer and one `iperf3 -C cubic` flow started together on the "
                      f"same link for {args.share_seconds} s (both from h1 to h2). Bytes: "
                      "p2p-transfer's from the receiver's last `progress` event "
                      "(`done_bytes`: verified chunks), iperf3's from its connection's "
                      "`bytes_received` (`ss -ti` in h2), sampled every "
                      f"{WAN_SHARE_TICK:g} s; the overlap runs from the first sample where "
                      "both had moved bytes to the last one. Reported, not a target.", "",
                      *md_table(SHARE_HEADERS, SHARE_ALIGN, share_rows(res.shares)), ""]
        lines += ["### Commands", "",
                  "How the link was made, then the exact command lines of each row (paths "
                  "are those of this run's work directory).", "", "```",
                  *res.link_commands, "```", ""]
        for i, r in enumerate(res.runs, 1):
            if r.commands:
                lines += [f"{i}. {r.tool}, {r.dataset}, {r.cc}:", "", "   ```",
                          *(f"   {c}" for c in r.commands), "   ```", ""]
        for s in res.shares:
            if s.commands:
                lines += [f"- share test, {s.tool}, {s.cc}:", "", "   ```",
                          *(f"   {c}" for c in s.commands), "   ```", ""]
    lines += [
        "## How it is measured",
        "",
        "- The link: `p2p-wan up --prefix P --profile NAME` (the project's own emulator, "
        "`tests/wan`) makes two network namespaces, `P-h1` (10.201.0.1) and `P-h2` "
        "(10.201.0.2), joined through a forwarder in user space that applies per direction "
        "the profile's bottleneck rate with a tail-drop queue, one-way delay (half the "
        "round trip) and random loss, and prints its counters (forwarded, dropped by loss, "
        "dropped by the queue) every second. A fresh link is made for each profile and torn "
        "down after it (also on Ctrl+C or an error). The `veth` profile is two namespaces "
        "with a plain veth pair, no emulator: it only checks the script.",
        "- Everything runs inside the two hosts (`ip netns exec`): the receiving or serving "
        "end in h2 (p2p-transfer `receive --bind 10.201.0.2`, sshd, the magic-wormhole "
        "mailbox server and transit relay, `wormhole receive`, the iperf3 server), the "
        "sending end in h1. The data cross the emulated link once, h1 → h2.",
        "- The OS's TCP congestion control is a per-namespace setting: it is set in both "
        "hosts for each group of rows (BBR, then Cubic); p2p-transfer's QUIC rows do not "
        "use it and run under both only so that each group is complete.",
        "- p2p-transfer: `--transport quic` and `--transport tcp` where the binary has the "
        "option; its sender and receiver keep device keys and history in separate data "
        f"folders (`WORKDIR/{P2P_DATA_DIRS['send']}`, `WORKDIR/{P2P_DATA_DIRS['receive']}`), "
        "each run paired by a fresh one-time code, as two machines would be.",
        "- scp (`scp -q -r`) and rsync (`rsync -a -e ssh`) log in with generated keys to an "
        "sshd started for the run inside h2 (OpenSSH default cipher, no compression).",
        "- magic-wormhole: `--no-listen` on both ends, so every byte goes through the "
        "transit relay in h2 (the sender in h1 zips a folder into its TMPDIR first).",
        "- Every run gets an empty output folder; `sync` runs (untimed) before it starts. "
        "The files are random (incompressible), generated by the script.",
    ]
    write_markdown(ctx, path, lines)


def wan_profiles(args: argparse.Namespace) -> list[WanProfile]:
    return [WAN_PROFILES[name] for name in args.wan]


def emulator_info(args: argparse.Namespace, profiles: list[WanProfile]) -> str:
    if all(p.mbit is None for p in profiles):
        return "none (the `veth` profile: a plain veth pair)"
    return f"`{args.wan_emulator}` ({binary_info(args.wan_emulator)})"


def wan_main(ctx: Context, *, command: str, started: datetime.datetime,
             machine: dict, binary: str) -> int:
    """--wan PROFILE…: every profile's rows and share test, printed and written to
    --output (default docs/benchmarks-wan.md)."""
    global WAN_SIZE_LABEL
    args = ctx.args
    profiles = wan_profiles(args)
    if any(p.mbit is not None for p in profiles):
        ensure_wan_emulator(args.wan_emulator)
    big = make_random_file(ctx.data_dir, "wan-" + human_size(args.wan_size).replace(" ", ""),
                           args.wan_size)
    datasets: dict[str, Dataset] = {"big": dataclasses.replace(big, key="big")}
    WAN_SIZE_LABEL = f"the {human_size(args.wan_size)} file" + (
        "" if args.wan_size == parse_size(WAN_SIZE) else
        f" (the issue's targets are for {human_size(parse_size(WAN_SIZE))})")
    if not args.skip_small:
        datasets["small"] = make_small_dataset(ctx.data_dir, args.small_count)
    share_ds = None
    if args.wan_share:
        rates = [p.mibps for p in profiles if p.mibps] or [WAN_SHARE_FILE_MAX / MiB / 60]
        size = min(WAN_SHARE_FILE_MAX,
                   int(max(rates) * MiB * (args.share_seconds + 15)) // MiB * MiB)
        share_ds = make_random_file(ctx.data_dir, f"wan-share-{size // MiB}M", size)
    extras: dict[str, str] = {}
    if share_ds is not None:
        try:
            ensure_apt_packages({"iperf3": "/usr/bin/iperf3"})
        except BenchError as e:
            print(f"share test skipped: {e}", file=sys.stderr, flush=True)
            ctx.failures.append(f"share test skipped: {e}")
            share_ds = None
    if shutil.which("iperf3"):
        r = run_quiet(["iperf3", "--version"], timeout=30)
        extras["iperf3"] = r.stdout.splitlines()[0] if r.stdout else "?"
    extras["Host's own tcp_congestion_control (not used: each namespace has its own)"] = \
        read_congestion()
    results = [run_wan_profile(ctx, p, datasets, share_ds, extras) for p in profiles]
    targets = wan_targets(results)
    for res in results:
        print(f"\n{res.profile.label}")
        rows = wan_rows(res.runs)
        headers = WAN_HEADERS[:9]
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
                  for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        for row in share_rows(res.shares):
            print("  share: " + "  ".join(row[:7]))
    print("\nTargets:")
    for t in targets:
        print(f"  {t.verdict:<5} {t.name}: {t.detail}")
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    write_wan_report(output, command=command, started=started, machine=machine,
                     binary=binary, emulator=emulator_info(args, profiles), extras=extras,
                     datasets=datasets, share_ds=share_ds, results=results,
                     targets=targets, ctx=ctx)
    print(f"\nwrote {output}")
    if ctx.failures:
        print(f"\n!!! {len(ctx.failures)} run(s) FAILED; see above and the logs in "
              f"{ctx.log_dir}", file=sys.stderr)
        return 1
    return 0


def wan_smoke_main(ctx: Context) -> int:
    """--wan-smoke: a few MiB over `lossy` (or the one --wan profile given), p2p-transfer
    only (QUIC where the binary has it, and TCP under Cubic), each verified. Prints the
    rates; writes no report. Exit 0 only if every run completed and verified."""
    args = ctx.args
    profile = wan_profiles(args)[0] if args.wan else WAN_PROFILES[WAN_SMOKE_PROFILE]
    if profile.mbit is not None:
        ensure_wan_emulator(args.wan_emulator)
    ds = make_random_file(ctx.data_dir, f"wan-smoke-{WAN_SMOKE_SIZE // MiB}M", WAN_SMOKE_SIZE)
    wan = WanLink(ctx, profile, args.wan_emulator, args.wan_seed)
    runs: list[WanRun] = []
    try:
        print(f"\n== WAN smoke test: {ds.label} over {profile.label}", flush=True)
        wan.up()
        cc = wan.set_congestion("cubic")
        for transport in ("quic", "tcp"):
            runs.append(measure_wan_p2p(ctx, wan, ds, transport, cc))
    except BenchError as e:
        print(f"\n!!! WAN smoke test: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"WAN smoke test: {e}")
    finally:
        wan.down()
    for r in runs:
        if r.status == QUIC_NA:
            continue
        if not r.done:
            ctx.failures.append(f"{r.tool}: did not complete ({r.note or r.verified})")
        print(f"{'PASS' if r.done else 'FAIL'}  {r.tool} over {profile.name}: "
              + (f"{r.mibps():.2f} MiB/s" + (f" ({r.fraction():.0%} of link)"
                                             if r.fraction() is not None else "")
                 if r.done else "did not complete")
              + f", verified: {r.verified}; emulator: {r.stats}")
    return 1 if ctx.failures or not any(r.done for r in runs) else 0


# --------------------------------------------------------------------------------------
# Relay (issue 13): the same emulated link, direct and through coturn
# --------------------------------------------------------------------------------------

DEFAULT_RELAY_OUTPUT = REPO / "docs" / "benchmarks-relay.md"
RELAY_REPEAT = 3                    # --repeat default with --relay
RELAY_CCS = "bbr,cubic"             # --relay-cc default
RELAY_TARGET = 0.80                 # relay ÷ direct (issue 13)
RELAY_TURN_PORT = 3478              # coturn in h2
RELAY_RDV_PORT = 4000               # the rendezvous in h2 (TCP mailboxes, UDP STUN)
RELAY_MODES = ["direct", "relay"]   # P2P_PATH on both sides
RELAY_OK_PATHS = {"direct": {"direct", "lan"}, "relay": {"relay"}}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_ccs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not re.fullmatch(r"[a-z0-9_]+", n)]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"not a list of congestion controls: {text!r}")
    return list(dict.fromkeys(names))


def proc_cpu(pid: int | None) -> float | None:
    """utime + stime of a running process (all its threads), seconds; None if gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def json_events(path: Path) -> list[dict]:
    events = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return events
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


def wait_for_code(child: Child, timeout: float) -> str:
    """The code of the `{"event":"code"}` line a `send --rendezvous --json` prints first."""
    deadline = time.monotonic() + timeout
    while True:
        for e in json_events(child.out):
            if e.get("event") == "code" and isinstance(e.get("code"), str):
                return e["code"]
        if child.exited():
            raise BenchError(f"{child.name} exited before printing a code:\n{tail(child.err)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} printed no code within {timeout:.0f}s\n"
                             f"{tail(child.err)}")
        time.sleep(0.02)


@dataclass
class RelayRun:
    profile: str
    mode: str                      # "direct" / "relay" (P2P_PATH on both sides)
    cc: str
    file_bytes: int
    link_mibps: float | None
    commands: list[str] = field(default_factory=list)
    exits: str = "n/a"
    seconds: float | None = None   # start of the sender → both ends exited
    done: bool = False
    verified: str = "n/a"
    recv_bps: int | None = None    # the receiver's `done` bytes_per_second
    recv_paths: list[str] = field(default_factory=list)
    send_paths: list[str] = field(default_factory=list)
    path_ok: bool = False
    transport: str = "?"           # the sender's "connected to … over X (path)"
    sender_cpu: float | None = None
    receiver_cpu: float | None = None
    coturn_cpu: float | None = None
    emulator_cpu: float | None = None
    stats: str = NOT_MEASURED
    note: str = ""
    status: str = "ok"

    def mibps(self) -> float | None:
        return self.file_bytes / MiB / self.seconds if self.done and self.seconds else None

    def xfer_mibps(self) -> float | None:
        return self.recv_bps / MiB if self.done and self.recv_bps else None


@dataclass
class RelayProfileResult:
    profile: WanProfile
    link_line: str = ""
    link_commands: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    runs: list[RelayRun] = field(default_factory=list)
    coturn_total: str = ""
    error: str | None = None


class RelayServers:
    """coturn (use-auth-secret, the secret in its config file) and the rendezvous (the
    same secret in --turn-secret-file) in h2, on h2's address, like a public server."""

    def __init__(self, ctx: "Context", wan: WanLink):
        self.ctx, self.wan = ctx, wan
        self.dir = ctx.workdir / f"relay-{wan.prefix}"
        self.coturn: Child | None = None
        self.rdv: Child | None = None
        self.addr = f"{wan.ip2}:{RELAY_RDV_PORT}"
        self.commands: list[str] = []

    def start(self) -> None:
        import secrets
        turnserver = shutil.which("turnserver")
        if turnserver is None:
            raise BenchError("turnserver (coturn) is not installed: apt-get install coturn")
        drop_tree(self.dir)
        self.dir.mkdir(parents=True)
        secret = secrets.token_hex(24)
        secret_file = self.dir / "turn-secret"
        conf = self.dir / "turnserver.conf"
        for path, text in ((secret_file, secret + "\n"), (conf, "\n".join([
                f"listening-ip={self.wan.ip2}", f"relay-ip={self.wan.ip2}",
                f"listening-port={RELAY_TURN_PORT}", "min-port=40000", "max-port=60000",
                "use-auth-secret", f"static-auth-secret={secret}", "realm=p2p.bench",
                "no-tls", "no-dtls", "no-cli", "no-multicast-peers",
                f"userdb={self.dir / 'turndb'}", f"pidfile={self.dir / 'turnserver.pid'}",
                "log-file=stdout", "simple-log", ""]))):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        argv = [turnserver, "-c", str(conf)]
        self.commands.append(shlex.join(self.wan.in2(argv))
                             + "    # turnserver.conf: " + ", ".join(
                                 ln if not ln.startswith("static-auth-secret") else
                                 "static-auth-secret=(random, 48 hex)"
                                 for ln in conf.read_text().splitlines()
                                 if ln and not ln.startswith(("userdb", "pidfile"))))
        self.coturn = self.ctx.procs.start(f"coturn-{self.wan.profile.name}",
                                           self.wan.in2(argv))
        self.wan.wait_for_port(RELAY_TURN_PORT, 30, self.coturn)
        binary = self.ctx.args.binary
        argv = [str(binary), "rendezvous", "--listen", self.addr, "--turn",
                f"{self.wan.ip2}:{RELAY_TURN_PORT}", "--turn-secret-file", str(secret_file)]
        self.commands.append(shlex.join(self.wan.in2(argv)))
        self.rdv = self.ctx.procs.start(f"rendezvous-{self.wan.profile.name}",
                                        self.wan.in2(argv))
        wait_for_text(self.rdv, self.rdv.err, "rendezvous listening on", 30)

    def cpu(self) -> float | None:
        return proc_cpu(self.coturn.pid if self.coturn else None)

    def stop(self) -> None:
        for child in (self.rdv, self.coturn):
            if child is not None:
                self.ctx.procs.stop(child, grace=3.0)
        drop_tree(self.dir)


def measure_relay_once(ctx: "Context", wan: WanLink, srv: RelayServers, ds: Dataset,
                       mode: str, cc: str, i: int) -> RelayRun:
    """`send FILE --rendezvous H2 --json` in h1, `receive CODE --rendezvous H2 --json` in
    h2, P2P_PATH=mode on both; time: start of the sender → both ends exited."""
    binary = ctx.args.binary
    run = RelayRun(wan.profile.name, mode, cc, ds.total_bytes, wan.profile.mibps)
    name = ctx.log_name(f"relay-{wan.profile.name}-{mode}-{cc}-{i}")
    try:
        out = ctx.fresh_output()
        envs = {side: dict(p2p_env(ctx, side), P2P_PATH=mode) for side in ("send", "receive")}
        send_argv = [str(binary), "send", str(ds.path), "--rendezvous", srv.addr, "--json"]
        os.sync()
        before = wan.snapshot()
        cpu0 = (srv.cpu(), proc_cpu(wan.child.pid if wan.child else None))
        t0 = time.perf_counter()
        send = ctx.procs.start(f"{name}-send", wan.in1(send_argv), env=envs["send"])
        try:
            code = wait_for_code(send, 30)
        except BenchError:
            ctx.procs.stop(send)
            raise
        recv_argv = [str(binary), "receive", code, "--rendezvous", srv.addr, "--output",
                     str(out), "--json"]
        run.commands += [f"P2P_PATH={mode} " + env_prefix(ctx, "send")
                         + shlex.join(wan.in1(send_argv)) + f"    # → code {code}",
                         f"P2P_PATH={mode} " + env_prefix(ctx, "receive")
                         + shlex.join(wan.in2(recv_argv))]
        recv = ctx.procs.start(f"{name}-receive", wan.in2(recv_argv), env=envs["receive"])
        exits = wait_ends(ctx, [send, recv], ctx.args.wan_timeout)
        es, er = exits[send.name], exits[recv.name]
        cpu1 = (srv.cpu(), proc_cpu(wan.child.pid if wan.child else None))
        run.seconds = max(es.end, er.end) - t0
        run.exits = f"{fmt_exit(es)} / {fmt_exit(er)}"
        run.sender_cpu, run.receiver_cpu = es.cpu_seconds, er.cpu_seconds
        if cpu0[0] is not None and cpu1[0] is not None:
            run.coturn_cpu = cpu1[0] - cpu0[0]
        if cpu0[1] is not None and cpu1[1] is not None:
            run.emulator_cpu = cpu1[1] - cpu0[1]
        errors, extras = verify_output(ds, out)
        run.verified = ("yes" + (f" ({len(extras)} other file(s))" if extras else "")
                        if not errors else f"NO: {errors[0]}")
        rev, sev = json_events(recv.out), json_events(send.out)
        run.recv_paths = [str(e.get("path")) for e in rev if e.get("event") == "path"]
        run.send_paths = [str(e.get("path")) for e in sev if e.get("event") == "path"]
        done = [e for e in rev if e.get("event") == "done"]
        if done and isinstance(done[-1].get("bytes_per_second"), int):
            run.recv_bps = done[-1]["bytes_per_second"]
        seen = set(run.recv_paths) | set(run.send_paths)
        run.path_ok = bool(run.recv_paths) and bool(run.send_paths) and \
            seen <= RELAY_OK_PATHS[mode]
        m = re.search(r"connected to \S+ over (\S+ \(\w+\))", send.err.read_text(errors="replace"))
        run.transport = m.group(1) if m else "?"
        clean = all(e.returncode == 0 and not e.timed_out for e in (es, er))
        run.done = clean and not errors and run.path_ok
        if not run.path_ok:
            run.note = (f"path events: sender {run.send_paths}, receiver {run.recv_paths} "
                        f"(want only {' or '.join(sorted(RELAY_OK_PATHS[mode]))})")
        if es.timed_out or er.timed_out:
            run.note = (f"did not finish in {ctx.args.wan_timeout:.0f} s: "
                        f"{bytes_under(out) / MiB:.1f} MiB arrived; " + run.note)
        elif not clean:
            for who, child in (("sender", send), ("receiver", recv)):
                line = last_line(child.err, "error") or last_line(child.err)
                if line:
                    run.note += f"{who}: `{line}`; "
        run.stats = wan.fmt_stats(wan.stats_diff(before, wan.snapshot()))
    except BenchError as e:
        run.status = f"could not be run: {str(e).splitlines()[0]}"
        ctx.failures.append(f"relay bench {wan.profile.name} {mode} ({cc}): {e}")
        print(f"\n!!! {wan.profile.name} {mode} ({cc}): {e}\n", file=sys.stderr, flush=True)
        return run
    finally:
        ctx.clear_output()
    if run.done:
        print(f"  {mode:<6} {cc:<5} run {i + 1}: {run.seconds:7.2f} s, "
              f"{run.mibps():6.2f} MiB/s wall, {fmt_num(run.xfer_mibps(), '.2f')} MiB/s "
              f"transfer; paths {'/'.join(run.recv_paths)}; {run.transport}; CPU s/r/coturn/"
              f"emu {fmt_num(run.sender_cpu)}/{fmt_num(run.receiver_cpu)}/"
              f"{fmt_num(run.coturn_cpu)}/{fmt_num(run.emulator_cpu)} s", flush=True)
    else:
        print(f"  {mode:<6} {cc:<5} run {i + 1}: FAILED exit {run.exits}, verified "
              f"{run.verified}; {run.note}", flush=True)
        ctx.failures.append(f"relay bench {wan.profile.name} {mode} ({cc}) run {i + 1}: exit "
                            f"{run.exits}, verified {run.verified}; {run.note}")
    return run


def run_relay_profile(ctx: "Context", profile: WanProfile, ds: Dataset) -> RelayProfileResult:
    args = ctx.args
    res = RelayProfileResult(profile)
    wan = WanLink(ctx, profile, args.wan_emulator, args.wan_seed)
    wan.prefix = f"br{uuid.uuid4().hex[:5]}"  # this mode's own namespaces: brXXXXX-h1/h2
    srv = RelayServers(ctx, wan)
    try:
        print(f"\n== relay vs direct over {profile.label}", flush=True)
        wan.up()
        res.link_line, res.link_commands = wan.ready_line, wan.commands
        srv.start()
        res.servers = srv.commands
        for cc in args.relay_cc:
            in_force = wan.set_congestion(cc)
            print(f"-- TCP congestion control {in_force} in both hosts", flush=True)
            for i in range(args.repeat):
                for mode in RELAY_MODES:  # interleaved: drift hits both alike
                    res.runs.append(measure_relay_once(ctx, wan, srv, ds, mode, in_force, i))
        res.sysctls = wan.sysctls()
        total = srv.cpu()
        if total is not None:
            res.coturn_total = f"{total:.1f} s of CPU over the whole profile"
    except BenchError as e:
        res.error = str(e).splitlines()[0]
        print(f"\n!!! relay profile {profile.name}: {e}\n", file=sys.stderr, flush=True)
        ctx.failures.append(f"relay profile {profile.name}: {e}")
    finally:
        srv.stop()
        wan.down()
    return res


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def relay_group(res: RelayProfileResult, cc: str, mode: str) -> list[RelayRun]:
    return [r for r in res.runs if r.cc == cc and r.mode == mode and r.status == "ok"]


def relay_summary_rows(results: list[RelayProfileResult]) -> list[list[str]]:
    rows = []
    for res in results:
        for cc in dict.fromkeys(r.cc for r in res.runs):
            for mode in RELAY_MODES:
                runs = relay_group(res, cc, mode)
                ok = [r for r in runs if r.done]
                wall, xfer = _median([r.mibps() for r in ok]), _median([r.xfer_mibps() for r in ok])
                link = res.profile.mibps
                paths = sorted({p for r in runs for p in r.recv_paths + r.send_paths})
                secs = _median([r.seconds for r in ok])
                pct = lambda v: (f"{v / secs:.0%}" if v is not None and secs else "n/a")
                rows.append([
                    f"`{res.profile.name}`", cc, mode, f"{len(ok)}/{len(runs)}",
                    fmt_num(wall, ".2f"), fmt_num(xfer, ".2f"),
                    f"{wall / link:.0%}" if wall and link else "n/a",
                    ", ".join(paths) or "none",
                    "; ".join(sorted({r.transport for r in runs})) or "?",
                    pct(_median([r.sender_cpu for r in ok])),
                    pct(_median([r.receiver_cpu for r in ok])),
                    pct(_median([r.coturn_cpu for r in ok])),
                    pct(_median([r.emulator_cpu for r in ok])),
                ])
    return rows


def relay_ratio_rows(results: list[RelayProfileResult]) -> tuple[list[list[str]], list[Target]]:
    rows, targets = [], []
    for res in results:
        for cc in dict.fromkeys(r.cc for r in res.runs):
            d = [r for r in relay_group(res, cc, "direct") if r.done]
            rl = [r for r in relay_group(res, cc, "relay") if r.done]
            dw, rw = _median([r.mibps() for r in d]), _median([r.mibps() for r in rl])
            dx, rx = _median([r.xfer_mibps() for r in d]), _median([r.xfer_mibps() for r in rl])
            wr = rw / dw if rw and dw else None
            xr = rx / dx if rx and dx else None
            verdict = "n.a." if wr is None else ("PASS" if wr >= RELAY_TARGET else "FAIL")
            rows.append([f"`{res.profile.name}`", cc, fmt_num(dw, ".2f"), fmt_num(rw, ".2f"),
                         fmt_num(wr, ".2f"), fmt_num(dx, ".2f"), fmt_num(rx, ".2f"),
                         fmt_num(xr, ".2f"), f"**{verdict}**"])
            targets.append(Target(f"relay ≥ {RELAY_TARGET:.0%} of direct, {res.profile.name} "
                                  f"({cc})", verdict,
                                  f"wall {fmt_num(rw, '.2f')} / {fmt_num(dw, '.2f')} MiB/s = "
                                  f"{fmt_num(wr, '.2f')}; transfer phase {fmt_num(xr, '.2f')}"))
    return rows, targets


def relay_run_rows(results: list[RelayProfileResult]) -> list[list[str]]:
    rows = []
    for res in results:
        for n, r in enumerate(res.runs, 1):
            if r.status != "ok":
                rows.append([f"`{r.profile}`", r.cc, r.mode, str(n), r.status, "", "", "",
                             "", "", "", ""])
                continue
            rows.append([f"`{r.profile}`", r.cc, r.mode, str(n), r.exits, fmt_num(r.seconds, ".2f"),
                         fmt_num(r.mibps(), ".2f"), fmt_num(r.xfer_mibps(), ".2f"),
                         "/".join(r.send_paths) + " · " + "/".join(r.recv_paths),
                         r.verified,
                         f"{fmt_num(r.sender_cpu)} / {fmt_num(r.receiver_cpu)} / "
                         f"{fmt_num(r.coturn_cpu)} / {fmt_num(r.emulator_cpu)}",
                         r.stats + (f"; {r.note}" if r.note else "")])
    return rows


def write_relay_report(path: Path, *, command: str, started: datetime.datetime, machine: dict,
                       binary: str, emulator: str, coturn: str, ds: Dataset,
                       results: list[RelayProfileResult], ctx: "Context") -> list[Target]:
    ratio_rows, targets = relay_ratio_rows(results)
    lines = [
        "# Relay vs direct over the emulated WAN (issue 13)",
        "",
        f"Generated by `benchmark.py --relay` on {started.strftime('%Y-%m-%d %H:%M %Z')}. "
        "Target (issue 13): *over the relay, throughput ≥ 80% of what the same emulated "
        "link gives directly.*",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Set-up",
        "",
        "For each profile, `p2p-wan up` joins two network namespaces, h1 (the sender) and "
        "h2 (the receiver), through the project's user-space link emulator (rate, delay, "
        "random loss; docs/natlab.md). coturn (`use-auth-secret`, the secret in its "
        "config file, `relay-ip` = `listening-ip` = h2's address, no TLS, no CLI, no "
        "loopback peers) and `p2p-transfer rendezvous --turn … --turn-secret-file …` run "
        "in h2, like a public server. Each run sends "
        f"{ds.label} with `send FILE --rendezvous H2:4000 --json` in h1 and receives it "
        "with `receive CODE --rendezvous H2:4000 --json` in h2:",
        "",
        "- **direct**: `P2P_PATH=direct` on both sides (never relays). The two hosts share "
        "a subnet (no NAT), so the direct path is found through the host candidates, which "
        "p2p-transfer labels `lan`; it still crosses the emulated link.",
        "- **relay**: `P2P_PATH=relay` on both sides (no direct checks): sender → coturn "
        "(across the link) → coturn's relayed address → receiver (inside h2). The data cross "
        "the emulated link once, as in the direct runs, so the ratio isolates what the "
        "relay costs (TURN framing, coturn's forwarding, its CPU).",
        "",
        "MiB/s (wall) = file bytes ÷ wall time from the sender's start to both ends' exit "
        "(code exchange, candidate gathering, TURN allocation and TLS handshake included). "
        "MiB/s (transfer) = the receiver's `done` event `bytes_per_second` (the transfer "
        "phase only). Medians over the runs that completed; every run is SHA-256 verified "
        "and must show only the expected path events (relay: `relay` throughout; direct: "
        "`direct` or `lan`). CPU columns: CPU time ÷ wall time of the run (100% = one core), "
        "median; coturn's and the emulator's from /proc/PID/stat around each run. The runs "
        "of both modes alternate (direct, relay, direct, …), so drift hits both alike. "
        "The OS congestion control (set in both namespaces) only matters to TCP: "
        "p2p-transfer runs QUIC (its own congestion control) here, and the TURN leg is UDP.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        f"- p2p-transfer: {binary}",
        f"- emulator: {emulator}",
        f"- coturn: {coturn}",
        "",
        "## Relay ÷ direct",
        "",
        *md_table(["profile", "OS CC", "direct MiB/s (wall)", "relay MiB/s (wall)",
                   "relay ÷ direct (wall)", "direct MiB/s (transfer)",
                   "relay MiB/s (transfer)", "relay ÷ direct (transfer)",
                   f"≥ {RELAY_TARGET:.0%} (wall)"],
                  ["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---"],
                  ratio_rows),
        "",
        "## Per mode",
        "",
        *md_table(["profile", "OS CC", "mode", "completed", "MiB/s (wall)",
                   "MiB/s (transfer)", "of link (wall)", "path events", "sender says",
                   "sender CPU", "receiver CPU", "coturn CPU", "emulator CPU"],
                  ["---", "---", "---", "---:", "---:", "---:", "---:", "---", "---",
                   "---:", "---:", "---:", "---:"],
                  relay_summary_rows(results)),
        "",
        "## Every run",
        "",
        "CPU seconds: sender / receiver / coturn / emulator. Path events: sender · receiver.",
        "",
        *md_table(["profile", "OS CC", "mode", "#", "exit (s / r)", "seconds", "MiB/s (wall)",
                   "MiB/s (transfer)", "path events", "verified", "CPU s", "emulator counters"],
                  ["---", "---", "---", "---:", "---", "---:", "---:", "---:", "---", "---",
                   "---", "---"],
                  relay_run_rows(results)),
        "",
        "## Links and servers",
        "",
    ]
    for res in results:
        lines += [f"### {res.profile.label}", ""]
        if res.error:
            lines += [f"**Could not complete:** {res.error}", ""]
        lines += [f"- link: {res.link_line}"]
        if res.coturn_total:
            lines += [f"- coturn: {res.coturn_total}"]
        for k, v in res.sysctls.items():
            lines.append(f"- `{k}` (after the runs): {v}")
        lines += ["", "```sh", *res.link_commands, *res.servers]
        shown = set()
        for r in res.runs:
            if r.mode not in shown and r.commands:
                shown.add(r.mode)
                lines += r.commands
        lines += ["```", ""]
    write_markdown(ctx, path, lines)
    return targets


def relay_main(ctx: Context, *, command: str, started: datetime.datetime,
               machine: dict, binary: str) -> int:
    """--relay PROFILE…: direct vs relay on the same emulated links, printed and written
    to --output (default docs/benchmarks-relay.md)."""
    args = ctx.args
    profiles = [WAN_PROFILES[name] for name in args.relay]
    if any(p.mbit is not None for p in profiles):
        ensure_wan_emulator(args.wan_emulator)
    if shutil.which("turnserver") is None:
        raise SystemExit("error: --relay needs coturn (`turnserver`): apt-get install coturn")
    r = run_quiet(["turnserver", "--version"], timeout=30)
    coturn = (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"
    ds = make_random_file(ctx.data_dir, "wan-" + human_size(args.wan_size).replace(" ", ""),
                          args.wan_size)
    results = [run_relay_profile(ctx, p, ds) for p in profiles]
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    targets = write_relay_report(output, command=command, started=started, machine=machine,
                                 binary=binary, emulator=emulator_info(args, profiles),
                                 coturn=coturn, ds=ds, results=results, ctx=ctx)
    print()
    for row in relay_summary_rows(results):
        print("  " + "  ".join(c.replace("`", "") for c in row))
    print("\nTargets:")
    for t in targets:
        print(f"  {t.verdict:<5} {t.name}: {t.detail}")
    print(f"\nwrote {output}")
    if ctx.failures:
        print(f"\n!!! {len(ctx.failures)} problem(s); see above and the logs in "
              f"{ctx.log_dir}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Swarm (issue 14): several seeders, ten downloaders, hashing
# --------------------------------------------------------------------------------------

SWARM_SEEDERS_SIZE = "512M"   # (a) three seeders -> one downloader
SWARM_TEN_SIZE = "128M"       # (b) one seeder -> 1, then 10 downloaders
SWARM_HASH_SIZE = "1G"        # (c) hashing on one core
SWARM_UPLOAD = "10M"          # each seeder's --max-upload
SWARM_SEEDERS = 3
SWARM_DOWNLOADERS = 10
SWARM_CCS = "cubic,bbr"


@dataclass
class SwarmGet:
    """One `get --json` of a swarm run."""
    name: str
    device: str | None = None
    exit: str = "?"
    wall: float | None = None     # start of the run -> its done event (or exit) was seen
    seconds: float | None = None  # the done event's own "seconds"
    bytes: int | None = None
    from_bytes: dict[str, int] = field(default_factory=dict)  # device id -> bytes
    paths: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # peer_gone reasons
    verified: bool = False
    note: str = ""

    def from_others(self, seeders: set[str]) -> int:
        return sum(b for d, b in self.from_bytes.items() if d not in seeders)


@dataclass
class SwarmSeedersRun:
    cc: str
    size: int
    get: SwarmGet
    seeders: dict[str, str]  # device id -> name
    commands: list[str]


@dataclass
class SwarmTenRun:
    size: int
    alone: SwarmGet | None
    together: list[SwarmGet]
    seeder: str | None
    commands: list[str]

    def t1(self) -> float | None:
        return self.alone.wall if self.alone and self.alone.verified else None

    def t10(self) -> float | None:
        if not self.together or not all(g.verified and g.wall for g in self.together):
            return None
        return max(g.wall for g in self.together)


@dataclass
class SwarmHashRun:
    size: int
    example: dict[str, tuple[float, float | None]]  # label -> GiB/s (wall, per CPU-second)
    example_cmd: str
    example_out: str
    share_line: str | None
    share_cmd: str
    share_wall: float | None


def swarm_env(ctx: Context, name: str) -> dict:
    """The environment of one swarm peer: its own data folder (its own device key)."""
    env = dict(os.environ)
    env["P2P_TRANSFER_DATA_DIR"] = str(ctx.workdir / "swarm-keys" / name)
    env["P2P_NO_PORTMAP"] = "1"
    env.pop("P2P_RENDEZVOUS", None)
    return env


def swarm_device_id(ctx: Context, name: str) -> str | None:
    r = run_quiet([str(ctx.args.binary), "id"], timeout=60, env=swarm_env(ctx, name))
    text = r.stdout.split()
    return text[0] if r.returncode == 0 and text else None


def start_swarm_tracker(ctx: Context) -> tuple[Child, str]:
    port = free_port()
    addr = f"{LOOPBACK}:{port}"
    child = ctx.procs.start(ctx.log_name("tracker"),
                            [ctx.args.binary, "rendezvous", "--listen", addr,
                             "--max-per-ip", "10000"], env=swarm_env(ctx, "tracker"))
    wait_for_text(child, child.err, "rendezvous listening on", 60)
    return child, addr


def start_swarm_seeder(ctx: Context, name: str, ds: Dataset, tracker: str, p2p_file: Path,
                       prefix: list[str] | None = None) -> tuple[Child, list[str]]:
    """`share --foreground --max-upload 10M`; returns once it serves."""
    argv = [*(prefix or []), ctx.args.binary, "share", ds.path, "--rendezvous", tracker,
            "--foreground", "--max-upload", SWARM_UPLOAD, "--output-file", p2p_file]
    drop_tree(p2p_file)
    child = ctx.procs.start(ctx.log_name(name), argv, env=swarm_env(ctx, name))
    wait_for_text(child, child.err, "serving", ctx.args.timeout)
    return child, [str(a) for a in argv]


def swarm_command(env_name: str, argv: list) -> str:
    return (f"P2P_TRANSFER_DATA_DIR=KEYS/{env_name} P2P_NO_PORTMAP=1 "
            + " ".join(shlex.quote(str(a)) for a in argv))


def run_swarm_gets(ctx: Context, names: list[str], source: Path, tracker: str,
                   ds: Dataset) -> tuple[list[SwarmGet], list[str]]:
    """Starts one `get --json` per name together (fresh outputs), waits until every one
    has printed its done event or exited (bounded by --timeout), and checks the bytes."""
    base = ctx.workdir / "swarm-out"
    gets = [SwarmGet(n, device=swarm_device_id(ctx, n)) for n in names]
    outs = {}
    for n in names:
        outs[n] = base / n
        drop_tree(outs[n])
        outs[n].mkdir(parents=True)
    os.sync()
    argvs = {n: [ctx.args.binary, "get", source, "-o", outs[n], "--rendezvous", tracker,
                 "--json"] for n in names}
    started = time.perf_counter()
    children = {n: ctx.procs.start(ctx.log_name(n), argvs[n], env=swarm_env(ctx, n))
                for n in names}
    pending = set(names)
    deadline = time.monotonic() + ctx.args.timeout
    while pending and time.monotonic() < deadline:
        for n in sorted(pending):
            c = children[n]
            done = any(e.get("event") == "done" for e in json_events(c.out))
            if done or c.exited():
                next(g for g in gets if g.name == n).wall = time.perf_counter() - started
                pending.discard(n)
        time.sleep(0.02)
    exits = ctx.procs.wait(list(children.values()), 30 if not pending else 1)
    for g in gets:
        c = children[g.name]
        e = exits.get(c.name)
        g.exit = ("killed (timeout)" if e is None or e.timed_out else str(e.returncode))
        events = json_events(c.out)
        g.paths = [f"{ev.get('path')}{' in' if ev.get('incoming') else ''}"
                   for ev in events if ev.get("event") == "peer"]
        g.gone = [str(ev.get("reason")) for ev in events if ev.get("event") == "peer_gone"]
        done = next((ev for ev in events if ev.get("event") == "done"), None)
        if g.name in pending:
            g.wall = None
            g.note = f"not done after {ctx.args.timeout:.0f} s"
        if done is None:
            g.note = g.note or f"no done event: {tail(c.err, 3)}"
            ctx.failures.append(f"swarm {g.name}: {g.note}")
            continue
        g.seconds = float(done.get("seconds") or 0) or None
        g.bytes = int(done.get("bytes") or 0)
        g.from_bytes = {str(k): int(v) for k, v in (done.get("from") or {}).items()}
        got = outs[g.name] / ds.path.name
        g.verified = (got.is_file() and sha256_file(got) == next(iter(ds.hashes.values()))
                      and g.exit == "0")
        if not g.verified:
            g.note = g.note or "bytes differ or exit != 0"
            ctx.failures.append(f"swarm {g.name}: {g.note} (exit {g.exit})")
        drop_tree(outs[g.name])
    commands = [swarm_command(n, [Path(a).name if a == ctx.args.binary else a
                                  for a in argvs[n]]) for n in names[:1]]
    return gets, commands


def measure_swarm_seeders(ctx: Context, ds: Dataset, cc: str) -> SwarmSeedersRun:
    """(a) three seeders of the same content, each --max-upload 10M; one downloader."""
    print(f"\n== swarm (a): {SWARM_SEEDERS} seeders x --max-upload {SWARM_UPLOAD} -> one "
          f"get, {human_size(ds.total_bytes)}, tcp_congestion_control {cc}", flush=True)
    tracker, addr = start_swarm_tracker(ctx)
    seeders: dict[str, str] = {}
    started: list[Child] = []
    commands: list[str] = []
    p2p_file = ctx.workdir / "swarm-a.p2p"
    try:
        for i in range(SWARM_SEEDERS):
            name = f"seed-a{i + 1}"
            own = ctx.workdir / f"swarm-a-{i + 1}.p2p"
            child, argv = start_swarm_seeder(ctx, name, ds, addr, own)
            started.append(child)
            device = swarm_device_id(ctx, name)
            if device:
                seeders[device] = name
            if i == 0:
                shutil.copy(own, p2p_file)
                commands.append(swarm_command(name, [Path(argv[0]).name, *argv[1:]]))
        gets, cmds = run_swarm_gets(ctx, ["get-a"], p2p_file, addr, ds)
        commands += cmds
    finally:
        for c in [*started, tracker]:
            ctx.procs.stop(c)
    g = gets[0]
    rate = (g.bytes / MiB / g.seconds) if g.bytes and g.seconds else None
    wall = (ds.total_bytes / MiB / g.wall) if g.wall else None
    print(f"  get: exit {g.exit}, {fmt_num(rate)} MiB/s (done event), {fmt_num(wall)} MiB/s "
          f"(wall), from {[(seeders.get(d, d[:8]), human_size(b)) for d, b in g.from_bytes.items()]}",
          flush=True)
    return SwarmSeedersRun(cc, ds.total_bytes, g, seeders, commands)


def measure_swarm_ten(ctx: Context, ds: Dataset) -> SwarmTenRun:
    """(b) one seeder --max-upload 10M: one downloader alone, then ten together."""
    print(f"\n== swarm (b): one seeder --max-upload {SWARM_UPLOAD}, 1 then "
          f"{SWARM_DOWNLOADERS} downloaders, {human_size(ds.total_bytes)}", flush=True)
    tracker, addr = start_swarm_tracker(ctx)
    p2p_file = ctx.workdir / "swarm-b.p2p"
    seeder = None
    seeder_child = None
    alone, together, commands = None, [], []
    try:
        seeder_child, argv = start_swarm_seeder(ctx, "seed-b", ds, addr, p2p_file)
        commands.append(swarm_command("seed-b", [Path(argv[0]).name, *argv[1:]]))
        seeder = swarm_device_id(ctx, "seed-b")
        gets, cmds = run_swarm_gets(ctx, ["alone"], p2p_file, addr, ds)
        alone = gets[0]
        commands += cmds
        print(f"  alone: exit {alone.exit}, {fmt_num(alone.wall, '.2f')} s", flush=True)
        names = [f"get-{i + 1:02d}" for i in range(SWARM_DOWNLOADERS)]
        together, _ = run_swarm_gets(ctx, names, p2p_file, addr, ds)
        for g in together:
            print(f"  {g.name}: exit {g.exit}, {fmt_num(g.wall, '.2f')} s, "
                  f"{human_size(g.from_others({seeder or ''}))} from non-seeders", flush=True)
    finally:
        if seeder_child is not None:
            ctx.procs.stop(seeder_child)
        ctx.procs.stop(tracker)
    return SwarmTenRun(ds.total_bytes, alone, together, seeder, commands)


def hash_speed_binary(ctx: Context) -> Path:
    """target/release/examples/hash_speed next to --binary, built if missing."""
    path = ctx.args.binary.parent / "examples" / "hash_speed"
    if not path.exists():
        print(f"{path} missing: cargo build --release -p p2p-core --example hash_speed",
              flush=True)
        env = dict(os.environ)
        env.setdefault("CARGO_TARGET_DIR", str(ctx.args.binary.parent.parent))
        r = subprocess.run(["cargo", "build", "--release", "-p", "p2p-core", "--example",
                            "hash_speed"], cwd=REPO, stdin=subprocess.DEVNULL, env=env,
                           timeout=3600)
        if r.returncode != 0 or not path.exists():
            raise BenchError("cargo build --release -p p2p-core --example hash_speed failed")
    return path


def read_through(path: Path) -> None:
    """Reads a file once, so that it is in the page cache."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def measure_swarm_hashing(ctx: Context, ds: Dataset) -> SwarmHashRun:
    """(c) hashing on one core: the hash_speed example (in memory and the file through
    swarm::hash_share), and `taskset -c 0 p2p-transfer share` itself."""
    print(f"\n== swarm (c): hashing {human_size(ds.total_bytes)} on one core", flush=True)
    example = hash_speed_binary(ctx)
    read_through(ds.path)
    mib = max(1, ds.total_bytes // MiB)
    argv = ["taskset", "-c", "0", example, "--mib", str(mib), ds.path]
    r = run_quiet([str(a) for a in argv], timeout=ctx.args.timeout)
    if r.returncode != 0:
        raise BenchError(f"hash_speed failed: {r.stderr.strip()}")
    figures = {}
    for line in r.stdout.splitlines():
        m = re.search(r"^\s+(\S+)\s+\((\S+)\):\s+[\d.]+ s\s+([\d.]+) GiB/s \(wall\)"
                      r"(?:;\s+[\d.]+ s CPU\s+([\d.]+) GiB/s)?", line)
        if m:
            figures[f"{m.group(1)} ({m.group(2)})"] = (
                float(m.group(3)), float(m.group(4)) if m.group(4) else None)
    print(r.stdout.rstrip(), flush=True)
    tracker, addr = start_swarm_tracker(ctx)
    p2p_file = ctx.workdir / "swarm-c.p2p"
    line, wall = None, None
    try:
        t0 = time.perf_counter()
        child, share_argv = start_swarm_seeder(ctx, "seed-c", ds, addr, p2p_file,
                                               prefix=["taskset", "-c", "0"])
        wall = time.perf_counter() - t0
        line = next((l.strip() for l in child.err.read_text(errors="replace").splitlines()
                     if l.startswith("hashed ")), None)
        ctx.procs.stop(child)
    finally:
        ctx.procs.stop(tracker)
    print(f"  share: {line}; {wall:.2f} s from start to serving", flush=True)
    return SwarmHashRun(ds.total_bytes, figures,
                        " ".join(shlex.quote(str(a)) for a in
                                 ["taskset", "-c", "0", "target/release/examples/hash_speed",
                                  "--mib", str(mib), "BIG"]),
                        r.stdout.strip(), line,
                        swarm_command("seed-c", ["taskset", "-c", "0", "p2p-transfer",
                                                 *share_argv[4:]]), wall)


def gone_summary(gets: list[SwarmGet]) -> list[str]:
    """Why connections of these downloaders ended, counted (a markdown list)."""
    counts: dict[str, int] = {}
    for g in gets:
        for reason in g.gone:
            counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return ["No downloader saw a peer connection end before it was done."]
    return [f"Peer connections that ended while the downloaders ran (`peer_gone` events, "
            f"reason as printed, all {len(gets)} downloader(s) together):", "",
            *(f"- {n} × `{r}`" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))]


def available_ccs() -> list[str]:
    try:
        return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        return []


def write_swarm_report(path: Path, *, command: str, started: datetime.datetime,
                       machine: dict, binary: str, ctx: Context,
                       seeders: list[SwarmSeedersRun], ten: SwarmTenRun | None,
                       hashing: SwarmHashRun | None) -> list[Target]:
    targets: list[Target] = []
    lines = [
        "# Swarm downloads (issue 14)",
        "",
        f"Generated by `benchmark.py --swarm` on {started.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- **CPU:** {machine['nproc']} vCPU ({machine['cpu']}), memory {machine['memory']}, "
        f"load before the run {machine['load']}",
        f"- **Kernel:** {machine['kernel']}; file system {machine['filesystem']}",
        f"- **Binary:** {binary}",
        "- **Network:** loopback only; the tracker is `p2p-transfer rendezvous --listen "
        "127.0.0.1:PORT --max-per-ip 10000`; every peer is a separate process with its own "
        "data folder (`P2P_TRANSFER_DATA_DIR`, its own device key) and `P2P_NO_PORTMAP=1`.",
        "- Swarm connections are QUIC (UDP), so the OS's TCP congestion control "
        "(`net.ipv4.tcp_congestion_control`) does not act on them; (a) was run under each "
        "setting anyway, as a check.",
        "",
    ]
    if seeders:
        lines += [
            f"## (a) Three seeders, each `--max-upload {SWARM_UPLOAD}`, one downloader",
            "",
            "Target: *three seeders each limited to 10 MiB/s: one downloader gets ≥ 27 MiB/s.* "
            "Each seeder hashes the same file (the same root) in its own data folder; the "
            "downloader starts once all three serve. MiB/s by the `done` event "
            "(bytes / its `seconds`) and by the wall clock (start of `get` → its `done` "
            "line seen).",
            "",
            "Commands (seeder 1 of 3; the others alike with their own data folder; then the "
            "downloader):",
            "",
            "```sh",
            *seeders[0].commands,
            "```",
            "",
        ]
        rows = []
        for run in seeders:
            g = run.get
            rate = g.bytes / MiB / g.seconds if g.bytes and g.seconds and g.verified else None
            wall = run.size / MiB / g.wall if g.wall and g.verified else None
            per = ", ".join(f"{run.seeders.get(d, d[:10])} {human_size(b)}"
                            for d, b in sorted(g.from_bytes.items(),
                                               key=lambda kv: run.seeders.get(kv[0], kv[0])))
            rows.append([run.cc, human_size(run.size), g.exit, fmt_num(g.seconds, ".2f"),
                         fmt_num(rate), fmt_num(g.wall, ".2f"), fmt_num(wall),
                         "yes" if g.verified else "**no**", per or "-",
                         ", ".join(sorted(set(g.paths))) or "-"])
            ok = rate is not None and rate >= 27 and wall is not None and wall >= 27
            least = min((g.from_bytes.get(d, 0) for d in run.seeders), default=0)
            targets.append(Target(f"(a) 3 seeders x 10 MiB/s -> 1 downloader ≥ 27 MiB/s "
                                  f"({run.cc}, run {len(targets) + 1})",
                                  "PASS" if ok else "FAIL",
                                  f"{fmt_num(rate)} MiB/s (done event), {fmt_num(wall)} MiB/s "
                                  f"(wall); the least from one seeder: "
                                  f"{human_size(least)} of {human_size(run.size)}"))
        lines += md_table(["TCP CC", "size", "exit", "done s", "MiB/s (done)", "wall s",
                           "MiB/s (wall)", "SHA-256", "bytes from each seeder", "paths"],
                          ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---",
                           "---", "---"], rows)
        lines += ["", *gone_summary([r.get for r in seeders]), ""]
    if ten is not None:
        seeder = {ten.seeder or ""}
        lines += [
            f"## (b) One seeder `--max-upload {SWARM_UPLOAD}`: one downloader, then "
            f"{SWARM_DOWNLOADERS} together",
            "",
            f"Target: *ten downloaders from one seeder limited to 10 MiB/s: all done in ≤ 2× "
            f"the time one downloader alone takes.* {human_size(ten.size)}; T1 = one "
            f"`get` alone (start → its done line); then {SWARM_DOWNLOADERS} `get`s started "
            "together into fresh folders (each its own data folder), T10 = start → the last "
            "done line. A downloader exits when it is done (no `--seed`), so it serves "
            "others only while it downloads.",
            "",
            "```sh",
            *ten.commands,
            f"# then {SWARM_DOWNLOADERS} of these at once, each with its own "
            "P2P_TRANSFER_DATA_DIR and -o",
            "```",
            "",
        ]
        rows = []
        if ten.alone is not None:
            g = ten.alone
            rows.append(["alone (T1)", g.exit, fmt_num(g.wall, ".2f"), fmt_num(g.seconds, ".2f"),
                         "yes" if g.verified else "**no**", human_size(g.from_others(seeder)),
                         str(len(g.from_bytes)), ", ".join(sorted(set(g.paths))) or "-"])
        for g in ten.together:
            rows.append([g.name, g.exit, fmt_num(g.wall, ".2f"), fmt_num(g.seconds, ".2f"),
                         "yes" if g.verified else "**no**", human_size(g.from_others(seeder)),
                         str(len(g.from_bytes)), str(len(g.paths))])
        lines += md_table(["downloader", "exit", "wall s", "done s", "SHA-256",
                           "bytes from non-seeders", "peers it got bytes from",
                           "peer connections (alone: paths)"],
                          ["---", "---:", "---:", "---:", "---", "---:", "---:", "---"], rows)
        t1, t10 = ten.t1(), ten.t10()
        total_others = sum(g.from_others(seeder) for g in ten.together)
        total = ten.size * len(ten.together)
        lines += [
            "",
            f"T1 = {fmt_num(t1, '.2f')} s, T10 = {fmt_num(t10, '.2f')} s, T10 / T1 = "
            f"{fmt_num(t10 / t1 if t1 and t10 else None, '.2f')}; of the "
            f"{human_size(total)} the ten downloaded, {human_size(total_others)} "
            f"({fmt_num(100 * total_others / total if total else None, '.0f')}%) came from "
            "other downloaders.",
            "",
            *gone_summary(ten.together),
            "",
        ]
        ok = t1 is not None and t10 is not None and t10 <= 2 * t1
        targets.append(Target(f"(b) {SWARM_DOWNLOADERS} downloaders ≤ 2 × one alone",
                              "PASS" if ok else "FAIL",
                              f"T1 {fmt_num(t1, '.2f')} s, T10 {fmt_num(t10, '.2f')} s"))
    if hashing is not None:
        lines += [
            "## (c) Hashing on one core",
            "",
            f"Target: *hashing a 1 GiB share ≥ 1 GiB/s on one core.* A "
            f"{human_size(hashing.size)} random file, read once first (page cache). "
            "`hash_speed` (p2p-core/examples/hash_speed.rs) hashes the same amount of random "
            "bytes in memory in 256 KiB pieces with the swarm's piece hash (BLAKE3, "
            "`swarm::content::piece_hash`) and with SHA-256 (`sha2::Sha256`) over the same "
            "pieces, then the file through `swarm::hash_share` (what `share` runs: read + "
            "hash, the share's chunk size), best of 3 rounds each:",
            "",
            "```sh",
            "cargo build --release -p p2p-core --example hash_speed",
            hashing.example_cmd,
            "```",
            "",
            "```text",
            hashing.example_out,
            "```",
            "",
            "`p2p-transfer share` itself, pinned to core 0 (its own `hashed` line; 0.1 s "
            "resolution), and the wall time from its start to `serving` (hashing, writing "
            "the .p2p file, connecting to the tracker):",
            "",
            "```sh",
            hashing.share_cmd,
            "```",
            "",
            f"    {hashing.share_line or '(no hashed line)'}",
            "",
            f"Start → serving: {fmt_num(hashing.share_wall, '.2f')} s.",
            "",
        ]
        share_wall, share_cpu = next((v for k, v in hashing.example.items()
                                      if "hash_share" in k), (None, None))
        blake_wall, blake_cpu = next((v for k, v in hashing.example.items()
                                      if "piece_hash" in k), (None, None))
        one_core = share_cpu if share_cpu is not None else share_wall
        ok = one_core is not None and one_core >= 1.0
        lines += [
            "The verdict uses the rate per CPU-second of the hashing thread (what one core "
            "does when it is not shared); the wall-clock rate is below it by the share of "
            f"core 0 that other work took (load average before the run: {machine['load']}).",
            "",
        ]
        targets.append(Target("(c) hashing a 1 GiB share ≥ 1 GiB/s on one core",
                              "PASS" if ok else "FAIL",
                              f"hash_share from the page cache {fmt_num(share_cpu, '.2f')} "
                              f"GiB/s per CPU-second ({fmt_num(share_wall, '.2f')} by the "
                              f"wall clock); BLAKE3 in memory {fmt_num(blake_cpu, '.2f')} "
                              f"({fmt_num(blake_wall, '.2f')}) GiB/s"))
    lines += ["## Targets", ""]
    lines += md_table(["target", "verdict", "measured"], ["---", "---", "---"],
                      [[t.name, f"**{t.verdict}**", t.detail] for t in targets])
    write_markdown(ctx, path, lines)
    return targets


def swarm_main(ctx: Context, *, command: str, started: datetime.datetime,
               machine: dict, binary: str) -> int:
    """--swarm: (a) three seeders -> one downloader, (b) one seeder -> 1 and 10
    downloaders, (c) hashing on one core; printed and written to --output (default
    docs/benchmarks-swarm.md)."""
    args = ctx.args
    seeders_runs: list[SwarmSeedersRun] = []
    ten = None
    hashing = None
    parts = args.swarm_parts
    if "a" in parts:
        ds = make_random_file(ctx.data_dir, "swarm-a", args.swarm_size)
        for cc in args.swarm_cc:
            now, old = set_congestion(cc)  # the kernel loads tcp_bbr on demand
            if now != cc:
                ctx.warnings.append(f"(a): asked for congestion control {cc}, got {now} "
                                    f"(available: {' '.join(available_ccs())})")
            try:
                for _ in range(args.repeat):
                    seeders_runs.append(measure_swarm_seeders(ctx, ds, now))
            except BenchError as e:
                ctx.failures.append(f"swarm (a) {cc}: {e}")
                print(f"FAILED: {e}", file=sys.stderr)
            finally:
                restore_congestion(old)
    if "b" in parts:
        ds = make_random_file(ctx.data_dir, "swarm-b", args.swarm_ten_size)
        try:
            ten = measure_swarm_ten(ctx, ds)
        except BenchError as e:
            ctx.failures.append(f"swarm (b): {e}")
            print(f"FAILED: {e}", file=sys.stderr)
    if "c" in parts:
        ds = make_random_file(ctx.data_dir, "swarm-c", args.swarm_hash_size)
        try:
            hashing = measure_swarm_hashing(ctx, ds)
        except BenchError as e:
            ctx.failures.append(f"swarm (c): {e}")
            print(f"FAILED: {e}", file=sys.stderr)
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    targets = write_swarm_report(output, command=command, started=started, machine=machine,
                                 binary=binary, ctx=ctx, seeders=seeders_runs, ten=ten,
                                 hashing=hashing)
    print("\nTargets:")
    for t in targets:
        print(f"  {t.verdict:<5} {t.name}: {t.detail}")
    print(f"\nwrote {output}")
    if ctx.failures:
        print(f"\n!!! {len(ctx.failures)} problem(s); see above and the logs in "
              f"{ctx.log_dir}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def write_setup_report(path: Path, *, command: str, started: datetime.datetime,
                       machine: dict, congestion: str, binary: str,
                       setups: list[SetupResult], ctx: Context) -> None:
    """The report of `--setup`: the session set-up measurement alone."""
    try:
        load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load_end = "unknown"
    lines = [
        "# Benchmarks: session set-up with TLS and one-time codes",
        "",
        "Produced by `benchmark.py --setup`; rerun it to refresh this page (it overwrites "
        "it). The throughput benchmarks are in [benchmarks.md](benchmarks.md), whose run "
        "measures this too.",
        "",
        "Issue 11: every p2p-transfer connection is TLS 1.3 between device keys, and a new "
        "peer is let in by a one-time code (SPAKE2). This page measures what that costs "
        "when a session is set up: a 1-byte send between two devices paired by a code; "
        "the same between two programs sharing one data folder (one device key: TLS, but "
        "no code exchange); and, with `--baseline-binary`, an older build.",
        "",
        f"- **Date:** {started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- **Command:** `{command}`",
        f"- **Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}, data and output on {machine['filesystem']}; "
        f"load average (1, 5, 15 min) at the start {machine['load']}, at the end "
        f"{load_end} (other work on the machine skews every figure)",
        f"- **net.ipv4.tcp_congestion_control:** {congestion}",
        f"- **p2p-transfer:** {binary}",
        f"- **p2p-transfer runs** {security_line(ctx, ctx.args.binary)}, except in the "
        "variant without a code, which shares one data folder",
        *security_baseline_lines(ctx, setups),
        f"- **Runs:** {ctx.args.setup_runs} timed runs per variant, after one warm-up run",
        "",
        *setup_report(ctx, setups),
        *targets_section(setup_targets(setups), "The issue's target for setting up a "
                         "session, on the median of the runs with a code."),
        "## How it is measured",
        "",
        "- Everything runs on 127.0.0.1; the receiver listens on port 0 (a free port) and "
        "ends after its one transfer.",
        "- Each process is forked by a tiny `sh` that exits at once (the script is a child "
        "subreaper and reaps the process itself, with `wait4()`); the clock starts just "
        "before that `sh` is launched and stops when the sender's pidfd reports its exit. "
        "The `--version` row is the same launch of a process that only prints its version: "
        "what every row pays for starting and ending a process.",
        "- Before each run the output folder is made empty and `sync` is run, untimed.",
        "- Data folders (`P2P_TRANSFER_DATA_DIR`: device key, trusted devices, history): "
        f"with a code, `WORKDIR/{P2P_DATA_DIRS['send']}` for the sender and `WORKDIR/"
        f"{P2P_DATA_DIRS['receive']}` for the receiver, two devices that trust nobody, so "
        "only the code lets the sender in (the control above checks it); without a code, "
        f"both use `WORKDIR/{P2P_DATA_DIRS['shared']}`, one device key, which admission "
        "lets in as the same device. `--remember` is never given: nothing is trusted "
        "between runs. The warm-up run creates the keys.",
    ]
    write_markdown(ctx, path, lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Loopback throughput benchmark for p2p-transfer (127.0.0.1 only).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--binary", type=Path, default=DEFAULT_BINARY,
                   help="p2p-transfer binary (the default is built with cargo build "
                        "--release if missing)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where data, output and logs go; generated data is reused when it "
                        "matches (default: a fresh dir under /tmp, removed at the end)")
    p.add_argument("--big-size", type=parse_size, default="1G",
                   help="size of the big random file, e.g. 64M or 1G")
    p.add_argument("--small-count", type=int, default=5000,
                   help="number of small files (1–64 KiB each)")
    p.add_argument("--windows", type=parse_windows, default="1,4,16,64",
                   help="comma-separated window sizes for p2p-transfer send")
    p.add_argument("--chunk-size", default=None,
                   help="passed to p2p-transfer send --chunk-size (e.g. 1M); the RSS target "
                        "uses it (default: the tool's default, 1 MiB)")
    p.add_argument("--send-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for p2p-transfer send (repeatable), "
                        "e.g. --send-arg=--no-compress")
    p.add_argument("--compare", action="store_true",
                   help="also run scp, rsync (local sshd) and magic-wormhole (local servers); "
                        "with --slow-link, rsync through the shaped link")
    p.add_argument("--congestion", choices=["cubic", "bbr", "default"], default="default",
                   help="net.ipv4.tcp_congestion_control for the run (restored afterwards)")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"runs per measurement; median reported (default 1; with --relay "
                        f"{RELAY_REPEAT}; with --swarm: runs of (a) per --swarm-cc, each "
                        "reported)%(default).0s")
    p.add_argument("--output", type=Path, default=None,
                   help=f"the Markdown report to write (default: {DEFAULT_OUTPUT.relative_to(REPO)}"
                        f", with --slow-link {DEFAULT_SLOW_OUTPUT.relative_to(REPO)}, with "
                        f"--setup {DEFAULT_SETUP_OUTPUT.relative_to(REPO)}, with --wan "
                        f"{DEFAULT_WAN_OUTPUT.relative_to(REPO)}, with --relay "
                        f"{DEFAULT_RELAY_OUTPUT.relative_to(REPO)})"
                        "%(default).0s")  # renders as nothing: no "(default: None)"
    p.add_argument("--skip-big", action="store_true", help="skip the big-file data set")
    p.add_argument("--skip-small", action="store_true", help="skip the small-files data set")
    p.add_argument("--skip-resilience", action="store_true",
                   help="skip the throttle-accuracy (--max-speed 5M/20M/50M, 10 s each) and "
                        "resume-after-interruption (256 MiB, SIGINT at 50%%) measurements")
    p.add_argument("--slow-link", action="store_true",
                   help="measure slow links only (nothing else): send a 24 MiB file through "
                        "a shaped link on 127.0.0.1 (see --link-rate, --link-rtt), and a "
                        "20 MiB file with --max-speed 512K; with --compare, rsync through "
                        "the same link")
    p.add_argument("--setup", action="store_true",
                   help="measure session set-up only (nothing else): a 1-byte send to a "
                        "listening receiver, with a code (two data folders), without one "
                        "(one data folder) and, with --baseline-binary, with that binary; "
                        f"written to {DEFAULT_SETUP_OUTPUT.relative_to(REPO)}. The default "
                        "run measures it too, unless --skip-setup")
    p.add_argument("--skip-setup", action="store_true",
                   help="skip the session set-up measurement of the default run")
    p.add_argument("--setup-runs", type=int, default=SETUP_RUNS, metavar="N",
                   help="timed runs per variant of the session set-up measurement")
    p.add_argument("--baseline-binary", type=Path, default=None, metavar="PATH",
                   help="with --slow-link, and for the session set-up measurement: another "
                        "p2p-transfer binary (e.g. built from an older commit) measured the "
                        "same way in the same run; it gets --code only if its `receive "
                        "--help` mentions it")
    p.add_argument("--link-rate", type=float, default=LINK_MBIT, metavar="MBIT",
                   help="with --slow-link: the shaped link's rate each way, Mbit/s")
    p.add_argument("--link-rtt", type=float, default=LINK_RTT_MS, metavar="MS",
                   help="with --slow-link: the round trip the shaped link adds, ms (half "
                        "each way)")
    p.add_argument("--wan", type=parse_wan_profiles, action="extend", default=[],
                   metavar="PROFILE",
                   help="measure across the project's WAN emulator only (nothing else; "
                        f"written to {DEFAULT_WAN_OUTPUT.relative_to(REPO)}): p2p-transfer "
                        "over QUIC and TCP (OS BBR and Cubic), scp, rsync and "
                        "magic-wormhole, the --wan-size file and the small files, and a "
                        "share test. Repeatable or comma-separated; profiles: "
                        + ", ".join(WAN_PROFILES) + " (veth: no emulator, to check the "
                        "script)%(default).0s")
    p.add_argument("--wan-size", "--size", type=parse_size, default=WAN_SIZE,
                   help="with --wan or --relay: size of the random file sent across the link")
    p.add_argument("--wan-timeout", type=float, default=WAN_TIMEOUT, metavar="SECS",
                   help="with --wan: seconds one run may take; then it is killed and "
                        "reported as did-not-finish with the bytes that arrived")
    p.add_argument("--wan-share", action=argparse.BooleanOptionalAction, default=True,
                   help="with --wan: the share test (p2p-transfer and one iperf3 -C cubic "
                        "flow on the same link)")
    p.add_argument("--share-seconds", type=int, default=WAN_SHARE_SECONDS, metavar="SECS",
                   help="with --wan: how long the share test runs")
    p.add_argument("--wan-p2p-only", action="store_true",
                   help="with --wan: only p2p-transfer's rows (no scp, rsync, wormhole)")
    p.add_argument("--wan-emulator", type=Path, default=default_wan_emulator(),
                   metavar="PATH",
                   help="the p2p-wan binary (the default is built with cargo build "
                        "--release -p p2p-wan if missing)")
    p.add_argument("--wan-seed", type=int, default=1, metavar="N",
                   help="with --wan: p2p-wan --seed (its random loss pattern)")
    p.add_argument("--relay", type=parse_wan_profiles, action="extend", default=[],
                   metavar="PROFILE[,PROFILE]",
                   help="issue 13: for each WAN profile, the --size file from h1 to h2, "
                        "directly (P2P_PATH=direct) and through coturn in h2 "
                        "(P2P_PATH=relay), --repeat times each, with the rendezvous and "
                        "coturn in h2; nothing else (written to "
                        f"{DEFAULT_RELAY_OUTPUT.relative_to(REPO)})%(default).0s")
    p.add_argument("--relay-cc", type=parse_ccs, default=RELAY_CCS, metavar="CC[,CC]",
                   help="with --relay: the OS TCP congestion controls to run under (set in "
                        "both namespaces)")
    p.add_argument("--wan-smoke", action="store_true",
                   help=f"a quick manual check: {human_size(WAN_SMOKE_SIZE)} over "
                        f"`{WAN_SMOKE_PROFILE}` (or the one --wan profile given) with "
                        "p2p-transfer only, verified; prints, writes no report")
    p.add_argument("--swarm", action="store_true",
                   help="issue 14, on loopback only, nothing else (written to "
                        f"{DEFAULT_SWARM_OUTPUT.relative_to(REPO)}): (a) three seeders "
                        f"(share --foreground --max-upload {SWARM_UPLOAD}) -> one get "
                        "(--swarm-size), under each --swarm-cc; (b) one seeder -> one get "
                        f"alone, then {SWARM_DOWNLOADERS} together (--swarm-ten-size); (c) "
                        "hashing on one core (--swarm-hash-size; the hash_speed example and "
                        "taskset -c 0 share)")
    p.add_argument("--swarm-size", type=parse_size, default=SWARM_SEEDERS_SIZE,
                   help="with --swarm: the share of (a), three seeders -> one downloader")
    p.add_argument("--swarm-ten-size", type=parse_size, default=SWARM_TEN_SIZE,
                   help=f"with --swarm: the share of (b), one seeder -> {SWARM_DOWNLOADERS} "
                        "downloaders")
    p.add_argument("--swarm-hash-size", type=parse_size, default=SWARM_HASH_SIZE,
                   help="with --swarm: the file hashed in (c)")
    p.add_argument("--swarm-cc", type=parse_ccs, default=SWARM_CCS, metavar="CC[,CC]",
                   help="with --swarm: TCP congestion controls (a) runs under, one run each "
                        "(the swarm is QUIC: a check, not a variable); ones the kernel lacks "
                        "are skipped")
    p.add_argument("--swarm-parts", default="abc", metavar="abc",
                   help="with --swarm: which of (a), (b), (c) to run")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds one run may take before it is killed and marked FAILED")
    p.add_argument("--total-timeout", type=float, default=None,
                   help="seconds the whole script may take before it stops itself "
                        "(default: 3 hours; with --wan, 12 hours: a run that collapses "
                        "may take all of --wan-timeout, and there are many rows)%(default).0s")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = RELAY_REPEAT if args.relay else 1
    if isinstance(args.relay_cc, str):
        args.relay_cc = parse_ccs(args.relay_cc)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.small_count < 1:
        p.error("--small-count must be >= 1")
    if args.chunk_size:
        try:
            parse_size(args.chunk_size)
        except argparse.ArgumentTypeError as e:
            p.error(f"--chunk-size: {e}")
    if args.setup_runs < 1:
        p.error("--setup-runs must be >= 1")
    if args.setup and args.slow_link:
        p.error("--setup and --slow-link are two separate runs")
    wan = bool(args.wan) or args.wan_smoke
    if wan and (args.setup or args.slow_link):
        p.error("--wan / --wan-smoke, --setup and --slow-link are separate runs")
    if args.wan_smoke and len(args.wan) > 1:
        p.error("--wan-smoke takes at most one --wan profile")
    if args.wan_timeout <= 0 or args.share_seconds < 5:
        p.error("--wan-timeout must be > 0 and --share-seconds >= 5")
    args.wan = list(dict.fromkeys(args.wan))  # each profile once, in the order given
    args.relay = list(dict.fromkeys(args.relay))
    if args.relay and (wan or args.setup or args.slow_link):
        p.error("--relay is a run of its own (not with --wan, --wan-smoke, --setup, "
                "--slow-link)")
    if args.total_timeout is None:
        args.total_timeout = (12 if args.wan or args.relay else 3) * 3600
    if args.setup and args.skip_setup:
        p.error("--setup and --skip-setup contradict each other")
    if isinstance(args.swarm_cc, str):
        args.swarm_cc = parse_ccs(args.swarm_cc)
    if args.swarm and (wan or args.relay or args.setup or args.slow_link):
        p.error("--swarm is a run of its own (not with --wan, --relay, --setup, --slow-link)")
    if args.swarm and (not args.swarm_parts or set(args.swarm_parts) - set("abc")):
        p.error("--swarm-parts takes letters among a, b, c")
    if (args.skip_big and args.skip_small and args.skip_resilience and args.skip_setup
            and not args.slow_link and not wan and not args.relay and not args.swarm):
        p.error("nothing to do with --skip-big, --skip-small, --skip-resilience and "
                "--skip-setup")
    if not args.slow_link and (args.link_rate != LINK_MBIT or args.link_rtt != LINK_RTT_MS):
        p.error("--link-rate and --link-rtt go with --slow-link")
    if args.baseline_binary is not None and not args.slow_link and args.skip_setup:
        p.error("--baseline-binary goes with --slow-link or the session set-up measurement "
                "(not with --skip-setup)")
    if args.link_rate <= 0 or args.link_rtt < 0:
        p.error("--link-rate must be > 0 and --link-rtt >= 0")
    if args.baseline_binary is not None:
        args.baseline_binary = args.baseline_binary.resolve()
        if not args.baseline_binary.is_file():
            p.error(f"--baseline-binary: {args.baseline_binary} does not exist")
    if args.output is None:
        args.output = (DEFAULT_SWARM_OUTPUT if args.swarm
                       else DEFAULT_RELAY_OUTPUT if args.relay else DEFAULT_WAN_OUTPUT if wan
                       else DEFAULT_SLOW_OUTPUT if args.slow_link
                       else DEFAULT_SETUP_OUTPUT if args.setup else DEFAULT_OUTPUT)
    args.binary = args.binary.resolve() if args.binary != DEFAULT_BINARY else args.binary
    return args


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def on_alarm(signum, frame):
    raise TotalTimeout()


def slow_link_main(ctx: Context, *, command: str, started: datetime.datetime,
                   machine: dict, congestion: str, binary: str) -> int:
    """--slow-link: the slow-link measurements, printed and written to --output."""
    args = ctx.args
    spec = LinkSpec(args.link_rate, args.link_rtt)
    baseline = (f"`{args.baseline_binary}` ({binary_info(args.baseline_binary)})"
                if args.baseline_binary is not None else None)
    runs = run_slow_link(ctx, spec)
    extras: dict[str, str] = {}
    if args.compare and shutil.which("rsync") and shutil.which("ssh"):
        r = run_quiet(["ssh", "-V"], timeout=30)
        extras["OpenSSH"] = (r.stderr or r.stdout).strip()
        r = run_quiet(["rsync", "--version"], timeout=30)
        extras["rsync"] = r.stdout.splitlines()[0] if r.stdout else "?"
    rows = slow_rows(runs)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(SLOW_HEADERS[:-1])]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(SLOW_HEADERS, widths)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.repeat > 1:
        print(f"\nOver the {args.repeat} runs:")
        for line in slow_summary(runs):
            print(f"  {line}")
    output = args.output if args.output.is_absolute() else Path.cwd() / args.output
    write_slow_report(output, command=command, started=started, machine=machine,
                      congestion=congestion, binary=binary, baseline=baseline, extras=extras,
                      spec=spec, runs=runs, ctx=ctx)
    print(f"\nwrote {output}")
    if ctx.failures:
        print(f"\n!!! {len(ctx.failures)} run(s) FAILED; see above and the logs in "
              f"{ctx.log_dir}", file=sys.stderr)
        return 1
    return 0


def setup_main(ctx: Context, *, command: str, started: datetime.datetime,
               machine: dict, congestion: str, binary: str) -> int:
    """--setup: the session set-up measurement alone, printed and written to --output."""
    setups = run_setup(ctx)
    print_setup(setups)
    for t in setup_targets(setups):
        print(f"  {t.verdict:<5} {t.name}: {t.detail}")
    output = ctx.args.output if ctx.args.output.is_absolute() else Path.cwd() / ctx.args.output
    write_setup_report(output, command=command, started=started, machine=machine,
                       congestion=congestion, binary=binary, setups=setups, ctx=ctx)
    print(f"\nwrote {output}")
    if ctx.failures:
        print(f"\n!!! {len(ctx.failures)} run(s) FAILED; see above and the logs in "
              f"{ctx.log_dir}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in ["python3", "benchmark.py", *argv])
    started = datetime.datetime.now().astimezone()
    ensure_binary(args)
    chunk_size = parse_size(args.chunk_size) if args.chunk_size else DEFAULT_CHUNK

    own_workdir = args.workdir is None
    workdir = (Path(tempfile.mkdtemp(prefix="p2p-bench-", dir="/tmp")) if own_workdir
               else args.workdir.resolve())
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, workdir)
    results: list[Result] = []
    datasets: dict[str, Dataset] = {}
    extras: dict[str, str] = {}
    old_congestion = None
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.total_timeout))
    try:
        become_subreaper()
        congestion, old_congestion = set_congestion(args.congestion)
        machine = machine_info(workdir)
        binary = f"`{args.binary}` ({binary_info(args.binary)})"
        print(f"workdir {workdir}; congestion control {congestion}; "
              f"{machine['nproc']} CPUs ({machine['cpu']})", flush=True)
        if args.slow_link:
            return slow_link_main(ctx, command=command, started=started, machine=machine,
                                  congestion=congestion, binary=binary)
        if args.setup:
            return setup_main(ctx, command=command, started=started, machine=machine,
                              congestion=congestion, binary=binary)
        if args.relay:
            return relay_main(ctx, command=command, started=started, machine=machine,
                              binary=binary)
        if args.swarm:
            return swarm_main(ctx, command=command, started=started, machine=machine,
                              binary=binary)
        if args.wan_smoke:
            return wan_smoke_main(ctx)
        if args.wan:
            return wan_main(ctx, command=command, started=started, machine=machine,
                            binary=binary)
        if not args.skip_big:
            datasets["big"] = make_big_dataset(ctx.data_dir, args.big_size)
        if not args.skip_small:
            datasets["small"] = make_small_dataset(ctx.data_dir, args.small_count)
        throttle_files: dict[int, Dataset] = {}
        resume_ds = None
        if not args.skip_resilience:
            for rate in THROTTLE_RATES:
                throttle_files[rate] = make_random_file(
                    ctx.data_dir, f"throttle-{rate}M", rate * MiB * THROTTLE_SECONDS)
            resume_ds = make_random_file(ctx.data_dir, f"resume-{RESUME_SIZE // MiB}M",
                                         RESUME_SIZE)

        sshd, sshd_why, wh, wh_why = None, "", None, ""
        if args.compare:
            sshd, sshd_why, wh, wh_why = start_comparison_servers(ctx, extras)

        for ds in datasets.values():
            print(f"\n== {ds.key}: {ds.label}", flush=True)
            results.append(measure_cache_copy(ctx, ds))
            results.append(measure_disk_copy(ctx, ds))
            results.append(measure_tcp_limit(ctx, ds))
            for window in args.windows:
                results.append(measure_p2p(ctx, ds, window))
            if args.compare:
                results.append(measure_scp(ctx, ds, sshd, sshd_why))
                results.append(measure_rsync(ctx, ds, sshd, sshd_why))
                results.append(measure_wormhole(ctx, ds, wh, wh_why))

        throttle: list[ThrottleResult] = []
        resume: ResumeResult | None = None
        if not args.skip_resilience:
            print(f"\n== resilience: --max-speed accuracy, resume after SIGINT", flush=True)
            for rate, ds in throttle_files.items():
                throttle.append(measure_throttle(ctx, ds, rate))
            resume = measure_resume(ctx, resume_ds, DEFAULT_CHUNK)
        setups = [] if args.skip_setup else run_setup(ctx)

        targets = evaluate_targets(results, datasets, chunk_size, args.compare)
        targets += resilience_targets(throttle, resume, resume_ds)
        if setups:
            targets += setup_targets(setups)
        if results:
            print("\n" + text_table(table_rows(results, datasets)))
        if throttle:
            print("\nThrottle accuracy:")
            for row in throttle_rows(throttle):
                print("  " + "  ".join(c.replace("**", "") for c in row if c))
        if resume is not None:
            print(f"\nResume after SIGINT (bound {human_size(resume.bound)}: "
                  f"{resume.bound_how}):")
            for row in resume_rows(resume):
                print("  " + "  ".join(c.replace("**", "") for c in row if c))
        if setups:
            print_setup(setups)
        print("\nTargets (fastest window per data set):")
        for t in targets:
            print(f"  {t.verdict:<5} {t.name}: {t.detail}")
        output = args.output if args.output.is_absolute() else Path.cwd() / args.output
        write_report(output, command=command, started=started, machine=machine,
                     congestion=congestion, binary=binary, datasets=datasets, results=results,
                     targets=targets, ctx=ctx, chunk_size=chunk_size, extras=extras,
                     throttle=throttle, resume=resume, resume_ds=resume_ds, setups=setups)
        print(f"\nwrote {output}")
        if ctx.failures:
            print(f"\n!!! {len(ctx.failures)} run(s) FAILED; see above and the logs in "
                  f"{ctx.log_dir}", file=sys.stderr)
            return 1
        return 0
    except TotalTimeout:
        print(f"error: the benchmark ran past --total-timeout={args.total_timeout:.0f}s; "
              "stopped", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process, namespace and server started",
              file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        ctx.procs.stop_all()
        restore_congestion(old_congestion)
        restore_allowed_congestion(ctx)
        ctx.clear_output()
        ctx.empty_trash()
        if own_workdir:
            if ctx.failures:  # keep the logs for a look; drop the bulky rest
                for child in workdir.iterdir():
                    if child != ctx.log_dir:
                        drop_tree(child)
                print(f"logs kept in {ctx.log_dir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
