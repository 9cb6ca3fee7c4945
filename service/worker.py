"""gunicorn's sync worker, closing a connection at once when the whole request has been read.

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

import socket
from typing import Any

from gunicorn.http.body import LengthReader
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker


class SyncWorker(GunicornSyncWorker):
    def handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> None:
        super().handle_request(listener, req, client, addr)
        if request_read_whole(req) and not bytes_waiting(client):
            # gunicorn's lingering close that follows finds the socket closed and does nothing.
            client.close()


def request_read_whole(req: Any) -> bool:
    """The body had a length and the app (or gunicorn) read all of it; ``GET`` has length 0."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0


def bytes_waiting(client: socket.socket) -> bool:
    """The client sent more than the request (or the state is unknown, e.g. TLS)."""
    try:
        return bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # ValueError: a TLS socket takes no recv flags
        return True
