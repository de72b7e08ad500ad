#!/usr/bin/env python3
"""The NAT matrix: p2p-transfer across every pair of NAT kinds in the lab, with skew.

For every cell (a pair of router modes, or two hosts behind one router), every skew and
every late side, the runner brings up a fresh lab (natlab.sh), starts a rendezvous on the
public side, a sender in h1 and a receiver in h2, and records whether the file arrived
byte-identical, which path carried it (at the first byte and at the end), the time to
the first byte and the wall time. It prints a markdown table (for docs/natlab.md) and
writes every run as JSON.

  sudo tests/natlab/matrix.py --binary target/release/p2p-transfer            # all cells
  sudo tests/natlab/matrix.py --cells ci --skews 0,1                          # reduced
  sudo tests/natlab/matrix.py --cells cone:cone --random-skew 200             # % direct
  tests/natlab/matrix.py --dry-run                                            # the plan

Cells: MODE_A:MODE_B (sender behind rt1 in MODE_A, receiver behind rt2 in MODE_B) or
same:MODE (both behind one rt1); `all` = every unordered pair of cone, cone-dropped,
symmetric, blocked, plus same:cone; `ordered` = every ordered pair (who sends from
behind which router) plus same:cone; `ci` = cone:cone, symmetric:cone,
symmetric:symmetric, same:cone.

Skew: the late side gets P2P_PUNCH_DELAY_MS=SKEW*1000 in its environment, which delays
its first probe. Skew 0 is one run; any other skew is one run with the sender late and
one with the receiver late (--late narrows that).

Time to first byte: from the moment the receiver was started (the sender was started
before it and had already printed its code, so that is when both processes run) to the
receiver's first `progress` event with done_bytes > 0 — or its first `file_done`/`done`
if that comes earlier. `progress` comes at most 4 times a second, so the figure can be
up to 0.25 s late. Both `started` (the offer accepted) and the first `path` event are
recorded as well. The skew is included (the late side waits on purpose); the table also
shows the time to first byte minus the skew. Wall time: from the receiver's start until
both processes exited.

Stdlib only; needs root (namespaces) except with --dry-run.
"""

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAB = os.path.join(HERE, "natlab.sh")
MODES = ["cone", "cone-dropped", "symmetric", "blocked"]
CI_CELLS = ["cone:cone", "symmetric:cone", "symmetric:symmetric", "same:cone"]
RENDEZVOUS = "10.200.0.4:4000"
TURN = "10.200.0.2:3478"
DIRECT = ("direct", "lan")


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    number = text.rstrip("KMG")
    return int(float(number) * units[text[len(number):]])


def expand_cells(spec):
    cells = []
    for part in spec.split(","):
        part = part.strip()
        if part == "all":
            pairs = itertools.combinations_with_replacement(MODES, 2)
            cells += ["%s:%s" % pair for pair in pairs] + ["same:cone"]
        elif part == "ordered":
            pairs = itertools.product(MODES, repeat=2)
            cells += ["%s:%s" % pair for pair in pairs] + ["same:cone"]
        elif part == "ci":
            cells += CI_CELLS
        elif part:
            a, _, b = part.partition(":")
            known = MODES + ["open", "random"]
            if not b or (a != "same" and a not in known) or b not in known:
                raise SystemExit("matrix: bad cell %r (MODE:MODE or same:MODE)" % part)
            cells.append(part)
    return list(dict.fromkeys(cells))


def expected_path(cell):
    a, _, b = cell.partition(":")
    if a == "same":
        return "lan"  # the private host candidates on the shared LAN
    if "blocked" in (a, b) or (a == "symmetric" and b == "symmetric"):
        return "relay"
    return "direct"


def plan_runs(args):
    runs = []
    if args.random_skew:
        rng = random.Random(args.seed)
        for i in range(args.random_skew):
            skew = round(rng.uniform(0.0, 3.0), 3)
            late = rng.choice(["sender", "receiver"])
            runs.append({"cell": args.random_cell, "skew": skew, "late": late, "repeat": i,
                         "random": True})
        return runs
    lates = [x for x in args.late.split(",") if x]
    for cell in expand_cells(args.cells):
        for skew in [float(s) for s in args.skews.split(",") if s != ""]:
            for late in (["-"] if skew == 0 else lates):
                for repeat in range(args.repeat):
                    runs.append({"cell": cell, "skew": skew, "late": late, "repeat": repeat})
    return runs


def lab_args(cell):
    a, _, b = cell.partition(":")
    return ["same", b] if a == "same" else ["pair", a, b]


class Proc:
    """A process with its stdout and stderr read line by line, each line timestamped."""

    def __init__(self, argv, env, log_path, t0):
        self.argv = argv
        self.t0 = t0
        self.lines = []  # (seconds since t0, stream, text)
        self.cond = threading.Condition()
        self.log = open(log_path, "w")
        self.log.write("$ %s\n" % " ".join(argv))
        self.log.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True,
                                     errors="replace", bufsize=1)
        self.started = time.monotonic()
        self.ended = None
        self.readers = [threading.Thread(target=self._read, args=(s, n), daemon=True)
                        for s, n in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, name):
        for line in stream:
            now = time.monotonic() - self.t0
            with self.cond:
                self.lines.append((now, name, line.rstrip("\n")))
                self.log.write("%8.3f %s %s" % (now, name, line))
                self.log.flush()
                self.cond.notify_all()

    def wait_line(self, predicate, limit):
        """The first line (any stream) for which predicate(stream, text) holds, or None."""
        deadline = time.monotonic() + limit
        seen = 0
        with self.cond:
            while True:
                for entry in self.lines[seen:]:
                    if predicate(entry[1], entry[2]):
                        return entry
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)
                                 and not any(r.is_alive() for r in self.readers)):
                    return None
                self.cond.wait(min(left, 0.05))

    def wait(self, limit):
        """Exit code, or None after killing it at the deadline."""
        try:
            code = self.proc.wait(timeout=max(0.0, limit))
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        if self.ended is None:
            self.ended = time.monotonic()
        for reader in self.readers:
            reader.join(timeout=2)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.ended = time.monotonic()

    def events(self):
        found = []
        for at, stream, text in self.lines:
            if stream == "out" and text.startswith("{"):
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    found.append((at, event))
        return found

    def close(self):
        self.kill()
        self.log.close()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commands(args, run, prefix, state, outdir, source):
    """The argv of each process of a run, and the env overrides of the two peers."""
    lab = ["bash", LAB]
    rendezvous = lab + ["exec", prefix, "inet", args.binary, "rendezvous", "--listen",
                        RENDEZVOUS, "--turn", TURN, "--turn-secret-file",
                        os.path.join(state, "turn-secret")] + args.rendezvous_arg
    send = lab + ["exec", prefix, "h1", args.binary, "send", source, "--rendezvous",
                  RENDEZVOUS, "--json"] + args.send_arg
    receive = lab + ["exec", prefix, "h2", args.binary, "receive", "CODE", "--rendezvous",
                     RENDEZVOUS, "--output", outdir, "--json"] + args.receive_arg
    delay = {"P2P_PUNCH_DELAY_MS": str(int(round(run["skew"] * 1000)))}
    env = {"sender": delay if run["late"] == "sender" else {},
           "receiver": delay if run["late"] == "receiver" else {}}
    return rendezvous, send, receive, env


def path_events(proc):
    return [(at, e) for at, e in proc.events() if e.get("event") == "path"]


def path_at(paths, moment):
    """The path in force at `moment` (the last path event at or before it)."""
    current = None
    for at, event in paths:
        if moment is None or at <= moment:
            current = event.get("path")
    return current


def run_one(args, run, index, workdir, source, source_hash):
    prefix = "mx%dn%d" % (os.getpid() % 100000, index)
    logs = os.path.join(args.logs, "%03d-%s-%s-%s" % (index, run["cell"].replace(":", "-"),
                                                       run["skew"], run["late"]))
    os.makedirs(logs, exist_ok=True)
    outdir = os.path.join(workdir, "out-%d" % index)
    result = dict(run, prefix=prefix, logs=logs, completed=False, error=None)
    procs = []
    up = subprocess.run(["bash", LAB, "up", prefix] + lab_args(run["cell"]),
                        capture_output=True, text=True, timeout=60)
    try:
        if up.returncode != 0:
            result["error"] = "natlab.sh up failed: " + up.stderr.strip()[-300:]
            return result
        state = subprocess.run(["bash", LAB, "state", prefix], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        rendezvous, send, receive, env = commands(args, run, prefix, state, outdir, source)
        t0 = time.monotonic()

        rdv = Proc(rendezvous, dict(os.environ), os.path.join(logs, "rendezvous.log"), t0)
        procs.append(rdv)
        if rdv.wait_line(lambda s, t: "listening on" in t, 15) is None:
            result["error"] = "the rendezvous did not print 'listening on'"
            return result

        sender = Proc(send, dict(os.environ, **env["sender"]),
                      os.path.join(logs, "send.log"), t0)
        procs.append(sender)

        def code_line(stream, text):
            if stream != "out":
                return False
            try:
                return json.loads(text).get("event") == "code"
            except (ValueError, AttributeError):
                return False

        line = sender.wait_line(code_line, args.timeout)
        if line is None:
            result["error"] = "the sender printed no code"
            return result
        code = json.loads(line[2])["code"]
        receive = [code if a == "CODE" else a for a in receive]
        result["code_after_s"] = round(line[0], 3)

        receiver = Proc(receive, dict(os.environ, **env["receiver"]),
                        os.path.join(logs, "receive.log"), t0)
        procs.append(receiver)
        both = receiver.started
        deadline = both + args.timeout
        result["receiver_exit"] = receiver.wait(deadline - time.monotonic())
        result["sender_exit"] = sender.wait(deadline - time.monotonic())
        ended = max(p.ended or time.monotonic() for p in (sender, receiver))
        result["wall_s"] = round(ended - both, 3)

        base = both - t0
        first_byte = None
        for at, event in receiver.events():
            kind = event.get("event")
            if (kind == "progress" and (event.get("done_bytes") or 0) > 0) or \
                    kind in ("file_done", "done"):
                first_byte = at
                break
        started = next((at for at, e in receiver.events() if e.get("event") == "started"),
                       None)
        r_paths, s_paths = path_events(receiver), path_events(sender)
        result.update({
            "ttfb_s": round(first_byte - base, 3) if first_byte is not None else None,
            "started_s": round(started - base, 3) if started is not None else None,
            "first_path_s": round(r_paths[0][0] - base, 3) if r_paths else None,
            "path_first_byte": path_at(r_paths, first_byte) if first_byte else None,
            "path_end": path_at(r_paths, None),
            "paths_receiver": [[round(at - base, 3), e.get("path"), e.get("address")]
                               for at, e in r_paths],
            "paths_sender": [[round(at - base, 3), e.get("path"), e.get("address")]
                             for at, e in s_paths],
        })
        errors = [e.get("message") for _, e in receiver.events() + sender.events()
                  if e.get("event") == "error"]
        if errors:
            result["error"] = "; ".join(str(m) for m in errors)[:300]
        arrived = os.path.join(outdir, os.path.basename(source))
        if os.path.isfile(arrived):
            result["completed"] = (result["receiver_exit"] == 0 and
                                   sha256(arrived) == source_hash)
        elif result["error"] is None:
            result["error"] = "nothing arrived"
        return result
    finally:
        for proc in reversed(procs):
            proc.close()
        subprocess.run(["bash", LAB, "down", prefix], capture_output=True, timeout=60)
        shutil.rmtree(outdir, ignore_errors=True)


def describe(run):
    if run["skew"] == 0:
        return "0"
    return "%g s, %s late" % (run["skew"], run["late"])


def fmt_s(value):
    return "–" if value is None else "%.2f" % value


def cell_name(cell):
    a, _, b = cell.partition(":")
    return "same NAT (%s)" % b if a == "same" else "%s × %s" % (a, b)


def markdown(results, title):
    if results and all(r.get("random") for r in results):
        return random_markdown(results, title)
    rows = ["| cell | skew | completed | path at first byte → end | expected | "
            "time to first byte (s) | of it after the skew (s) | wall (s) |",
            "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in results:
        groups.setdefault((r["cell"], r["skew"], r["late"]), []).append(r)
    for (cell, _, _), runs in groups.items():
        done = sum(1 for r in runs if r["completed"])
        paths = {}
        for r in runs:
            key = "%s → %s" % (r.get("path_first_byte") or "?", r.get("path_end") or "?")
            paths[key] = paths.get(key, 0) + 1
        path_text = ", ".join(k if len(runs) == 1 else "%s ×%d" % (k, n)
                              for k, n in paths.items())
        ttfb = [r["ttfb_s"] for r in runs if r.get("ttfb_s") is not None]
        wall = [r["wall_s"] for r in runs if r.get("wall_s") is not None]
        rows.append("| %s | %s | %d/%d | %s | %s | %s | %s | %s |" % (
            cell_name(cell), describe(runs[0]), done, len(runs), path_text,
            expected_path(cell), median_max(ttfb), median_max([after_skew(r) for r in runs]),
            fmt_s(statistics.median(wall)) if wall else "–"))
    summary = summarise(results)
    lines = ["### " + title, ""] + rows + ["", summary_text(summary)]
    return "\n".join(lines) + "\n", summary


def after_skew(run):
    """Time to first byte minus the late side's deliberate delay."""
    if run.get("ttfb_s") is None:
        return None
    return round(run["ttfb_s"] - run["skew"], 3)


def median_max(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    text = fmt_s(statistics.median(values))
    return text + (" (max %s)" % fmt_s(max(values)) if len(values) > 1 else "")


def percentile(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def random_markdown(results, title):
    """The --random-skew runs, by skew bucket and late side."""
    rows = ["| skew | late side | runs | completed | ended direct | "
            "time to first byte after the skew (s) |", "|---|---|---|---|---|---|"]
    for low in (0, 1, 2):
        for late in ("sender", "receiver"):
            runs = [r for r in results if r["late"] == late and
                    (low <= r["skew"] < low + 1 or (low == 2 and r["skew"] >= 3))]
            if not runs:
                continue
            rows.append("| %d–%d s | %s | %d | %d | %d | %s |" % (
                low, low + 1, late, len(runs), sum(r["completed"] for r in runs),
                sum(1 for r in runs if r.get("path_end") in DIRECT),
                median_max([after_skew(r) for r in runs])))
    summary = summarise(results)
    failed = ["run %d (%s, skew %g s, %s late): %s" % (i, cell_name(r["cell"]), r["skew"],
                                                        r["late"], r.get("error"))
              for i, r in enumerate(results) if not r["completed"]]
    lines = ["### " + title, ""] + rows + ["", summary_text(summary)]
    if failed:
        lines += [""] + ["- " + f for f in failed]
    return "\n".join(lines) + "\n", summary


def summarise(results):
    ttfb = [r.get("ttfb_s") for r in results]
    ttfb_after = [after_skew(r) for r in results]
    direct = [r for r in results if r.get("path_end") in DIRECT]
    met = [r for r in results if r["completed"] and
           (expected_path(r["cell"]) == "relay" or r.get("path_end") in DIRECT)]
    present = [v for v in ttfb if v is not None]
    return {"runs": len(results), "completed": sum(r["completed"] for r in results),
            "direct_at_end": len(direct), "as_expected": len(met),
            "ttfb_median_s": statistics.median(present) if present else None,
            "ttfb_p95_s": percentile(ttfb, 0.95),
            "ttfb_after_skew_p95_s": percentile(ttfb_after, 0.95)}


def summary_text(s):
    pct = (100.0 * s["direct_at_end"] / s["runs"]) if s["runs"] else 0.0
    return ("%d runs: %d completed byte-identical, %d ended on a direct path (%.1f%%), "
            "%d completed on the expected path; time to first byte median %s s, "
            "95th percentile %s s (%s s after the skew)." % (
                s["runs"], s["completed"], s["direct_at_end"], pct, s["as_expected"],
                fmt_s(s["ttfb_median_s"]), fmt_s(s["ttfb_p95_s"]),
                fmt_s(s["ttfb_after_skew_p95_s"])))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(HERE, "..", "..", "target", "release",
                                                         "p2p-transfer"),
                        help="the p2p-transfer binary (default: target/release/p2p-transfer)")
    parser.add_argument("--cells", default="all", help="comma list: all, ordered, ci, MODE:MODE, same:MODE")
    parser.add_argument("--skews", default="0,1,3", help="seconds, comma list (default 0,1,3)")
    parser.add_argument("--late", default="sender,receiver",
                        help="who is late when skew > 0 (default: both, one run each)")
    parser.add_argument("--size", default="4M", help="file size (default 4M)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (cell, skew, late side)")
    parser.add_argument("--random-skew", type=int, default=0, metavar="N",
                        help="instead of the matrix: N runs of --random-cell with a random "
                             "skew in 0-3 s and a random late side; reports %% direct")
    parser.add_argument("--random-cell", default="cone:cone",
                        help="the cell for --random-skew (default cone:cone, the collision)")
    parser.add_argument("--seed", type=int, default=None, help="seed for --random-skew")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each run's sender and receiver may take (default 60)")
    parser.add_argument("--json", default="natlab-matrix.json", help="where to write the runs")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--logs", default=None, help="per-run logs (default: a temp dir, kept)")
    parser.add_argument("--send-arg", action="append", default=[], help="extra send argument")
    parser.add_argument("--receive-arg", action="append", default=[],
                        help="extra receive argument (e.g. --receive-arg=--yes)")
    parser.add_argument("--rendezvous-arg", action="append", default=[],
                        help="extra rendezvous argument")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--from-json", metavar="FILE",
                        help="print the table of an earlier run's JSON file and exit")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        table, _ = markdown(report["runs"], report["title"])
        print(table)
        return 0
    args.binary = os.path.abspath(args.binary)
    size = parse_size(args.size)
    runs = plan_runs(args)
    title = ("%d runs of %s with random skew 0–3 s" % (args.random_skew, args.random_cell)
             if args.random_skew else "NAT matrix")

    if args.dry_run:
        print("%s: %d runs, %d bytes each, timeout %g s per run, binary %s" % (
            title, len(runs), size, args.timeout, args.binary))
        for i, run in enumerate(runs):
            prefix = "mx%dn%d" % (os.getpid() % 100000, i)
            rdv, send, receive, env = commands(args, run, prefix, "STATE", "OUT", "FILE")
            print("\n# run %d: %s, skew %s (expected: %s)" % (
                i, cell_name(run["cell"]), describe(run), expected_path(run["cell"])))
            print("natlab.sh up %s %s" % (prefix, " ".join(lab_args(run["cell"]))))
            print(" ".join(rdv[1:]).replace(LAB, "natlab.sh") + "   # until 'listening on'")
            print(" ".join("%s=%s" % kv for kv in env["sender"].items()) +
                  (" " if env["sender"] else "") + " ".join(send[1:]).replace(LAB, "natlab.sh") + "   # until {\"event\":\"code\"}")
            print(" ".join("%s=%s" % kv for kv in env["receiver"].items()) +
                  (" " if env["receiver"] else "") + " ".join(receive[1:]).replace(LAB, "natlab.sh"))
            print("natlab.sh down %s" % prefix)
        return 0

    if os.geteuid() != 0:
        raise SystemExit("matrix: needs root (network namespaces); try --dry-run")
    if not os.access(args.binary, os.X_OK):
        raise SystemExit("matrix: no binary at %s (cargo build --release)" % args.binary)

    # SIGTERM ends the run like Ctrl+C: the finally blocks tear the lab down.
    def terminated(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminated)

    workdir = tempfile.mkdtemp(prefix="natlab-matrix-")
    args.logs = os.path.abspath(args.logs or os.path.join(workdir, "logs"))
    source = os.path.join(workdir, "payload.bin")
    with open(source, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)
    source_hash = sha256(source)
    results = []
    try:
        for i, run in enumerate(runs):
            began = time.monotonic()
            result = run_one(args, run, i, workdir, source, source_hash)
            results.append(result)
            print("[%d/%d] %-28s skew %-20s %s  path %s → %s  ttfb %s s  wall %s s%s" % (
                i + 1, len(runs), cell_name(run["cell"]), describe(run),
                "OK  " if result["completed"] else "FAIL",
                result.get("path_first_byte"), result.get("path_end"),
                fmt_s(result.get("ttfb_s")), fmt_s(result.get("wall_s")),
                "  (%s)" % result["error"] if result.get("error") else ""),
                file=sys.stderr, flush=True)
            result["run_s"] = round(time.monotonic() - began, 3)
    except KeyboardInterrupt:
        print("matrix: interrupted; reporting the %d runs done" % len(results), file=sys.stderr)
    finally:
        os.remove(source)
    table, summary = markdown(results, title)
    report = {"title": title, "binary": args.binary, "size": size, "timeout_s": args.timeout,
              "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "summary": summary,
              "ttfb": "receiver start → first progress with done_bytes > 0 (or file_done/done)",
              "runs": results}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    print("runs: %s; logs: %s" % (args.json, args.logs), file=sys.stderr)
    return 0 if results and summary["completed"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
