#!/usr/bin/env python3
"""Replays fuzz inputs through a real sniroute daemon, over loopback sockets.

    fuzz/daemon.py [--binary target/debug/sniroute] [--jobs 16] [DIR...]

On demand, never in CI (the corpora in fuzz/corpus/ are not committed). The
libFuzzer targets call the pure parsers; this sends the same inputs the way
a client would, to the daemon's own accept loops, peek and connection story:
- fuzz/{corpus,seeds,regressions}/clienthello/*: the stream after the
  3-byte header, to the TLS listener;
- .../httphead/*: the stream after the 3-byte header, to the [http] listener;
- .../proxyheader/*: the stream after the 1-byte header, to the TLS listener
  from 127.0.0.2, a trusted balancer (`[proxy_protocol] accept_from`).
Each client, from an address of its own in 127.1.0.0/16 (so the access log
line names the input), sends its bytes, half-closes and reads until the
daemon closes.
Hellos and heads the daemon takes go to a local backend (a route, and
`[unknown] action = "forward"`). Bans and rate limits are off.

Two passes over the same inputs: each input in one write, then each split
into writes of 1..=64 bytes (TCP_NODELAY, a pause between), so the daemon
reads it in pieces. Checked: the daemon is still running at the end and
printed no panic; every connection is in the access log exactly once, with
the outcome `sniroute status` counts; no connection is left active
(`sniroute_active_connections` on /metrics); and every clienthello and
httphead input ends with the same outcome in both passes (the daemon's
verdict does not depend on how the bytes arrive). Prints the outcomes.
Exit 1 on a failed check.
"""

import argparse
import collections
import concurrent.futures
import pathlib
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

FUZZ = pathlib.Path(__file__).resolve().parent
# Bytes before the stream in each target's input (see checks/TARGET.rs).
HEADER_LEN = {"clienthello": 3, "httphead": 3, "proxyheader": 1}
# The trusted balancer's address (any 127/8 address is local on Linux).
BALANCER = "127.0.0.2"
# How long a client waits for the daemon to close: longer than the hello
# timeout (10 s, so that a slow split pass is never cut short) plus the
# backend's idle close.
CLIENT_TIMEOUT = 30.0
# How long to wait for the access log to catch up after a pass.
SETTLE = 30.0
# Largest write of the split pass: small enough that a hello or a head is
# read in many pieces.
MAX_PIECE = 64
# Pause between the writes of the split pass, so they arrive as separate
# segments and usually separate reads.
PAUSE = 0.0005


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(listener, stop):
    """Takes every connection, reads until EOF or a pause, then closes."""

    def serve(conn):
        with conn:
            conn.settimeout(1.0)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def source_of(i):
    """Input i's own source address (127.1.0.0/16), so that its access log
    line names it whatever port the kernel picked."""
    return f"127.1.{i >> 8 & 255}.{i & 255}"


def client(port, data, source, split):
    """One connection: send (in pieces if `split`, a `random.Random`),
    half-close, read until closed. Returns how it ended."""
    try:
        with socket.socket() as s:
            s.settimeout(CLIENT_TIMEOUT)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            try:
                at = 0
                while at < len(data):
                    step = split.randint(1, MAX_PIECE) if split else len(data)
                    s.sendall(data[at : at + step])
                    at += step
                    if split:
                        time.sleep(PAUSE)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the daemon may refuse before reading it all
            while s.recv(65536):
                pass
        return "closed"
    except TimeoutError:
        return "client timeout"
    except OSError as e:
        return type(e).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(FUZZ.parent / "target/debug/sniroute"))
    ap.add_argument("--jobs", type=int, default=16, help="clients at once")
    ap.add_argument("dirs", nargs="*", help="input dirs (default: every target's)")
    args = ap.parse_args()

    inputs = []  # (target, path)
    dirs = [pathlib.Path(d) for d in args.dirs] or [
        FUZZ / kind / target
        for kind in ("corpus", "seeds", "regressions")
        for target in HEADER_LEN
    ]
    for d in dirs:
        target = d.name
        if target not in HEADER_LEN or not d.is_dir():
            continue
        inputs += [(target, p) for p in sorted(d.iterdir()) if p.is_file()]
    if not inputs:
        sys.exit("no inputs")
    if len(inputs) > 1 << 16:
        sys.exit("more inputs than source addresses in 127.1.0.0/16")

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sniroute-fuzz-daemon-"))
    back = socket.socket()
    back.bind(("127.0.0.1", 0))
    back.listen(1024)
    back_addr = "127.0.0.1:%d" % back.getsockname()[1]
    tls_port, http_port, metrics_port = free_port(), free_port(), free_port()
    config = tmp / "sniroute.toml"
    config.write_text(f"""
listen = ["127.0.0.1:{tls_port}"]
[limits]
client_hello_timeout = "10s"
connect_timeout = "1s"
idle_timeout = "5s"
shutdown_grace = "1s"
[http]
listen = ["127.0.0.1:{http_port}"]
[[route]]
sni = ["fixture.example", "app.test", "localhost", "*.test"]
backend = "{back_addr}"
http_backends = ["{back_addr}"]
[unknown]
action = "forward"
backend = "{back_addr}"
[ban]
enabled = false
state_file = "{tmp}/bans.json"
[rate_limit]
per_ip = 0
[metrics]
listen = "127.0.0.1:{metrics_port}"
[admin]
socket = "{tmp}/admin.sock"
[log]
access = "{tmp}/access.log"
format = "json"
[proxy_protocol]
accept_from = ["{BALANCER}"]
""")
    stop = threading.Event()
    threading.Thread(target=backend, args=(back, stop), daemon=True).start()
    stderr = open(tmp / "stderr.log", "w+")
    daemon = subprocess.Popen(
        [args.binary, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    failures = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", http_port), 1).close()
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the daemon did not start; see {tmp}/stderr.log")  # kept
                time.sleep(0.1)
        log = tmp / "access.log"

        def log_lines():
            return log.read_text().splitlines() if log.exists() else []

        def run_pass(split):
            """Every input once; its outcome by input index, and the counts."""
            before = len(log_lines())
            # One generator per input, seeded in input order: the pieces do
            # not depend on which thread sends what.
            rng = random.Random(1)
            seeds = [rng.random() for _ in inputs]

            def send(i):
                target, path = inputs[i]
                data = path.read_bytes()[HEADER_LEN[target] :]
                port = http_port if target == "httphead" else tls_port
                source = BALANCER if target == "proxyheader" else source_of(i)
                pieces = random.Random(seeds[i]) if split else None
                return client(port, data, source, pieces)

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                results = list(pool.map(send, range(len(inputs))))
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + SETTLE
            lines = log_lines()[before:]
            while len(lines) < len(inputs) and time.monotonic() < deadline:
                time.sleep(0.2)
                lines = log_lines()[before:]
            by_source = {}
            outcomes = collections.Counter()
            for line in lines:
                m = re.search(r'"client":"([0-9.]+):\d+","outcome":"([a-z_]+)"', line)
                o = re.search(r'"outcome":"([a-z_]+)"', line)
                if o:
                    outcomes[o.group(1)] += 1
                if m:
                    by_source[m.group(1)] = m.group(2)
            # Not the proxyheader inputs: logged under the client they name.
            by_input = {
                i: by_source.get(source_of(i))
                for i in range(len(inputs))
                if inputs[i][0] != "proxyheader"
            }
            name = "split" if split else "whole"
            print(f"{name}: {len(inputs)} inputs in {elapsed:.1f} s, {args.jobs} at a time")
            print("  clients:", dict(collections.Counter(results)))
            print("  outcomes:", dict(sorted(outcomes.items())))
            if len(lines) != len(inputs):
                failures.append(f"{name}: {len(lines)} access log lines for {len(inputs)} inputs")
            return by_input

        # The probe connection made at start is logged first.
        deadline = time.monotonic() + SETTLE
        while not log_lines() and time.monotonic() < deadline:
            time.sleep(0.1)
        whole = run_pass(split=False)
        split = run_pass(split=True)
        for i, outcome in whole.items():
            if split.get(i) != outcome:
                failures.append(
                    f"{inputs[i][1]}: {outcome} in one write, {split.get(i)} in pieces"
                )
        outcomes = collections.Counter(
            m.group(1)
            for m in (re.search(r'"outcome":"([a-z_]+)"', l) for l in log_lines())
            if m
        )
        status = subprocess.run(
            [args.binary, "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        counted = collections.Counter(
            {k: int(n) for k, n in re.findall(r"^  ([a-z_]+) +(\d+)$", status.stdout, re.M)}
        )
        active = None
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            metrics = urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
            ).read().decode()
            active = sum(
                float(v)
                for v in re.findall(r"^sniroute_active_connections\S* (\S+)$", metrics, re.M)
            )
            if active == 0:
                break
            time.sleep(0.2)
        if daemon.poll() is not None:
            failures.append(f"the daemon exited with {daemon.returncode}")
        if status.returncode != 0:
            failures.append(f"status failed: {status.stderr.strip()}")
        elif +counted != outcomes:
            failures.append(f"status counts {dict(+counted)}")
        if active != 0:
            failures.append(f"connections still active: {active}")
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        stop.set()
        back.close()
        stderr.seek(0)
        err = stderr.read()
        stderr.close()
    if "panick" in err:
        failures.append("the daemon panicked: " + err[err.index("panick") :][:500])
    for f in failures:
        print("FAIL:", f)
    if failures:
        print(f"config, access log and daemon stderr kept in {tmp}")
        sys.exit(1)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
