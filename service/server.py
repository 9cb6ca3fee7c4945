"""``ticketclf serve``: gunicorn with ``service/gunicorn_conf.py``, or Flask's dev server with ``--dev``."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import runpy
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn import util
from gunicorn.app.base import Application, BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError, HaltServer

from classifier import bundle as bundles
from classifier.errors import UserError
from classifier.feedback import feedback_url
from classifier.integrity import file_problems
from classifier.predict import default_threads, resolve_engine
from classifier.repository import is_model_dir, open_model
from service import settings, unknown_variables
from service.auth import parse_keys

CONFIG_FILE = Path(__file__).with_name("gunicorn_conf.py")


def no_keys_warning(keys: Any, host: str) -> str | None:
    """What to say when serving without API keys on an address other machines can reach; None otherwise."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if parse_keys(keys) or loopback:
        return None
    return (f"no API keys (TICKETCLF_API_KEYS) on {host}, an address others can reach: anyone there can classify, "
            "and store or overwrite agents' labels through /feedback")


def serve(bundle_dir: Path, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None,
          dev: bool = False) -> int:
    """Serve ``bundle_dir`` until stopped; return the exit code."""
    # Mistakes fail here in one line, before any server starts, not with a traceback from every worker.
    serving = bundle_dir
    if is_model_dir(bundle_dir):  # REPO/NAME: its champion serves
        repository, name = open_model(bundle_dir)
        serving = repository.resolve(name)
    manifest = bundles.read_manifest(serving)
    broken = list(file_problems(serving, manifest).values())  # a truncated model, an edited file
    if broken:
        raise UserError(broken[0] + (f" (and {len(broken) - 1} more problems)" if len(broken) > 1 else ""))
    # How the app (in every worker) finds it. Not resolved: a symbolic link is followed afresh at each look.
    os.environ["TICKETCLF_BUNDLE"] = os.path.abspath(bundle_dir)
    config = settings()
    # e.g. a database no driver is installed for. classifier.feedback's check, not service.feedback's: that
    # imports the metrics, which must not load here before gunicorn's configuration names their multiprocess
    # directory (the workers' /metrics would count nothing).
    feedback_url(config["FEEDBACK_DB"], bundle_dir, starting=True)
    _check_metrics_dir()
    _check_gunicorn_args()
    default_threads()  # TICKETCLF_THREADS
    runpy.run_path(str(CONFIG_FILE))  # what gunicorn will read: TICKETCLF_WORKERS, TICKETCLF_LOG_LEVEL, ...
    resolve_engine(serving, manifest, config["ENGINE"])  # e.g. int8 asked of a bundle not exported
    host = host.removeprefix("[").removesuffix("]")  # "[::1]", as URLs write it
    _check_address(host, port, workers)
    warnings = [no_keys_warning(config["API_KEYS"], host), manifest.cleaning_note, *unknown_variables()]
    if config["LOG_TEXT"]:
        warnings.append("the access log carries ticket text (TICKETCLF_LOG_TEXT): customer data in the logs")
    for warning in filter(None, warnings):
        print(f"ticketclf serve: warning: {warning}", file=sys.stderr)
    if dev:
        print(f"ticketclf serve: Flask's development server on http://{_address(host, port)} (one process; "
              "production: without --dev)", file=sys.stderr)
        return _serve_dev(host, port)
    overrides: dict[str, Any] = {"bind": [_address(host, port)]}
    if workers is not None:
        overrides["workers"] = workers
    master = os.getpid()
    try:
        _Gunicorn(overrides).run()
    except SystemExit as stop:  # the arbiter exits the process; the CLI wants a code
        if os.getpid() != master:  # a worker (forked in run()) leaving: its code is for the master to read
            raise
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        return UserError.exit_code if code == Arbiter.APP_LOAD_ERROR else code  # worker_app's one line said why
    return 0


def worker_app() -> Flask:
    """The app of a gunicorn worker (``wsgi_app`` in gunicorn_conf.py). A mistake only loading finds (a bundle
    file missing, torch asked for but not installed) stops the server with its one-line message, as an
    AppImportError, instead of a traceback from every worker."""
    from service import create_app

    _log_like_gunicorn()
    try:
        return create_app()
    except UserError as error:
        raise AppImportError(f"error: {error}") from None  # gunicorn prints it as it is


def _log_like_gunicorn() -> None:
    """The service's own log lines (a model swapped or refused) and the classifier's (the feedback database
    migrated) go where gunicorn's go, in its format."""
    gunicorns = logging.getLogger("gunicorn.error")
    for name in ("ticketclf.service", "classifier"):
        ours = logging.getLogger(name)
        ours.handlers = list(gunicorns.handlers)
        ours.setLevel(gunicorns.level)
        ours.propagate = False


def _check_metrics_dir() -> None:
    """Refuse a PROMETHEUS_MULTIPROC_DIR that is not a folder: each worker would fail to boot with a traceback."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given and not Path(given).is_dir():
        raise UserError(f"PROMETHEUS_MULTIPROC_DIR: {given} is not a folder; create it (empty), or unset the "
                        "variable and the server makes one")


def _check_gunicorn_args() -> None:
    """Refuse an address in GUNICORN_CMD_ARGS: --host and --port (defaults included) would win over it unsaid."""
    from gunicorn.config import Config

    config = Config()
    if config.parser().parse_args(config.get_cmd_args_from_env()).bind:
        raise UserError("GUNICORN_CMD_ARGS: give the address as 'ticketclf serve --host HOST --port PORT', not "
                        "--bind")


def _check_address(host: str, port: int, workers: int | None) -> None:
    """Refuse a port or worker count out of range, and an address another server holds, in one line: gunicorn
    would print a traceback for the first and retry the last for five seconds, one error line a second."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    inherited = any(os.environ.get(name) for name in ("GUNICORN_FD", "LISTEN_FDS"))  # a USR2 re-exec, systemd's
    if inherited or "reuse-port" in os.environ.get("GUNICORN_CMD_ARGS", ""):  # socket: the port is ours, or shared
        return
    try:  # a machine without IPv6 fails at the socket already
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds: TIME_WAIT is no owner
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"{_address(host, port)} is in use by another server: choose another --port") from None
        raise UserError(f"cannot listen on {_address(host, port)}: {error.strerror or error}") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve_dev(host: str, port: int) -> int:
    from service import create_app

    app = create_app()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the app writes its own JSON access lines
    app.run(host=host, port=port, threaded=True, use_reloader=False)
    return 0


class _Arbiter(Arbiter):
    """gunicorn's arbiter, except that while it halts because a worker failed to load, another worker failing
    the same way is reaped, not raised: gunicorn 27 raises HaltServer again from inside ``halt()``, which then
    skips ``on_exit`` (removing the metrics directory) and ends in a traceback."""

    halting = False

    def handle_hup(self) -> None:
        """SIGHUP: each worker looks for a new model now and swaps it in live if it loads and passes its
        checks (service/model.py), instead of gunicorn replacing every worker, whose new workers stop the
        server when the new bundle is broken. Settings changes need a restart."""
        self.log.info("Hang up: workers look for a new model now")
        self.kill_workers(signal.SIGHUP)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason, exit_status)

    def reap_workers(self) -> None:
        try:
            super().reap_workers()
        except HaltServer:
            if not self.halting:
                raise


class _RunsOurArbiter(BaseApplication):
    def run(self) -> None:  # what BaseApplication.run does, with _Arbiter
        try:
            _Arbiter(self).run()
        except RuntimeError as error:
            print(f"\nError: {error}\n", file=sys.stderr, flush=True)
            sys.exit(1)


class _Gunicorn(Application, _RunsOurArbiter):
    """gunicorn run in this process: the config file, then ``GUNICORN_CMD_ARGS``, then our arguments.
    (Application.run checks its settings, then its ``super().run()`` is _RunsOurArbiter's.)"""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        super().__init__(prog="ticketclf serve")

    def init(self, parser: Any, opts: Any, args: Any) -> None:  # required by the base class; unused
        return None

    def load_config(self) -> None:
        self.load_config_from_file(str(CONFIG_FILE))
        from_env = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
        for key, value in vars(from_env).items():
            if value is not None and key != "args":
                self.cfg.set(key.lower(), value)
        for key, value in self.overrides.items():
            self.cfg.set(key, value)
        if self.cfg.worker_class_str in ("gthread", "gunicorn.workers.gthread.ThreadWorker"):
            self.cfg.set("worker_class", "service.worker.ThreadWorker")  # SIGHUP swaps the model, as in ours

    def load(self) -> Any:
        return util.import_app(self.cfg.wsgi_app)
