"""gunicorn's sync worker with five changes for this service (and its gthread worker, which ``serve`` runs
for ``--worker-class gthread``, with changes 3 and 4).

1. It closes a connection at once when the whole request has been read (below).
2. On a graceful stop (SIGTERM) it keeps answering connections from the listen queue until
   it finds the queue empty, then exits: gunicorn's own worker leaves them, and they are reset
   when the last worker closes the socket. The socket listens while a worker holds it, so a
   connection made after the SIGTERM is answered too while the workers drain (docs/service.md,
   "Stopping"): on Kubernetes, a straggler sent before the load balancers dropped the pod.
3. Requests that gunicorn refuses itself before the app sees them (a malformed request
   line or header, a request line over 4,094 bytes, too many headers) are answered with
   the API's JSON error body instead of gunicorn's HTML page.
4. SIGHUP makes it look for a new model at once (``service.model``) instead of ending it.
5. A client that sends nothing for a third of gunicorn's ``timeout`` (10 s) is timed out: gunicorn reads
   a connection with no time limit, so a body shorter than its Content-Length held the worker until the
   master killed it (a 500, and the model loaded again). Behind nginx (deploy/) this never reaches us.

Closing at once:

After each answer gunicorn (27 and later) half-closes the connection and then waits, up to
2 s, for the client to close its side. That lingering close exists for answers given before
the request was read to the end (401, 413, 415 here): closing with request bytes unread makes
the kernel reset the connection, which can cut the answer short (RFC 9112, section 9.6).
A sync worker serves one connection at a time, so the wait holds it for a round trip to the
client on every request, and on a busy machine until the client's own thread gets a CPU.

When the request body has been read to its end and the client has sent nothing more, no
unread byte can reset the connection, so this worker closes at once, as nginx's default
``lingering_close on`` does. Every other case keeps gunicorn's lingering close.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

if TYPE_CHECKING:
    from service.schemas import ErrorCode

CLIENT_TIMEOUT_DIVISOR = 3  # a silent client is timed out at this fraction of the worker timeout
DRAIN_MARGIN_S = 2.0  # stop taking queued connections this long before the master's graceful timeout
# gunicorn's statuses for requests it refuses itself, named like the app's error codes.
_GUNICORN_ERROR_CODES: dict[int, ErrorCode] = {
    400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed", 431: "headers_too_large",
    500: "internal_error", 501: "not_implemented"}


class _ServiceWorker(Worker):
    """What every worker of this service does: answers gunicorn's own errors in the API's format (3), and
    looks for a new model on SIGHUP (4)."""

    def init_process(self) -> None:
        # gunicorn's error path (Worker.handle_error) writes through util.write_error; this process
        # serves only this app, so its errors take the app's format.
        util.write_error = write_json_error
        self.log.error_log.addFilter(_quiet_client_timeouts)
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        # SIGHUP (forwarded by the master, see server._Arbiter): look for a new model now. The model loads
        # beside the serving one in the watcher thread; the handler only wakes it.
        signal.signal(signal.SIGHUP, self.handle_hup)
        signal.siginterrupt(signal.SIGHUP, False)

    def handle_hup(self, sig: int, frame: Any) -> None:
        from service.model import check_all_now

        check_all_now()


class ThreadWorker(_ServiceWorker, GunicornThreadWorker):
    """gunicorn's gthread worker (``--worker-class gthread``, which serve runs as this one), with (3) and (4):
    gunicorn's own ends on the SIGHUP the master forwards, and is replaced."""


class SyncWorker(_ServiceWorker, GunicornSyncWorker):

    stop_requested_at: float | None = None  # when SIGTERM came

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop_requested_at = time.monotonic()
        super().handle_exit(sig, frame)

    def run(self) -> None:
        super().run()
        # Only on SIGTERM: a stop, or a reload replacing this worker (its successors share the queue then).
        # A worker leaving after max_requests has siblings that take the queue.
        if self.stop_requested_at is not None and self.is_parent_alive():
            self.answer_waiting_connections(self.stop_requested_at + self.cfg.graceful_timeout - DRAIN_MARGIN_S)

    def answer_waiting_connections(self, deadline: float) -> None:
        """Serve the connections queued on the listeners until the queue is empty or ``deadline``
        (the master kills the worker at its graceful timeout, maybe mid-answer)."""
        for listener in self.sockets:
            while time.monotonic() < deadline:
                self.notify()  # each answer may take a while: keep the master's heartbeat check happy
                try:
                    self.accept(listener)  # the listeners are non-blocking: an empty queue raises
                except OSError:
                    break

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        timeout = self.cfg.timeout / CLIENT_TIMEOUT_DIVISOR if self.cfg.timeout else None
        client.settimeout(timeout)
        try:  # a connection opened and left silent (a load balancer's spare) is closed with one quiet line
            if not client.recv(1, socket.MSG_PEEK):
                util.close(client)
                return
        except TimeoutError:
            self.log.info("closed a connection from %s that sent nothing for %.0f s", addr, timeout)
            util.close(client)
            return
        except OSError:
            util.close(client)
            return
        super().handle(listener, client, addr)

    def handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> None:
        super().handle_request(listener, req, client, addr)
        if request_read_whole(req) and not bytes_waiting(client):
            # gunicorn's lingering close that follows finds the socket closed and does nothing.
            client.close()


def _quiet_client_timeouts(record: logging.LogRecord) -> bool:
    """gunicorn logs a socket timeout mid-headers (our client timeout, see handle) as an error with a traceback:
    made one info line, as a client that stops sending is the client's doing."""
    if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
        record.msg, record.args = "closed a connection whose client stopped sending in the middle of its request", ()
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's ``util.write_error``, with ``{"error": {"code", "message"}}`` as the body, and a request id as
    every answer of the app has: a new one where the request was not read far enough to take the caller's, the
    app's where the worker stopped while the app answered (its timeout, or a quick shutdown)."""
    # Not at the module's top: gunicorn's master imports this module, and the metrics that observe imports
    # must first be imported in the workers, once PROMETHEUS_MULTIPROC_DIR is set, to count across them.
    from service import observe

    code: ErrorCode
    if (stopped := observe.stopped_request()) is not None:
        status, reason, code, request_id = observe.STOPPED_STATUS, "Service Unavailable", "worker_stopped", stopped
        message = ("the worker stopped before it answered (the request took longer than its timeout, or the "
                   f"service was shut down at once; request id {stopped}): nothing was done; send it again, a "
                   "large batch in smaller ones")
    else:  # the id logged below, so that a caller's report can be found
        code, request_id = _GUNICORN_ERROR_CODES.get(status, "bad_request"), uuid.uuid4().hex
    logging.getLogger("gunicorn.error").info("answered %d %s %s (request id %s): %s", status, code,
                                             "for the app" if stopped else "before the app", request_id,
                                             message or reason)
    body = json.dumps({"error": {"code": code, "message": message or reason}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def request_read_whole(req: Any) -> bool:
    """The body had a length and the app (or gunicorn) read all of it; ``GET`` has length 0."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0


def bytes_waiting(client: socket.socket) -> bool:
    """The client sent more than the request (or the state is unknown, e.g. TLS)."""
    timeout = client.gettimeout()
    client.setblocking(False)  # with a timeout set, Python would wait for data despite MSG_DONTWAIT
    try:
        return bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # ValueError: a TLS socket takes no recv flags
        return True
    finally:
        client.settimeout(timeout)
