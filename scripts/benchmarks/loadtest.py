"""Load-test the real server: ``ticketclf serve`` (gunicorn) on loopback, single-ticket requests.

Starts the server on 127.0.0.1 on a free port, waits for ``/ready``, then for each
concurrency level sends ``POST /classify`` with one real ticket text per request over
connections it reuses while the server keeps them alive (gthread; sync workers close each),
until ``--requests`` are done or ``--duration`` seconds pass.
Reports req/s, p50/p95/p99 latency and errors, appends the run to docs/benchmarks/runs.jsonl
(area "loadtest"; ``--no-record`` to print only), and always stops the server. Client and
server share the machine's CPUs.

    python scripts/benchmarks/loadtest.py runs/banking77 --requests 3000 --duration 15
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import random
import re
import runpy
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import BANKING77_TEST, command_line, publish, record_arguments, table_figures  # noqa: E402

from classifier.bundle import read_manifest  # noqa: E402
from classifier.manifest import Manifest  # noqa: E402

HOST = "127.0.0.1"  # loopback only: this never listens on a reachable address
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 30


@dataclass
class Level:
    concurrency: int
    sent: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float | None = None  # CPU time of the server's processes during the level
    client_cpu_s: float = 0.0  # CPU time of this load generator (it shares the machine)

    def per_answer_ms(self, seconds: float | None) -> str:
        """CPU ms per answered request: the server's bounds throughput on dedicated cores."""
        done = self.sent - self.errors
        return f"{seconds * 1000 / done:.2f}" if seconds is not None and done else "n/a"

    @property
    def rate(self) -> float:
        return (self.sent - self.errors) / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bodies = request_bodies(args.texts, args.column)
    manifest = read_manifest(args.bundle)
    with tempfile.NamedTemporaryFile("w+", prefix="ticketclf-loadtest-", suffix=".log") as log:
        port = free_port()
        server = start_server(args, port, log)
        try:
            wait_ready(server, port, log)
            run_level(port, bodies, 8, min(200, args.requests), args.duration)  # warm-up, not reported
            levels = [measure(server.pid, port, bodies, c, args) for c in args.concurrency]
        finally:
            stop_server(server)
        server_log = Path(log.name).read_text()
    server_errors = sum('"status": 5' in line for line in server_log.splitlines())
    # The class gunicorn ran, not the one configured: it turns sync with threads > 1 into gthread.
    worker_class = next(iter(re.findall(r"Using worker: (\S+)", server_log)), "unknown")
    table = markdown_table(levels)
    figures = table_figures(table) | {"server 5xx lines in the access log": server_errors}
    publish(args, "loadtest", table, figures, command_line(argv), describe_setup(args, manifest, worker_class))
    print(f"server 5xx lines in the access log: {server_errors}")
    return 1 if any(level.errors for level in levels) or server_errors else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="exported model bundle to serve")
    parser.add_argument("--requests", type=int, default=3000, help="at most this many requests per level")
    parser.add_argument("--duration", type=float, default=15.0, help="at most this many seconds per level")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32],
                        help="comma-separated concurrent clients per level")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: service/gunicorn_conf.py)")
    parser.add_argument("--gunicorn-args", default="",
                        help="gunicorn options over the config file, e.g. '--worker-class gthread --threads 2'")
    parser.add_argument("--texts", type=Path, default=BANKING77_TEST, help="CSV file of ticket texts")
    parser.add_argument("--column", default="text", help="the CSV column holding the text")
    args = record_arguments(parser).parse_args(argv)
    if args.requests < 1 or args.duration <= 0 or min(args.concurrency) < 1:
        parser.error("--requests, --duration and --concurrency must be positive")
    return args


def request_bodies(path: Path, column: str) -> list[bytes]:
    """One JSON body {"text": ...} per text of the CSV column, shuffled reproducibly."""
    with open(path, newline="", encoding="utf-8") as handle:
        texts = [row[column] for row in csv.DictReader(handle) if row.get(column, "").strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts in column {column!r}")
    random.Random(0).shuffle(texts)
    return [json.dumps({"text": text}).encode() for text in texts]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: IO[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "classifier.cli", "serve", str(args.bundle), "--host", HOST,
               "--port", str(port)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env["GUNICORN_CMD_ARGS"] = f"{env.get('GUNICORN_CMD_ARGS', '')} {args.gunicorn_args}".strip()
    # Own session: a Ctrl-C here reaches only this script, whose cleanup stops the server.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(server: subprocess.Popen, port: int, log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}:\n{Path(log.name).read_text()[-3000:]}")
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {START_TIMEOUT_S} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # gunicorn: graceful stop of the master and its workers
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def measure(server_pid: int, port: int, bodies: list[bytes], concurrency: int, args: argparse.Namespace) -> Level:
    before, client_before = tree_cpu_seconds(server_pid), time.process_time()
    level = run_level(port, bodies, concurrency, args.requests, args.duration)
    after, level.client_cpu_s = tree_cpu_seconds(server_pid), time.process_time() - client_before
    level.server_cpu_s = after - before if before is not None and after is not None else None
    return level


def tree_cpu_seconds(root: int) -> float | None:
    """User + system CPU seconds of a process and its descendants (Linux /proc); None elsewhere."""
    if not os.path.isdir("/proc"):
        return None
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, CPU ticks)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # the fields after "pid (name)"
        except OSError:
            continue  # the process ended meanwhile
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = {root}
    for _ in range(3):  # master, workers, anything they start
        tree |= {pid for pid, (parent, _) in stats.items() if parent in tree}
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def run_level(port: int, bodies: list[bytes], concurrency: int, requests: int, duration: float) -> Level:
    """``concurrency`` clients, each a thread on a blocking socket, reusing its connection while the
    server keeps it alive. Kept this thin because it shares the CPUs with the server: its own CPU
    time per request is measured and reported next to the server's."""
    requests_bytes = [_http_request(port, body) for body in bodies]
    counter = itertools.count()
    deadline = time.monotonic() + duration
    latencies: list[float] = []
    failures: list[int] = []

    def client() -> None:
        connection: socket.socket | None = None
        while (index := next(counter)) < requests and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                connection = connection or _connect(port)
                status, keep_alive = _exchange(connection, requests_bytes[index % len(requests_bytes)])
            except Exception:  # noqa: BLE001  any failure is a failed request; the level goes on
                status, keep_alive = 0, False
            if not keep_alive and connection:
                connection.close()
                connection = None
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failures.append(status)
        if connection:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Level(concurrency, len(latencies) + len(failures), len(failures), time.perf_counter() - started,
                 latencies)


def _http_request(port: int, body: bytes) -> bytes:
    head = (f"POST /classify HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_S)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _exchange(connection: socket.socket, request: bytes) -> tuple[int, bool]:
    """Send one request and read the whole response: its status, and whether the connection stays open."""
    connection.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received:
        received += _receive(connection)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(b":", 1) for line in lines[1:])
    keep_alive = headers.get(b"connection", b"").strip() != b"close"
    if b"content-length" not in headers and keep_alive:
        raise ValueError("a kept-alive response without Content-Length: its end cannot be found")
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        body += _receive(connection)
    return status, keep_alive


def _receive(connection: socket.socket) -> bytes:
    chunk = connection.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection mid-response")
    return chunk


def markdown_table(levels: list[Level]) -> str:
    rows = ["| concurrency | requests | errors | req/s | p50 ms | p95 ms | p99 ms | server CPU ms/req "
            "| client CPU ms/req |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        rows.append(f"| {level.concurrency} | {level.sent} | {level.errors} | {level.rate:.0f} | "
                    f"{level.percentile(50):.1f} | {level.percentile(95):.1f} | {level.percentile(99):.1f} | "
                    f"{level.per_answer_ms(level.server_cpu_s)} | {level.per_answer_ms(level.client_cpu_s)} |")
    return "\n".join(rows)


def describe_setup(args: argparse.Namespace, manifest: Manifest, worker_class: str) -> str:
    defaults = runpy.run_path(str(ROOT / "service" / "gunicorn_conf.py"))  # what the server read
    workers = args.workers or defaults["workers"]
    options = f" with `{args.gunicorn_args}`" if args.gunicorn_args else ""
    return (f"- Model: `{manifest.name or args.bundle.name}` version {manifest.bundle_version}, "
            f"{len(manifest.labels)} labels, max_length {manifest.max_length}, engine {manifest.engine}\n"
            f"- Server: `ticketclf serve`, gunicorn {workers} {worker_class} workers (service/gunicorn_conf.py"
            f"{options}), onnxruntime 1 thread per worker, JSON access log on\n"
            f"- Client: on the same machine (one thread per connection, blocking sockets, loopback, "
            f"connections reused while the server keeps them alive); single-ticket requests of "
            f"`{args.texts.name}` texts; per level at most {args.requests} requests or {args.duration:g} s; "
            f"server CPU = CPU time of the server processes / answers")


if __name__ == "__main__":
    sys.exit(main())
