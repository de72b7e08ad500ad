#!/usr/bin/env python3
"""GUI against CLI on loopback, and the idle window's cost.

Runs the release binaries under Xvfb:

  throughput  one file (default 256 MiB, random) sent over 127.0.0.1, several rounds of
              CLI -> CLI, CLI -> GUI (the window receives) and GUI -> CLI (the window
              sends); the rate is the sender's own transfer time (the core's `Finished`
              elapsed: offer to the receiver's last confirmation), median per pairing.
  idle        a listening window left alone: RSS and CPU over a window of time.

Usage (from the workspace root):
  cargo build --release -p p2p-transfer -p p2p-gui
  python3 p2p-gui/bench/gui_vs_cli.py [--size-mib 256] [--rounds 5] [--idle-seconds 30]

Needs Xvfb (apt-get install xvfb). Nothing here leaves 127.0.0.1.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.path.join(ROOT, "target", "release", "p2p-transfer")
GUI = os.path.join(ROOT, "target", "release", "p2p-gui")

# "done: 1 file(s), 268435456 bytes in 0.51 s (...)" (CLI, plain output)
CLI_DONE = re.compile(r"done: .*? (\d+) bytes in ([\d.]+) s")
# "finished: 1 file(s), 268435456 bytes in 0.512 s (...)" (GUI stderr)
GUI_DONE = re.compile(r"finished: .*? (\d+) bytes in ([\d.]+) s")


def start_xvfb():
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp", "-noreset"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    display = ":" + xvfb.stdout.readline().strip()
    return xvfb, display


def read_until(stream, prefix, timeout=60):
    """Reads lines until one starts with `prefix`; returns the rest of that line."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line[len(prefix):].strip()
        seen.append(line)
    raise RuntimeError(f"no line starting with {prefix!r}; saw {seen}")


def rate(match):
    size, secs = int(match.group(1)), float(match.group(2))
    return size / secs / 2**20


def cli_receiver(out):
    proc = subprocess.Popen(
        [CLI, "receive", "--bind", "127.0.0.1", "--port", "0", "--output", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, read_until(proc.stderr, "listening on ")


def gui(env, *args):
    return subprocess.Popen(
        [GUI, "--exit-after-transfer", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def cpu_seconds(proc):
    """Waits for `proc` and returns its user + system CPU time."""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def round_cli_cli(source, out):
    receiver, addr = cli_receiver(out)
    send = subprocess.run(
        [CLI, "send", source, "--peer", addr], capture_output=True, text=True, check=True
    )
    receiver.stderr.read()
    return rate(CLI_DONE.search(send.stdout)), cpu_seconds(receiver)


def round_cli_gui(source, out, env):
    window = gui(env, "--listen", "127.0.0.1:0", "--output", out, "--auto-accept")
    addr = read_until(window.stderr, "listening on ")
    send = subprocess.run(
        [CLI, "send", source, "--peer", addr], capture_output=True, text=True, check=True
    )
    rest = window.stderr.read()
    cpu = cpu_seconds(window)
    return rate(CLI_DONE.search(send.stdout)), cpu


def round_gui_cli(source, out, env):
    receiver, addr = cli_receiver(out)
    window = gui(env, "--connect", addr, "--send", source)
    rest = window.stderr.read()
    window.wait(timeout=120)
    receiver.wait(timeout=120)
    return rate(GUI_DONE.search(rest))


def throughput(args, env, work):
    source = os.path.join(work, "payload.bin")
    with open(source, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(2**20))
    results = {"CLI -> CLI": [], "CLI -> GUI (window receives)": [], "GUI -> CLI (window sends)": []}
    for n in range(args.rounds):
        for name in results:
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            os.sync()  # the last round's writeback must not land on this one
            extra = ""
            if name.startswith("CLI -> CLI"):
                r, cpu = round_cli_cli(source, out)
                extra = f" (receiver CPU {cpu:.2f} s)"
            elif name.startswith("CLI -> GUI"):
                r, cpu = round_cli_gui(source, out, env)
                extra = f" (receiving window CPU {cpu:.2f} s, start-up included)"
            else:
                r = round_gui_cli(source, out, env)
            results[name].append(r)
            print(f"round {n + 1} {name}: {r:.0f} MiB/s{extra}", flush=True)
    base = statistics.median(results["CLI -> CLI"])
    print(f"\n{args.size_mib} MiB over 127.0.0.1, {args.rounds} rounds, median rate as the sender timed it:")
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"  {name:32} {med:7.0f} MiB/s  {med / base * 100:5.1f}% of CLI -> CLI")


def idle(args, env):
    window = gui(env, "--listen", "127.0.0.1:0")
    read_until(window.stderr, "listening on ")
    time.sleep(3)  # let the first frames settle before measuring
    tick = os.sysconf("SC_CLK_TCK")

    def cpu_ticks():
        with open(f"/proc/{window.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def rss_mib():
        with open(f"/proc/{window.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    start_ticks, start = cpu_ticks(), time.time()
    peak = rss_mib()
    while time.time() - start < args.idle_seconds:
        time.sleep(1)
        peak = max(peak, rss_mib())
    used = (cpu_ticks() - start_ticks) / tick
    wall = time.time() - start
    window.kill()
    window.wait()
    print(f"\nidle window (listening, no peer) over {wall:.0f} s:")
    print(f"  RSS peak {peak:.1f} MiB, CPU {used:.2f} s = {used / wall * 100:.2f}% of one core")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-seconds", type=int, default=30)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    for binary in (CLI, GUI):
        if not os.path.isfile(binary):
            sys.exit(f"{binary} is missing: cargo build --release -p p2p-transfer -p p2p-gui")
    xvfb, display = start_xvfb()
    work = tempfile.mkdtemp(prefix="p2p-gui-bench-")
    # Children (CLI and window alike) keep their settings, history and beacons here.
    os.environ.update(
        P2P_TRANSFER_CONFIG_DIR=os.path.join(work, "config"),
        P2P_TRANSFER_DATA_DIR=os.path.join(work, "data"),
        P2P_DISCOVERY_TARGETS="127.255.255.255",
    )
    env = dict(
        os.environ,
        DISPLAY=display,
        P2P_TRANSFER_CONFIG_DIR=os.path.join(work, "config"),
        P2P_TRANSFER_DATA_DIR=os.path.join(work, "data"),
        P2P_DISCOVERY_TARGETS="127.255.255.255",  # beacons stay on this machine
    )
    env.pop("WAYLAND_DISPLAY", None)
    try:
        if not args.skip_throughput:
            throughput(args, env, work)
        if not args.skip_idle:
            idle(args, env)
    finally:
        xvfb.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
