#!/usr/bin/env python3
"""A minimal fulcrum agent: dials the balancer's agent port and pushes load reports.

Standard library only, so it doubles as a reference implementation of docs/agent-protocol.md
for backends written in other languages. The Rust codec's tests run its --print-hex mode and
compare the bytes with their own, so this file and the protocol cannot drift apart.

    python3 examples/agent_client.py --agent 127.0.0.1:7000 --key-file agent.key \
        --pool app --address :9001 --clients 3 --queue 0 --interval 1.0 --count 5

`--address :9001` sends only the port: the balancer takes the IP this connection comes from.
A full ip:port on another host is refused unless the pool sets trust_claimed_address.

Exit status: 0 after --count reports and a BYE (or on Ctrl-C), 1 when the balancer sends an
ERROR frame or closes the connection, 2 on bad arguments or a connection failure.
"""

import argparse
import hashlib
import hmac
import json
import socket
import struct
import sys
import time

VERSION = 1
MAGIC = b"FLCR"
NONCE_LEN = 16
CHALLENGE_LEN = 22
MAX_FRAME = 1024
KIND_CHALLENGE = 0x01
KIND_HELLO = 0x10
KIND_REPORT = 0x11
KIND_BYE = 0x12
KIND_ERROR = 0x7F


def encode_frame(key, nonce, kind, seq, payload):
    """len u16 | kind u8 | seq u64 | payload | HMAC-SHA256(key, nonce|kind|seq|payload)."""
    head = struct.pack(">BQ", kind, seq)
    mac = hmac.new(key, nonce + head + payload, hashlib.sha256).digest()
    body = head + payload + mac
    if len(body) > MAX_FRAME:
        raise ValueError("frame of %d bytes exceeds %d" % (len(body), MAX_FRAME))
    return struct.pack(">H", len(body)) + body


def json_payload(obj):
    # Compact, keys in insertion order, UTF-8: byte for byte what the Rust encoder writes
    # (the balancer does not need that, it checks the MAC over the bytes as sent; the tests do).
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hello_frame(key, nonce, seq, pool, address):
    payload = json_payload({"pool": pool, "address": address, "version": VERSION})
    return encode_frame(key, nonce, KIND_HELLO, seq, payload)


def report_frame(key, nonce, seq, clients, queue, weight=None, state=None):
    report = {"clients": clients, "queue": queue}
    if weight is not None:
        report["weight"] = weight
    if state is not None:
        report["state"] = state
    return encode_frame(key, nonce, KIND_REPORT, seq, json_payload(report))


def bye_frame(key, nonce, seq):
    return encode_frame(key, nonce, KIND_BYE, seq, b"")


def parse_challenge(b):
    if len(b) != CHALLENGE_LEN or b[:4] != MAGIC or b[4] != VERSION or b[5] != KIND_CHALLENGE:
        raise ValueError("not a fulcrum agent challenge: %s" % b.hex())
    return b[6:]


class RemoteError(Exception):
    """The balancer sent an ERROR frame (or closed) and is done with us."""

    def __init__(self, reason, closed=False):
        super().__init__(reason)
        self.closed = closed


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RemoteError("connection closed by the balancer", closed=True)
        buf += chunk
    return buf


def read_error(sock, first=b""):
    """Reads the ERROR frame whose first bytes (maybe none yet) are `first`; returns the reason."""
    head = first + recv_exact(sock, 2 - len(first)) if len(first) < 2 else first
    (length,) = struct.unpack(">H", head[:2])
    if length == 0 or length > MAX_FRAME:
        return "unexpected bytes from the balancer: %s" % head.hex()
    body = head[2:] + recv_exact(sock, max(0, length - len(head[2:])))
    if body[0] != KIND_ERROR:
        return "unexpected frame kind 0x%02x from the balancer" % body[0]
    return body[1:length].decode("utf-8", "replace")


def wait_for_error(sock, seconds):
    """Sleeps up to `seconds` while watching the socket: the balancer only ever speaks to say
    why it is closing. Raises RemoteError if it did."""
    sock.settimeout(max(seconds, 0.001))
    try:
        first = sock.recv(2)
    except socket.timeout:
        return
    finally:
        sock.settimeout(None)
    if not first:
        raise RemoteError("connection closed by the balancer", closed=True)
    raise RemoteError(read_error(sock, first))


def send(sock, frame):
    """sendall, but a write refused because the balancer already closed is reported with the
    ERROR frame it sent before closing, when that can still be read."""
    try:
        sock.sendall(frame)
    except OSError as e:
        try:
            wait_for_error(sock, 1.0)
        except (RemoteError, OSError) as remote:
            raise RemoteError(str(remote)) from e
        raise RemoteError("write failed: %s" % e) from e


def load_key(path):
    with open(path, "rb") as f:
        key = f.read().strip()
    if not key:
        raise ValueError("key file %s is empty" % path)
    return key


def split_host_port(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected host:port, got %r" % s)
    return host.strip("[]"), int(port)


def run(args, key):
    sock = socket.create_connection(split_host_port(args.agent), timeout=10)
    sock.settimeout(None)
    with sock:
        first = recv_exact(sock, 2)
        # A challenge starts with "FL", which as a length (17996) is far above MAX_FRAME:
        # anything else is an ERROR frame sent instead of the challenge.
        if first != MAGIC[:2]:
            raise RemoteError(read_error(sock, first))
        nonce = parse_challenge(first + recv_exact(sock, CHALLENGE_LEN - 2))
        seq = 1
        send(sock, hello_frame(key, nonce, seq, args.pool, args.address))
        sent = 0
        try:
            while args.count is None or sent < args.count:
                seq += 1
                frame = report_frame(
                    key, nonce, seq, args.clients, args.queue, args.weight, args.state
                )
                send(sock, frame)
                sent += 1
                print(
                    "report seq=%d clients=%d queue=%d" % (seq, args.clients, args.queue),
                    flush=True,
                )
                if args.count is None or sent < args.count:
                    wait_for_error(sock, args.interval)
        except KeyboardInterrupt:
            pass
        seq += 1
        send(sock, bye_frame(key, nonce, seq))
        sock.shutdown(socket.SHUT_WR)
        # The balancer closes after BYE. A rejected last report (or BYE) is answered with an
        # ERROR frame first; give it a moment to arrive.
        try:
            wait_for_error(sock, 1.0)
        except RemoteError as e:
            if not e.closed:
                raise


def main():
    p = argparse.ArgumentParser(description="Push load reports to a fulcrum agent port.")
    p.add_argument("--agent", help="balancer agent port, host:port")
    p.add_argument("--key-file", required=True, help="pre-shared key (content, trimmed)")
    p.add_argument("--pool", required=True)
    p.add_argument("--address", required=True, help="where clients reach this backend: :port (on the IP this "
                   "connection comes from) or ip:port (another IP needs the pool's trust_claimed_address)")
    p.add_argument("--clients", type=int, default=0)
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--weight", type=int, default=None)
    p.add_argument("--state", choices=["up", "drain", "down"], default=None)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reports")
    p.add_argument("--count", type=int, default=None, help="reports to send (default: forever)")
    p.add_argument(
        "--print-hex",
        action="store_true",
        help="print the HELLO (seq 1), REPORT (seq 2) and BYE (seq 3) frames for --nonce-hex "
        "as hex, one per line, without connecting",
    )
    p.add_argument("--nonce-hex", help="the challenge nonce to use with --print-hex")
    args = p.parse_args()
    try:
        key = load_key(args.key_file)
    except (OSError, ValueError) as e:
        print("agent_client: %s" % e, file=sys.stderr)
        return 2

    if args.print_hex:
        nonce = bytes.fromhex(args.nonce_hex or "")
        if len(nonce) != NONCE_LEN:
            print("agent_client: --nonce-hex needs %d bytes" % NONCE_LEN, file=sys.stderr)
            return 2
        print(hello_frame(key, nonce, 1, args.pool, args.address).hex())
        print(report_frame(key, nonce, 2, args.clients, args.queue, args.weight, args.state).hex())
        print(bye_frame(key, nonce, 3).hex())
        return 0

    if not args.agent:
        print("agent_client: --agent is required", file=sys.stderr)
        return 2
    try:
        run(args, key)
    except RemoteError as e:
        print("balancer error: %s" % e, flush=True)
        return 1
    except (OSError, ValueError) as e:
        print("agent_client: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
