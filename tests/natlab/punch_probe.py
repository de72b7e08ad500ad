#!/usr/bin/env python3
"""A minimal UDP hole puncher for the NAT lab (Python standard library only).

Run one inside h1 and one inside h2 with the same --dir. Each side

1. binds one UDP socket and learns its public address with a STUN Binding request
   (RFC 5389, written by hand) sent from that socket to --stun;
2. writes "PUBLIC LOCAL" to DIR/NAME.addr and waits for DIR/PEER.addr;
3. sleeps --delay seconds (the skew: one side starts punching late);
4. punches: sends a probe to the peer's public address every 50 ms and listens for the
   peer's probes, for --timeout seconds from its own start.

With --prime-ttl N the side first sends 3 probes with IP_TTL=N: they open the mapping in
its own NAT router but die one hop later (at the lab's "inet" router), so they never reach
the far router. With --wait-peer (only with --prime-ttl) it then keeps sending
TTL-limited probes until the peer has primed too (DIR/PEER.primed exists — in a real
client the rendezvous carries that signal) or a probe from the peer arrived, and only
then sends probes that reach the far side.

Prints one JSON line with what happened and exits 0 if a probe from the peer arrived
within the window, 1 if not, 2 on a usage or setup error.

  natlab.sh exec P h1 python3 punch_probe.py --name h1 --peer h2 --dir D &
  natlab.sh exec P h2 python3 punch_probe.py --name h2 --peer h1 --dir D --delay 1
"""

import argparse
import json
import os
import socket
import struct
import sys
import time

MAGIC = 0x2112A442
PROBE = b"natlab-probe"
POLL = 0.01


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def stun_binding(sock, server, timeout=3.0):
    """Sends a Binding request from `sock` and returns the (ip, port) the server saw."""
    txid = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, MAGIC) + txid
    deadline = time.monotonic() + timeout
    next_send = 0.0
    interval = 0.5
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            sock.sendto(request, server)
            next_send = now + interval
            interval *= 2
        sock.settimeout(max(0.01, min(next_send, deadline) - time.monotonic()))
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            continue
        if len(data) < 20 or data[0] & 0xC0 != 0:
            continue
        kind, length, magic = struct.unpack("!HHI", data[:8])
        if kind != 0x0101 or magic != MAGIC or data[8:20] != txid:
            continue
        found = None
        offset = 20
        end = min(len(data), 20 + length)
        while offset + 4 <= end:
            attr, alen = struct.unpack("!HH", data[offset:offset + 4])
            value = data[offset + 4:offset + 4 + alen]
            if attr in (0x0020, 0x0001) and alen >= 8 and value[1] == 0x01:
                port, raw = struct.unpack("!H4s", value[2:8])
                if attr == 0x0020:
                    port ^= MAGIC >> 16
                    raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC)))
                address = (socket.inet_ntoa(raw), port)
                if attr == 0x0020 or found is None:
                    found = address
            offset += 4 + ((alen + 3) & ~3)
        if found:
            return found
    return None


def local_ip_towards(server):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(server)
        return probe.getsockname()[0]
    finally:
        probe.close()


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_for_file(path, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text:
                return text
        time.sleep(POLL)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="this side's name (h1)")
    parser.add_argument("--peer", required=True, help="the other side's name (h2)")
    parser.add_argument("--dir", required=True, help="directory shared by both sides")
    parser.add_argument("--stun", default="10.200.0.2:3478", help="STUN server ip:port")
    parser.add_argument("--port", type=int, default=0, help="local UDP port (0: any)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before punching")
    parser.add_argument("--prime-ttl", type=int, default=0, help="send 3 probes with this IP TTL first")
    parser.add_argument("--wait-peer", action="store_true",
                        help="with --prime-ttl: full-TTL probes only once the peer primed too")
    parser.add_argument("--to", choices=["public", "local", "both"], default="public",
                        help="which of the peer's addresses to probe")
    parser.add_argument("--timeout", type=float, default=5.0, help="punching window in seconds")
    args = parser.parse_args()
    if args.wait_peer and not args.prime_ttl:
        parser.error("--wait-peer needs --prime-ttl")

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    stun = parse_addr(args.stun)
    public = stun_binding(sock, stun)
    local = (local_ip_towards(stun), sock.getsockname()[1])
    report = {"name": args.name, "local": "%s:%d" % local,
              "public": "%s:%d" % public if public else None}
    if public is None:
        report["error"] = "no STUN answer from %s" % args.stun
        print(json.dumps(report), flush=True)
        return 2
    me = os.path.join(args.dir, args.name)
    peer = os.path.join(args.dir, args.peer)
    write_atomic(me + ".addr", "%s:%d %s:%d\n" % (public + local))
    text = wait_for_file(peer + ".addr", 15.0)
    if text is None:
        report["error"] = "the peer's address did not appear in %s.addr" % peer
        print(json.dumps(report), flush=True)
        return 2
    peer_public, peer_local = (parse_addr(a) for a in text.split())
    targets = {"public": [peer_public], "local": [peer_local],
               "both": [peer_public, peer_local]}[args.to]
    report["peer_public"] = "%s:%d" % peer_public

    time.sleep(args.delay)
    start = time.monotonic()
    normal_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    sent = {"primed": 0, "full": 0}
    seq = 0

    def send(ttl_limited):
        nonlocal seq
        payload = b"%s %s %d" % (PROBE, args.name.encode(), seq)
        seq += 1
        for target in targets:
            sock.sendto(payload, target)
            sent["primed" if ttl_limited else "full"] += 1

    priming = args.prime_ttl > 0
    if priming:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, args.prime_ttl)
        for _ in range(3):
            send(True)
        write_atomic(me + ".primed", "1\n")
        if not args.wait_peer:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, normal_ttl)
            priming = False

    received = 0
    first_from = None
    first_at = None
    next_send = time.monotonic()
    deadline = start + args.timeout
    while time.monotonic() < deadline:
        if priming and (received or os.path.exists(peer + ".primed")):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, normal_ttl)
            priming = False
        now = time.monotonic()
        if now >= next_send:
            send(priming)
            next_send = now + 0.05
        # Done once this side heard the peer and the peer heard this side.
        if received and os.path.exists(peer + ".got"):
            break
        sock.settimeout(max(0.001, min(next_send, deadline) - time.monotonic()))
        try:
            data, source = sock.recvfrom(2048)
        except socket.timeout:
            continue
        except ConnectionRefusedError:
            continue
        if not data.startswith(PROBE + b" " + args.peer.encode() + b" "):
            continue
        received += 1
        if first_from is None:
            first_from = "%s:%d" % source
            first_at = time.monotonic() - start
            write_atomic(me + ".got", "1\n")
    report.update({
        "delay": args.delay,
        "prime_ttl": args.prime_ttl,
        "sent_primed": sent["primed"],
        "sent": sent["full"],
        "received": received,
        "first_from": first_from,
        "first_after_s": round(first_at, 3) if first_at is not None else None,
        "ok": received > 0,
    })
    print(json.dumps(report), flush=True)
    return 0 if received else 1


if __name__ == "__main__":
    sys.exit(main())
