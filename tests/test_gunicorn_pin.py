"""gunicorn internals the service relies on.

service/ relies on gunicorn beyond its documented API. worker.py patches util.write_error and closes
the connection before SyncWorker.handle's lingering close; server.py subclasses the Arbiter and copies
BaseApplication.run; gunicorn_conf.py names settings, and gunicorn silently ignores a name it does not
know. pyproject.toml pins gunicorn to the major these were written for (27). When a gunicorn release
changes any of it, these fail, so the upgrade is reviewed (and the overrides adapted or dropped)
instead of the service silently changing behaviour."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
from gunicorn import util as gunicorn_util
from gunicorn.app.base import Application, BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.errors import HaltServer
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import LimitRequestLine
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker as GunicornThreadWorker
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker
from service_helpers import ROOT, read_answer

from service import server as server_module
from service import worker as service_worker

# The methods ours override, by the gunicorn class they override them in (names and parameters must match).
GUNICORN_OVERRIDES: dict[type, tuple[type, set[str]]] = {
    service_worker._ServiceWorker: (Worker, {"init_process", "init_signals"}),  # shared by both workers below
    service_worker.SyncWorker: (GunicornSyncWorker, {"handle_exit", "run", "handle", "handle_request"}),
    service_worker.ThreadWorker: (GunicornThreadWorker, set()),
    server_module._Arbiter: (Arbiter, {"halt", "reap_workers", "handle_hup"}),
    server_module._RunsOurArbiter: (BaseApplication, {"run"}),
    server_module._Gunicorn: (Application, {"init", "load_config", "load"}),
}


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def _code(function: Any) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def _calls(function: Any) -> list[str]:
    """The calls in ``function``'s source, in source order, e.g. ``self.stop()``."""
    calls = [node for node in ast.walk(_code(function)) if isinstance(node, ast.Call)]
    return [ast.unparse(node) for node in sorted(calls, key=lambda node: (node.lineno, node.col_offset))]


@pytest.mark.parametrize("ours", list(GUNICORN_OVERRIDES), ids=lambda cls: cls.__name__)
def test_our_gunicorn_overrides_still_override_the_same_methods(ours: type) -> None:
    theirs, expected = GUNICORN_OVERRIDES[ours]
    ours_functions = {name for name, value in vars(ours).items() if inspect.isfunction(value)} - {"__init__"}
    overriding = {name for name in ours_functions if inspect.isfunction(getattr(theirs, name, None))}
    assert overriding == expected, f"{ours.__name__} overrides a different set of {theirs.__name__} methods now"
    for name in expected:
        assert _parameters(getattr(ours, name)) == _parameters(getattr(theirs, name)), f"{theirs.__name__}.{name}"
    # Attributes of our own must not be gunicorn's (a new gunicorn attribute of that name would be clobbered).
    own = {name for name in vars(ours) if not name.startswith("__")} - expected
    gunicorn_source = inspect.getsource(sys.modules[theirs.__module__])
    assert not [name for name in own if re.search(rf"\b{name}\b", gunicorn_source)]


def test_gunicorn_calls_we_make_still_bind() -> None:
    """Every gunicorn function the service calls accepts the arguments the service passes."""
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (gunicorn_util.write_nonblock, ("sock", b"data"), {}),  # worker.write_json_error
        (gunicorn_util.import_app, ("module:app()",), {}),  # server._Gunicorn.load
        (GunicornSyncWorker.accept, ("self", "listener"), {}),  # worker.answer_waiting_connections
        (GunicornSyncWorker.handle, ("self", "listener", "client", "addr"), {}),  # worker.handle, after its timeout
        (gunicorn_util.close, ("sock",), {}),  # worker.handle closes a silent connection
        (GunicornSyncWorker.notify, ("self",), {}),
        (GunicornSyncWorker.is_parent_alive, ("self",), {}),  # worker.run
        (Application.load_config_from_file, ("self", "gunicorn_conf.py"), {}),  # server._Gunicorn.load_config
        (Config.parser, ("self",), {}),
        (Config.get_cmd_args_from_env, ("self",), {}),
        (Config.set, ("self", "workers", 2), {}),
        (BaseApplication.__init__, ("self",), {"prog": "ticketclf serve"}),  # server._Gunicorn.__init__
        (Arbiter.run, ("self",), {}),  # server._RunsOurArbiter.run
        (Arbiter.halt, ("self",), {"reason": "why", "exit_status": 4}),  # as Arbiter.run calls our halt
        (HaltServer.__init__, ("self", "why", 4), {}),
        (Arbiter.kill_workers, ("self", 1), {}),  # server._Arbiter.handle_hup forwards SIGHUP
        (GunicornSyncWorker.init_signals, ("self",), {}),  # worker.init_signals adds SIGHUP to gunicorn's
        (LengthReader.__init__, ("self", "unreader", 0), {}),  # worker.request_read_whole reads .length
    ]
    for function, args, kwargs in calls:
        inspect.signature(function).bind(*args, **kwargs)
    assert isinstance(Arbiter.APP_LOAD_ERROR, int)  # server.serve maps it to the CLI's exit code


def test_gunicorn_code_our_overrides_replace_is_unchanged() -> None:
    # _RunsOurArbiter.run is BaseApplication.run with _Arbiter: it must still be this (compared as syntax trees,
    # so formatting and comments do not count).
    recorded = '''
def run(self):
    try:
        Arbiter(self).run()
    except RuntimeError as e:
        print("\\nError: %s\\n" % e, file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
'''
    assert ast.dump(_code(BaseApplication.run)) == ast.dump(ast.parse(recorded).body[0]), \
        inspect.getsource(BaseApplication.run)
    # (Application.run reaching it through super(): test_gunicorn_runs_our_arbiter.)
    # _Arbiter exists because halt() stops the workers, stopping reaps them, and reaping raises HaltServer
    # for a worker that failed to load the app, before on_exit and the exit.
    assert "raise HaltServer(reason, self.APP_LOAD_ERROR)" in ast.unparse(_code(Arbiter.reap_workers))
    assert "self.reap_workers()" in _calls(Arbiter.stop)
    halt = _calls(Arbiter.halt)
    assert halt.index("self.stop()") < halt.index("self.cfg.on_exit(self)") < halt.index("sys.exit(exit_status)")
    # server.worker_app raises AppImportError to stop the server with its one line: the worker's exit code.
    spawn = _code(Arbiter.spawn_worker)
    handlers = [handler for node in ast.walk(spawn) if isinstance(node, ast.Try) for handler in node.handlers]
    [app_import] = [h for h in handlers if h.type is not None and ast.unparse(h.type) == "AppImportError"]
    assert "sys.exit(self.APP_LOAD_ERROR)" in ast.unparse(app_import)
    # worker.SyncWorker.handle_request closes the socket before the lingering close that follows it.
    handle = _code(GunicornSyncWorker.handle)
    [guarded] = [node for node in handle.body if isinstance(node, ast.Try)]
    assert "self.handle_request(listener, req, client, addr)" in [ast.unparse(s) for s in guarded.body]
    assert [ast.unparse(s) for s in guarded.finalbody] == ["util.close_graceful(client)"]
    assert inspect.signature(gunicorn_util.close_graceful).parameters["timeout"].default == 2.0  # "up to 2 s"


def test_gunicorn_lingering_close_does_nothing_on_a_closed_socket() -> None:
    """What worker.SyncWorker.handle_request relies on when it closes the socket first."""
    server_side, client_side = socket.socketpair()
    with client_side:
        server_side.close()
        started = time.monotonic()
        gunicorn_util.close_graceful(server_side)
        assert time.monotonic() - started < 0.5
    server_side, client_side = socket.socketpair()
    with client_side:  # still a lingering close on an open socket (else our early close is not needed)
        started = time.monotonic()
        gunicorn_util.close_graceful(server_side, timeout=0.3)
        assert time.monotonic() - started >= 0.25


def test_gunicorn_errors_reach_our_json_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker.handle_error writes through the module attribute util.write_error, which init_process patches,
    with statuses that service.worker names."""
    monkeypatch.setattr(gunicorn_util, "write_error", gunicorn_util.write_error)  # restored after the test
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        worker = service_worker.SyncWorker(0, os.getppid(), [listener], None, 30, Config(), Mock())
        try:
            monkeypatch.setattr(GunicornSyncWorker, "init_process", lambda self: None)  # no process to set up
            worker.init_process()
            assert gunicorn_util.write_error is service_worker.write_json_error
            server_side, client_side = socket.socketpair()
            with server_side, client_side:
                worker.handle_error(None, server_side, ("127.0.0.1", 1), LimitRequestLine(5000, 4094))
                server_side.shutdown(socket.SHUT_WR)
                status, headers, body = read_answer(client_side)
            assert status == 414 and json.loads(body)["error"]["code"] == "uri_too_long"
            # worker.answer_waiting_connections: accept() hands a queued connection to handle() and raises
            # OSError on an empty queue; the worker knows its listeners, master and graceful timeout.
            handled: list[Any] = []

            def handle(listener: socket.socket, client: socket.socket, addr: Any) -> None:
                handled.append(addr)
                client.close()

            monkeypatch.setattr(worker, "handle", handle)
            with socket.create_connection(listener.getsockname(), timeout=5):
                time.sleep(0.1)
                worker.answer_waiting_connections(time.monotonic() + 5)
            assert len(handled) == 1 and worker.is_parent_alive() and worker.cfg.graceful_timeout > 0
        finally:
            worker.tmp.close()
    statuses = {node.value.value for node in ast.walk(_code(Worker.handle_error)) if isinstance(node, ast.Assign)
                and ast.unparse(node.targets[0]) == "status_int" and isinstance(node.value, ast.Constant)}
    assert statuses and statuses <= set(service_worker._GUNICORN_ERROR_CODES), statuses
    # No gunicorn module holds write_error under its own name, where the patch would not reach.
    package = Path(inspect.getfile(gunicorn_util)).parent
    for module in package.rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "write_error" not in [alias.name for alias in node.names], module
            if isinstance(node, ast.Name) and node.id == "write_error":
                pytest.fail(f"{module} refers to write_error by its bare name")


def test_gunicorn_runs_our_arbiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """_Gunicorn(...).run() goes through Application.run's checks to _RunsOurArbiter.run and _Arbiter."""
    started: list[Any] = []

    class Recording:
        def __init__(self, app: Any) -> None:
            self.app = app

        def run(self) -> None:
            started.append(self.app)

    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.setattr(server_module, "_Arbiter", Recording)
    app = server_module._Gunicorn({"bind": ["127.0.0.1:0"], "workers": 3})
    app.run()
    assert started == [app] and app.cfg.workers == 3 and app.cfg.bind == ["127.0.0.1:0"]


def test_every_name_in_gunicorn_conf_is_a_gunicorn_setting() -> None:
    """gunicorn ignores names it does not know: a setting renamed upstream would silently fall back."""
    tree = ast.parse((ROOT / "service" / "gunicorn_conf.py").read_text())
    names = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
             if isinstance(target, ast.Name)}
    names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    public = {name for name in names if not name.startswith("_")}
    assert public and not public - set(Config().settings), public - set(Config().settings)
