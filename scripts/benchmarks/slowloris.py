"""Slow clients against the service: behind nginx (deploy/nginx.conf) and bare gunicorn, side by side.

    python scripts/benchmarks/slowloris.py runs/banking77-default

Starts ``ticketclf serve`` (2 sync workers unless ``--workers``) on a free loopback port, and nginx
from ``deploy/nginx.conf`` (only its two addresses changed) in a temporary folder in front of it.
Then, once through nginx and once straight to gunicorn, ``--clients`` slow clients each send a
``POST /classify`` one byte a second (half of them trickle the headers, half send the headers at
once and trickle the body; a connection the server closes is opened again) for ``--duration``
seconds, while a probe starts a normal single-ticket request every ``--probe-interval`` seconds
(each on a new connection, failed past ``--probe-timeout``). Reports the failed probes and the
answered probes' p50/p99 for both, appends the run to docs/benchmarks/runs.jsonl (area
"slowloris"; ``--no-record`` to print only) and always stops nginx and the server. Exit code 1
when a probe through nginx failed. Loopback only; needs nginx (Debian: ``apt-get install nginx``).

tests/test_proxy.py uses the pieces here (``running_nginx``, ``SlowClients``, ``probe``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import command_line, publish, record_arguments, table_figures  # noqa: E402
from loadtest import HOST, free_port, start_server, stop_server, wait_ready  # noqa: E402

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX_START_TIMEOUT_S = 10
PROBE_TICKET = {"text": "I was charged twice for the same card payment"}
# A slow client's request: long enough that at one byte a second it never ends within a run.
SLOW_BODY = json.dumps({"text": "My card payment was declined twice although the balance is fine. " * 4}).encode()


def find_nginx() -> str | None:
    """nginx on PATH, or where Debian's package puts it (/usr/sbin, not on a normal user's PATH)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_config(listen_port: int, upstream_port: int) -> str:
    """deploy/nginx.conf with only its two addresses changed, to loopback ports. Raises if the shipped file
    no longer has exactly one of each line: the tests run the file as it is shipped."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    for pattern, replacement in [(r"^(\s*)listen 8080;", rf"\g<1>listen {HOST}:{listen_port};"),
                                 (r"^(\s*)server 127\.0\.0\.1:8000;", rf"\g<1>server {HOST}:{upstream_port};")]:
        text, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if found != 1:
            raise ValueError(f"{NGINX_CONF}: expected one line matching {pattern!r}, found {found}")
    return text


@contextmanager
def running_nginx(upstream_port: int, folder: Path, nginx: str | None = None) -> Iterator[int]:
    """nginx with deploy/nginx.conf in front of ``upstream_port``, its prefix (pid, temporary files) in
    ``folder``, its error log in folder/error.log and access log in folder/access.log; yields its port.
    Started in the foreground (``daemon off``) and always stopped."""
    nginx = nginx or find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx not found (Debian: apt-get install nginx)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(nginx_config(port, upstream_port), encoding="utf-8")
    with open(folder / "access.log", "wb") as access, open(folder / "error.log", "wb") as errors:
        process = subprocess.Popen([nginx, "-p", f"{folder}/", "-c", str(config)], stdout=access, stderr=errors,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + NGINX_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with {process.returncode}: {(folder / 'error.log').read_text()}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx not listening after {NGINX_START_TIMEOUT_S} s") from None
                time.sleep(0.05)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown: open connections are closed
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class SlowClients:
    """``count`` connections to ``port``, each sending one ``POST /classify`` a byte every ``interval``
    seconds: even-numbered ones trickle the whole request, odd ones send the headers at once and trickle
    the body. A connection the server closes, answers or resets is opened again. One thread for all."""

    def __init__(self, port: int, count: int, interval: float = 1.0) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.opened = 0  # connections made
        self.ended_by_server = 0  # closed, reset or answered by the server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._sockets: list[socket.socket | None] = [None] * count
        self._sent = [0] * count
        head = (f"POST /classify HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(SLOW_BODY)}\r\n\r\n").encode()
        self._request = head + SLOW_BODY
        self._preamble = [0 if slot % 2 == 0 else len(head) for slot in range(count)]

    def __enter__(self) -> SlowClients:
        for slot in range(self.count):  # all in place before the first probe
            self._connect(slot)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for slot in range(self.count):
            self._drop(slot)

    def _connect(self, slot: int) -> None:
        try:
            connection = socket.create_connection((HOST, self.port), timeout=5)
            connection.sendall(self._request[:self._preamble[slot]])
            connection.setblocking(False)  # a look for the server's answer must not wait
        except OSError:
            return
        self.opened += 1
        self._sockets[slot], self._sent[slot] = connection, self._preamble[slot]

    def _drop(self, slot: int) -> None:
        connection, self._sockets[slot] = self._sockets[slot], None
        if connection is not None:
            connection.close()

    def _run(self) -> None:
        tick = self.interval / self.count  # each connection gets one byte per interval, spread evenly
        slot = 0
        while not self._stop.wait(tick):
            slot = (slot + 1) % self.count
            connection = self._sockets[slot]
            if connection is None:
                self._connect(slot)
                continue
            try:
                connection.recv(1, socket.MSG_PEEK)  # returns: closed (b"") or answered by the server
                ended = True
            except BlockingIOError:
                ended = False  # nothing from the server: it still waits for our bytes, as intended
            except OSError:
                ended = True  # reset
            if ended:
                self.ended_by_server += 1
                self._drop(slot)
                continue
            sent = self._sent[slot]
            try:
                connection.sendall(self._request[sent:sent + 1])
            except OSError:
                self.ended_by_server += 1
                self._drop(slot)
                continue
            self._sent[slot] = sent + 1
            if self._sent[slot] == len(self._request):  # never within a run, at one byte a second
                self._drop(slot)


@dataclass
class Probes:
    """Normal requests made during a run: the answered ones' times and why the others failed."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + sum(self.failures.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def probe(port: int, duration: float, interval: float, timeout: float) -> Probes:
    """Start one ``POST /classify`` (a new connection, timeout ``timeout``) every ``interval`` seconds for
    ``duration`` seconds, each in its own thread so a hung one does not delay the next; wait for all."""
    results = Probes()
    lock = threading.Lock()
    body = json.dumps(PROBE_TICKET)

    def one() -> None:
        started = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            connection.request("POST", "/classify", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcome = None if response.status == 200 else f"HTTP {response.status}"
        except Exception as error:  # noqa: BLE001  any failure is a failed probe
            outcome = type(error).__name__
        finally:
            connection.close()
        with lock:
            if outcome is None:
                results.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                results.failures[outcome] += 1

    threads = []
    started = time.monotonic()
    for index in range(max(1, round(duration / interval))):
        time.sleep(max(0.0, started + index * interval - time.monotonic()))
        threads.append(threading.Thread(target=one, daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return results


def slow_client_run(port: int, clients: int, duration: float, probe_interval: float,
                    probe_timeout: float) -> tuple[Probes, SlowClients]:
    """``clients`` slow clients for ``duration`` seconds against ``port``, probed meanwhile."""
    with SlowClients(port, clients) as slow:
        time.sleep(1.0)  # every slow client has sent something before the first probe
        results = probe(port, duration - 1.0, probe_interval, probe_timeout)
    return results, slow


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if find_nginx() is None:
        raise SystemExit("nginx not found (Debian: apt-get install nginx)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ticketclf-slowloris-") as folder:
        log_path = Path(folder) / "server.log"
        with open(log_path, "w+") as log:
            port = free_port()
            server = start_server(args, port, log)
            try:
                wait_ready(server, port, log)
                with running_nginx(port, Path(folder) / "nginx") as proxied:
                    results = slow_client_run(proxied, args.clients, args.duration, args.probe_interval,
                                              args.probe_timeout)
                rows.append(("behind nginx (deploy/nginx.conf)", *results))
                wait_ready(server, port, log)
                results = slow_client_run(port, args.clients, args.duration, args.probe_interval,
                                          args.probe_timeout)
                rows.append(("bare gunicorn", *results))
            finally:
                stop_server(server)
        server_errors = sum('"status": 5' in line for line in log_path.read_text().splitlines())
    table = markdown_table(rows)
    figures = table_figures(table) | {"server 5xx lines in the access log": server_errors}
    notes = (f"{args.clients} slow clients (one byte a second each; half trickle the headers, half the body) "
             f"for {args.duration:g} s; a probe (single-ticket POST /classify, new connection, "
             f"{args.probe_timeout:g} s timeout) every {args.probe_interval:g} s; gunicorn "
             f"{args.workers} sync workers; nginx {nginx_version()} with deploy/nginx.conf; loopback")
    publish(args, "slowloris", table, figures, command_line(argv), notes)
    return 1 if rows[0][1].failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="exported model bundle to serve")
    parser.add_argument("--clients", type=int, default=50, help="slow clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of slow clients, per setup")
    parser.add_argument("--probe-interval", type=float, default=0.5, help="seconds between probes")
    parser.add_argument("--probe-timeout", type=float, default=5.0, help="a probe unanswered this long failed")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    args = record_arguments(parser).parse_args(argv)
    if args.clients < 1 or args.duration <= 1 or args.probe_interval <= 0 or args.probe_timeout <= 0:
        parser.error("--clients, --probe-interval and --probe-timeout must be positive, --duration over 1 s")
    args.gunicorn_args = ""  # loadtest.start_server's option: the configuration file as it is
    return args


def markdown_table(rows: list[tuple[str, Probes, SlowClients]]) -> str:
    lines = ["| setup | probes | failed probes | probe p50 ms | probe p99 ms | why probes failed "
             "| slow connections opened |", "|---|---:|---:|---:|---:|---|---:|"]
    for name, results, slow in rows:
        p50, p99 = results.percentile(50), results.percentile(99)
        why = ", ".join(f"{count} {kind}" for kind, count in results.failures.most_common()) or "-"
        lines.append(f"| {name} | {results.sent} | {results.failed} | {'-' if p50 is None else f'{p50:.1f}'} | "
                     f"{'-' if p99 is None else f'{p99:.1f}'} | {why} | {slow.opened} |")
    return "\n".join(lines)


def nginx_version() -> str:
    nginx = find_nginx()
    output = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr if nginx else ""
    return output.strip().rsplit("/", 1)[-1] or "unknown"


if __name__ == "__main__":
    sys.exit(main())
