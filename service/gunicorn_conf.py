"""gunicorn settings for CPU inference (``ticketclf serve`` loads this file; so can ``gunicorn -c``).

Layout: one sync worker process per CPU core, each running onnxruntime on one thread and
answering one request at a time. A request is CPU work from start to end, so processes, not
threads, give the parallelism. Sync workers take every request from the one accept queue
they share, so whichever worker is free serves the oldest request. Keep-alive workers
(gthread) instead pin each client connection to the worker that accepted it; with a few
busy clients one worker ends up with more of them and their requests queue behind each
other (our reading of the figures; the split itself was not logged). Six alternating runs
at 8 concurrent clients on 2 cores (docs/benchmarks.md): sync 606-678 req/s with p99
16.5-18.5 ms; gthread (2 threads) 673-720 req/s with p99 22.7-28.8 ms.

The worker class is gunicorn's sync worker with the changes ``service/worker.py`` lists; the
one that matters here: once the whole request has been read it closes the connection at once
instead of waiting for the client to close first. Sync workers close the connection after each answer, and a client
that connects and sends slowly (or not at all) holds a worker until the master kills it
after ``timeout`` and starts a new one, which loads the model again: open to callers you do
not control, put a buffering proxy in front (an nginx ingress buffers request bodies by
default) or switch to gthread. Override any setting with the environment variables below or
``GUNICORN_CMD_ARGS`` (e.g. ``GUNICORN_CMD_ARGS="--worker-class gthread --threads 2"``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.cpus import worker_count
from classifier.errors import UserError
from service import server_dirs

if TYPE_CHECKING:  # gunicorn has no type information: these are Any to mypy, names for the reader
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

wsgi_app = "service.server:worker_app()"
bind = ["127.0.0.1:8000"]  # `ticketclf serve --host/--port` or `gunicorn --bind` set it
workers = worker_count()  # TICKETCLF_WORKERS, WEB_CONCURRENCY or the CPUs
worker_class = "service.worker.SyncWorker"
threads = 1

# Each worker loads and warms its own model. Not preloaded in the master: a process forked
# after onnxruntime/tokenizers ran hangs or aborts at exit (their threads do not survive
# fork). `ticketclf serve` checks the bundle before starting, and a worker that cannot
# load it stops the server.
preload_app = False

timeout = 30  # a worker silent this long is restarted; 256 tickets of 144 tokens take 3.7 s (int8, one core)
graceful_timeout = 20  # on SIGTERM, answer the requests in flight and queued (Kubernetes waits 30 s by default)
keepalive = 75  # gthread only: longer than load balancers' idle timeout (often 60 s), so they close idle connections

worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # heartbeats off a disk /tmp (containers)
accesslog = None  # the app writes one JSON line per request itself (service/observe.py)
errorlog = "-"
loglevel = os.environ.get("TICKETCLF_LOG_LEVEL", "info").strip().lower()
if loglevel not in ("debug", "info", "warning", "error", "critical"):
    raise UserError(f"TICKETCLF_LOG_LEVEL must be debug, info, warning, error or critical, got {loglevel!r}")
proc_name = "ticketclf"
control_socket_disable = True  # gunicorn >= 25: one socket path per user; instances would fight over it


def on_starting(server: Arbiter) -> None:
    """Prepare the environment the workers inherit (they load the app after this, in the fork)."""
    if removed := server_dirs.remove_abandoned(Path(tempfile.gettempdir())):
        server.log.info("removed the temporary directories of servers no longer running: %s",
                        ", ".join(map(str, removed)))
    os.environ.setdefault("TICKETCLF_THREADS", "1")  # onnxruntime threads per worker: workers fill the cores
    # Where workers record the last model that loaded and passed its checks (service/model.py): a worker
    # restarting while the bundle on disk is broken serves that instead of stopping the server. Its owner
    # file's descriptor is never closed: the lock lasts as long as this process or a worker of it.
    state_dir, owner = server_dirs.make_locked_state_dir()
    os.environ["TICKETCLF_STATE_DIR"] = str(state_dir)
    # prometheus-client multiprocess mode: each worker writes its samples to files in this
    # directory and /metrics adds them up. It must be set before prometheus-client is imported.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=server_dirs.METRICS_PREFIX)
        server_dirs.record_made(owner, Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))


def post_fork(server: Arbiter, worker: Worker) -> None:
    """In each worker: BLAS (numpy's and scipy's OpenBLAS) on as many threads as the model. The out-of-scope
    score's BLAS call on two threads, with another process busy on one of the two cores, added 10 to 19 % to
    a ticket's time instead of 2 % on one thread (the detector switched on and off, 200 tickets)."""
    import scipy.linalg.blas  # noqa: F401  (loaded before the limit, which reaches loaded libraries only)
    from threadpoolctl import threadpool_limits

    from classifier.cpus import count_setting

    threadpool_limits(count_setting("TICKETCLF_THREADS", 1), user_api="blas")


def child_exit(server: Arbiter, worker: Worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # drop its live gauges; its counters stay counted


def on_exit(server: Arbiter) -> None:
    # The owner file names what this server made; the environment, not a module variable, says where it is,
    # since gunicorn may run this file again.
    if state_dir := os.environ.get("TICKETCLF_STATE_DIR"):
        server_dirs.remove_own(Path(state_dir))
