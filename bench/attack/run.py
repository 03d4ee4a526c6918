#!/usr/bin/env python3
"""Latency of a legitimate client while one or many addresses attack the balancer
(issue 17's benchmark): a fulcrum with default settings in front of `fulcrum backend
--protocol http` (and nginx serving 1 MiB for the slow-read case), a legitimate client
from 127.0.0.1 opening a new connection per request at 200 a second (one HTTP/1.1 GET
each, open loop: a request starts on its tick whether or not the last one ended), first
with no attack (quiet), then during each attack, run by a process of its own:

  l4-idle-one    12,000 idle TCP connections from 127.0.0.3 (tcp frontend)
  l4-idle-many   1,000 addresses (127.2.x.y) x 12 idle connections (tcp frontend)
  http-slowloris 10,000 connections from 127.0.0.3, a request line and a header, then a
                 header line every 2 s (http frontend)
  http-slowread  4,000 connections from 127.0.0.4 asking for 1 MiB with a 4 KiB receive
                 buffer, reading nothing (http frontend, nginx behind it)

Prints a markdown table: p50 and p99 of the legitimate requests, quiet and under attack,
their ratio, and how many were served. Everything on loopback; every loop bounded.

    python3 bench/attack/run.py --fulcrum target/release/fulcrum [--seconds 10]
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

RATE = 200  # legitimate requests a second


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit}s")


async def one_get(port, path):
    t0 = time.perf_counter()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        w.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        if not data.startswith(b"HTTP/1.1 200"):
            return None
    except (OSError, asyncio.TimeoutError):
        return None
    return time.perf_counter() - t0


async def legitimate(port, seconds, path="/"):
    """RATE requests a second for `seconds`: the latencies of those served, and the count."""
    tasks = []
    start = time.perf_counter()
    for i in range(RATE * seconds):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_get(port, path)))
    got = await asyncio.gather(*tasks)
    return [x for x in got if x is not None], len(got)


ATTACKER = r'''
import asyncio, socket, sys, time
kind, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []

def sock(src, rcvbuf=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    s.setblocking(False)
    return s

async def open_one(src, first=b"", rcvbuf=None):
    s = sock(src, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port)), 20)
        if first:
            s.send(first)
        held.append(s)
    except (OSError, asyncio.TimeoutError):
        s.close()

async def main():
    if kind == "l4-idle-one":
        jobs = [open_one("127.0.0.3") for _ in range(12000)]
    elif kind == "l4-idle-many":
        jobs = [open_one(f"127.2.{a // 250}.{a % 250 + 1}") for a in range(1000) for _ in range(12)]
    elif kind == "http-slowloris":
        jobs = [open_one("127.0.0.3", b"GET / HTTP/1.1\r\nHost: b\r\n") for _ in range(10000)]
    else:
        jobs = [open_one("127.0.0.4", b"GET /big HTTP/1.1\r\nHost: b\r\n\r\n", 4096) for _ in range(4000)]
    for i in range(0, len(jobs), 500):
        await asyncio.gather(*jobs[i:i + 500])
    print(len(held), flush=True)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        await asyncio.sleep(2)
        if kind == "http-slowloris":
            for s in held:
                try:
                    s.send(b"X-Slow-%d: 1\r\n" % n)
                except OSError:
                    pass
        n += 1

asyncio.run(main())
'''


def nginx_big(tmp):
    # Send buffers held at 64 KiB: a server on another host keeps its buffered answers in its
    # own memory; here nginx's autotuned ones would put 4 GB on this host's TCP memory.
    # sendfile, as Debian's nginx.conf has it: copying the attackers' first windows through
    # user space kept nginx's one worker busy for 3-4 s, and the legitimate requests, which
    # this same nginx serves, waited for it (p99 0.2-2.7 s, the balancer nearly idle).
    port = free_port()
    with open(os.path.join(tmp, "big"), "wb") as f:
        f.write(b"b" * (1 << 20))
    with open(os.path.join(tmp, "index.html"), "w") as f:
        f.write("ok\n")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/error.log;\nworker_rlimit_nofile 12000;\n"
            "events { worker_connections 10000; }\n"
            f"http {{ access_log off; sendfile on; client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;\n"
            f"fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;\n"
            f"server {{ listen 127.0.0.1:{port} sndbuf=64k backlog=4096; root {tmp}; }} }}\n"
        )
    p = subprocess.Popen(["nginx", "-e", "stderr", "-p", tmp, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def start_fulcrum(binary, tmp, backend, protocol):
    port, admin = free_port(), free_port()
    conf = os.path.join(tmp, f"fulcrum-{protocol}.toml")
    with open(conf, "w") as f:
        f.write(f'workers = 2\n[admin]\nbind = "127.0.0.1:{admin}"\n'
                f'[frontend.fe]\nbind = "127.0.0.1:{port}"\nprotocol = "{protocol}"\npool = "p"\n'
                f'[pool.p]\nservers = ["127.0.0.1:{backend}"]\n')
    p = subprocess.Popen([binary, "run", "--config", conf], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(tmp, f"fulcrum-{protocol}.log"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    return p, port, admin


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fulcrum", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", default="", help="comma list of attacks")
    args = ap.parse_args()
    binary = os.path.abspath(args.fulcrum)
    tmp = tempfile.mkdtemp(prefix="fulcrum-attack-")
    attacks = ["l4-idle-one", "l4-idle-many", "http-slowloris", "http-slowread"]
    if args.only:
        attacks = [a for a in attacks if a in args.only.split(",")]
    rows = []
    bport = free_port()
    backend = subprocess.Popen([binary, "backend", "--listen", f"127.0.0.1:{bport}",
                                "--protocol", "http"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    nginx, nport = nginx_big(tmp)
    wait_port(bport)
    try:
        for attack in attacks:
            protocol = "tcp" if attack.startswith("l4") else "http"
            upstream = nport if attack == "http-slowread" else bport
            fl, port, _ = start_fulcrum(binary, tmp, upstream, protocol)
            try:
                quiet, qn = asyncio.run(legitimate(port, args.seconds))
                hold = args.seconds + 30
                atk = subprocess.Popen([sys.executable, "-c", ATTACKER, attack, str(port), str(hold)],
                                       stdout=subprocess.PIPE, text=True)
                opened = atk.stdout.readline().strip()
                time.sleep(2)  # the balancer works through the backlog of the flood
                under, un = asyncio.run(legitimate(port, args.seconds))
                stop(atk)
            finally:
                stop(fl)
            rows.append((attack, opened, pct(quiet, .5), pct(quiet, .99), pct(under, .5),
                         pct(under, .99), len(quiet), qn, len(under), un))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        stop(backend)
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| attack | attacker connections opened | quiet p50 / p99 ms | attack p50 / p99 ms | p99 attack/quiet | served quiet | served under attack |")
    print("|---|---|---|---|---|---|---|")
    for a, o, qp50, qp99, up50, up99, qs, qn, us, un in rows:
        print(f"| {a} | {o} | {qp50:.2f} / {qp99:.2f} | {up50:.2f} / {up99:.2f} | "
              f"{up99 / qp99:.2f}× | {qs}/{qn} | {us}/{un} |")


if __name__ == "__main__":
    main()
