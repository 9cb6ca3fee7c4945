"""`ticketclf serve` as real processes: gunicorn and the development server over HTTP,
settings, refusals before start, SIGTERM, reload, and the load-test script."""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from service_helpers import (
    KEYS,
    ROOT,
    TICKET,
    free_port,
    http_call,
    master_pid,
    metric_values,
    read_answer,
    running_server,
)

from classifier.errors import UserError
from classifier.feedback import feedback_url
from service import server as server_module
from service import settings as service_settings
from service import unknown_variables
from service.server import serve

SERVING_ONLY = """
import importlib.abc, importlib.metadata, json, sys
# As in the serving install: a module of a distribution it lacks fails to import, so an optional import
# (mako's pygments) falls back as it would there and a needed one fails the run.
serving, owners = set(json.loads(sys.argv[2])), importlib.metadata.packages_distributions()

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        found = owners.get(name.partition('.')[0])
        if found and not {owner.lower().replace('_', '-') for owner in found} & serving:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the serving install)", name=name)

sys.meta_path.insert(0, NotInstalled())
from service import create_app, gunicorn_conf
app = create_app({'BUNDLE': sys.argv[1]})
answer = app.test_client().post('/classify', json={'text': 'I was charged twice for my plan'})
assert answer.status_code == 200, answer.get_json()
gunicorn_conf.post_fork(None, None)  # what each gunicorn worker runs
print(sorted(name for name in sys.modules if name in ('classifier.train', 'classifier.export')))
"""


def _installed_with(requirements: list[str], seen: set[str]) -> set[str]:
    """The distributions ``requirements`` bring, without extras, as pip installs them: each and what its installed
    metadata requires."""
    for text in requirements:
        requirement = Requirement(text)
        if (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})
                or canonicalize_name(requirement.name) in seen):
            continue
        seen.add(canonicalize_name(requirement.name))
        _installed_with(importlib.metadata.requires(requirement.name) or [], seen)
    return seen


def serving_install() -> set[str]:
    """What ``pip install .`` installs, from this checkout's pyproject.toml (not the metadata of the install the
    tests run in, which a change to the dependencies leaves as it was until it is reinstalled)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return _installed_with(project["dependencies"], {canonicalize_name(project["name"])})


def test_serving_runs_on_the_serving_install_alone(fields_bundle: Path) -> None:
    # The base install (no [train] extra) is all a server has, where the tests have everything installed: load
    # a bundle with every part (field heads, out-of-scope detector), classify and start a worker, with the other
    # distributions' modules made unimportable.
    serving = json.dumps(sorted(serving_install()))
    result = subprocess.run([sys.executable, "-c", SERVING_ONLY, str(fields_bundle), serving], cwd=ROOT, text=True,
                            capture_output=True, timeout=120, env={**os.environ, "TICKETCLF_ACCESS_LOG": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"  # and no training-side stage


def test_serve_refuses_a_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        serve(tmp_path / "missing")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TICKETCLF_MAX_BATCH", "abc", "TICKETCLF_MAX_BATCH: expected a whole number, got 'abc'"),
    ("TICKETCLF_RELOAD_INTERVAL", "soon", "TICKETCLF_RELOAD_INTERVAL: expected a number of seconds, got 'soon'"),
    ("TICKETCLF_MAX_BATCH", "0", r"MAX_BATCH \(TICKETCLF_MAX_BATCH\): must be at least 1"),
    ("TICKETCLF_ENGINE", "bogus", "unknown engine 'bogus'"),
    ("TICKETCLF_ENGINE", "fp32", "no fp32 ONNX model; run 'ticketclf export"),  # tiny_bundle is not exported
    ("TICKETCLF_LOG_TEXT", "maybe", "TICKETCLF_LOG_TEXT: expected true or false"),
    ("TICKETCLF_THREADS", "abc", "TICKETCLF_THREADS must be a whole number"),
    ("TICKETCLF_THREADS", "-3", "TICKETCLF_THREADS must be at least 1, got -3"),
    ("TICKETCLF_WORKERS", "0", "TICKETCLF_WORKERS must be at least 1, got 0"),
    ("TICKETCLF_WORKERS", "abc", "TICKETCLF_WORKERS must be a whole number"),
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number"),
    ("TICKETCLF_LOG_LEVEL", "verbose", "TICKETCLF_LOG_LEVEL must be debug, info"),
    ("TICKETCLF_API_KEYS", " , ", r"API_KEYS \(TICKETCLF_API_KEYS\): no key in"),
    ("TICKETCLF_FEEDBACK_DB", "mysql://x/y", r"FEEDBACK_DB \(TICKETCLF_FEEDBACK_DB\): .*SQLite or PostgreSQL only"),
    ("TICKETCLF_FEEDBACK_DB", "/nonexistent/dir/f.sqlite", "its folder /nonexistent/dir does not exist"),
    ("GUNICORN_CMD_ARGS", "--workers 1 --bind 127.0.0.1:23428", "GUNICORN_CMD_ARGS: give the address as"),
    ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/metrics", "PROMETHEUS_MULTIPROC_DIR: /nonexistent/metrics is not a "
                                                         "folder"),
])
def test_serve_refuses_a_bad_setting_before_starting_workers(tiny_bundle: Path, variable: str, value: str,
                                                             message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("TICKETCLF_BUNDLE", "")  # serve() sets it; monkeypatch restores it afterwards
    monkeypatch.setattr(server_module._Gunicorn, "run", lambda self: pytest.fail("gunicorn started"))
    with pytest.raises(UserError, match=message):
        serve(tiny_bundle)


def test_serve_refuses_a_feedback_database_inside_the_bundle(tiny_bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETCLF_FEEDBACK_DB", str(tiny_bundle / "feedback" / ".." / "feedback.sqlite"))
    monkeypatch.setenv("TICKETCLF_BUNDLE", "")
    monkeypatch.setattr(server_module._Gunicorn, "run", lambda self: pytest.fail("gunicorn started"))
    with pytest.raises(UserError, match=f"is inside the model bundle {tiny_bundle}, which the service reloads"):
        serve(tiny_bundle)
    assert not (tiny_bundle / "feedback.sqlite").exists()
    webapp = tmp_path / "webapp"  # a folder with another kind of manifest.json is no bundle
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "helpdesk", "icons": []}')
    assert feedback_url(str(webapp / "feedback.sqlite"), tiny_bundle, starting=True) == \
        f"sqlite:///{webapp / 'feedback.sqlite'}"


def test_web_concurrency_that_is_no_number_is_one_line(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "x")  # gunicorn's own import reads it with int()
    monkeypatch.setenv("TICKETCLF_WORKERS", "2")  # even when this one decides the workers
    run = subprocess.run([sys.executable, "-m", "classifier.cli", "serve", str(tiny_bundle)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == "ticketclf serve: error: WEB_CONCURRENCY must be a whole number, got 'x'\n"


def test_serve_refuses_a_bundle_whose_files_changed_before_starting_workers(bundle_copy: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETCLF_BUNDLE", "")
    monkeypatch.setattr(server_module._Gunicorn, "run", lambda self: pytest.fail("gunicorn started"))
    with open(bundle_copy / "model.safetensors", "r+b") as weights:  # cut short, as by a full disk
        weights.truncate(1_000_000)
    with pytest.raises(UserError, match=r"model\.safetensors: .*sealed"):
        serve(bundle_copy)


def test_serve_refuses_a_bad_address_before_starting_workers(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("TICKETCLF_BUNDLE", "")
    monkeypatch.setattr(server_module._Gunicorn, "run", lambda self: pytest.fail("gunicorn started"))
    with pytest.raises(UserError, match="--port must be between 1 and 65535, got 99999"):
        serve(tiny_bundle, port=99999)
    with pytest.raises(UserError, match="--workers must be at least 1, got 0"):
        serve(tiny_bundle, workers=0)
    with socket.socket() as taken:  # another server listening there
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port} is in use by another server"):
            serve(tiny_bundle, port=port)
    with pytest.raises(UserError, match="cannot listen on 192.0.2.1:"):  # an address this machine does not have
        serve(tiny_bundle, host="192.0.2.1", port=8000)
    with pytest.raises(UserError, match=r"cannot listen on \[2001:db8::1\]:8000: "):  # written as in a URL
        serve(tiny_bundle, host="[2001:db8::1]", port=8000)


@pytest.mark.parametrize(("keys", "host", "warned"), [
    ("", "0.0.0.0", True), ("", "10.1.2.3", True), ("", "::", True), ("", "ci-host.internal", True),
    ("", "127.0.0.1", False), ("", "::1", False), ("", "localhost", False), ("k1", "0.0.0.0", False),
])
def test_serving_without_keys_where_others_can_reach_it_is_warned(keys: str, host: str, warned: bool) -> None:
    assert (server_module.no_keys_warning(keys, host) is not None) == warned


def test_a_setting_nothing_reads_is_named_with_the_one_it_likely_meant() -> None:
    environ = {"TICKETCLF_ENGIN": "fp32", "TICKETCLF_ENGINE": "int8", "TICKETCLF_COLOUR": "blue", "PATH": "/bin",
               "TICKETCLF_WORKERS": "2"}
    assert unknown_variables(environ) == ["TICKETCLF_COLOUR is not a setting: ignored",
                                          "TICKETCLF_ENGIN is not a setting (did you mean TICKETCLF_ENGINE?): ignored"]


def test_gunicorn_serves_over_http(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    key = {"X-API-Key": KEYS[0]}
    with running_server(exported_bundle, log, "--workers", "2", TICKETCLF_API_KEYS=KEYS[0]) as port:
        assert http_call(port, "POST", "/classify", {"text": "hello"})[0] == 401
        for _ in range(4):  # spread over both workers
            status, body = http_call(port, "POST", "/classify", {"tickets": [TICKET, {"text": "hi"}]}, key)
            assert status == 200 and len(json.loads(body)["predictions"]) == 2
        values = metric_values(http_call(port, "GET", "/metrics", headers=key)[1])  # summed over workers
        assert values[("ticketclf_http_requests_total",
                       (("method", "POST"), ("route", "/classify"), ("status", "200")))] == 4
        assert sum(v for (name, _), v in values.items() if name == "ticketclf_predictions_total") == 8
    output = log.read_text()
    assert "Booting worker" in output and "Traceback" not in output and "hello" not in output
    # The classifier's own lines (the feedback database made beside the bundle) in gunicorn's format too.
    database_lines = [line for line in output.splitlines() if "feedback database" in line]
    assert database_lines and all(re.match(r"\[[^]]+\] \[\d+\] \[INFO\] ", line) for line in database_lines)


def test_a_body_shorter_than_its_length_is_a_408_not_a_killed_worker(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    # A worker timeout of 3 s times a silent client out after 1 s (a third), as 30 s does after 10 s.
    with running_server(exported_bundle, log, "--workers", "1", GUNICORN_CMD_ARGS="--timeout 3") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n" + b'{"text": "hello"')  # 16 of the 100 bytes
            answer = client.makefile("rb").read().decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert http_call(port, "POST", "/classify", {"text": "hello"})[0] == 200  # the same worker, at once
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:  # sends nothing: closed
            assert silent.recv(1) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:  # stops mid-headers: closed
            stalled.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Ty")
            assert stalled.recv(1) == b""
        assert http_call(port, "GET", "/ready")[0] == 200
    output = log.read_text()
    assert "WORKER TIMEOUT" not in output and "Traceback" not in output
    assert "that sent nothing for 1 s" in output
    assert "INFO] closed a connection whose client stopped sending in the middle of its request" in output


def test_a_worker_stopped_mid_request_answers_503_with_the_callers_request_id(exported_bundle: Path,
                                                                               tmp_path: Path) -> None:
    """Past its timeout gunicorn's master aborts the worker (SIGABRT, as here): the request is not lost in
    silence, nor a 500 no log line names."""
    log = tmp_path / "server.log"
    words = "my card payment was declined twice and the refund never arrived on my account".split()
    batch = {"tickets": [{"text": " ".join(random.Random(i).choices(words, k=400))} for i in range(256)]}
    body = json.dumps(batch).encode()
    with running_server(exported_bundle, log, "--workers", "1") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           f"X-Request-ID: stopped-1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.5)  # the worker is classifying the batch
            worker = int(re.findall(r"Booting worker with pid: (\d+)", log.read_text())[-1])
            os.kill(worker, signal.SIGABRT)
            status, head, answer = read_answer(client)
        assert status == 503 and b"X-Request-ID: stopped-1" in head
        error = json.loads(answer)["error"]
        assert error["code"] == "worker_stopped" and "request id stopped-1" in error["message"]
        values = metric_values(http_call(port, "GET", "/metrics")[1])  # from the new worker
        assert values[("ticketclf_http_requests_total",
                       (("method", "POST"), ("route", "/classify"), ("status", "503")))] == 1
    logged = [json.loads(line) for line in log.read_text().splitlines() if '"request_id": "stopped-1"' in line]
    assert [(entry["status"], entry["error_code"]) for entry in logged] == [(503, "worker_stopped")]


def test_a_worker_runs_blas_on_its_model_threads() -> None:
    # In a process of its own, as a forked worker: the limit holds for the whole process.
    limited = subprocess.run([sys.executable, "-c", (
        "from service import gunicorn_conf; gunicorn_conf.post_fork(None, None); "
        "from threadpoolctl import threadpool_info; "
        "print(sorted({pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas'}))")],
        cwd=ROOT, env={**os.environ, "TICKETCLF_THREADS": "1"}, capture_output=True, text=True, check=True)
    assert limited.stdout.strip() == "[1]"


def test_sigterm_answers_the_requests_already_waiting(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    body = json.dumps({"text": "I was charged twice"}).encode()
    request = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    with running_server(exported_bundle, log, "--workers", "1", TMPDIR=str(tmp_path)) as port:
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(request + body[:5])  # the only worker now waits for the rest of this body
        time.sleep(0.3)
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for connection in waiting:
            connection.sendall(request + body)  # queued: no worker is free to accept them
        time.sleep(0.3)
        os.kill(master_pid(log), signal.SIGTERM)
        time.sleep(0.5)
        busy.sendall(body[5:])
        for connection in [busy, *waiting]:
            with connection:
                status, _, answer = read_answer(connection)
                assert status == 200 and json.loads(answer)["predictions"][0]["label"]
    assert not list(tmp_path.glob("ticketclf-metrics-*"))


@pytest.mark.parametrize("worker_class", ["", "--worker-class gthread --threads 2"], ids=["ours", "gthread"])
def test_a_server_told_to_swap_models_keeps_its_workers_and_removes_its_metrics_directory(
        exported_bundle: Path, tmp_path: Path, worker_class: str) -> None:
    log = tmp_path / "server.log"
    with running_server(exported_bundle, log, "--workers", "1", TMPDIR=str(tmp_path),
                        GUNICORN_CMD_ARGS=worker_class) as port:
        [metrics_dir] = tmp_path.glob("ticketclf-metrics-*")
        # SIGHUP makes the workers look for a new model (service.server._Arbiter), not gunicorn reload them.
        os.kill(master_pid(log), signal.SIGHUP)
        deadline = time.monotonic() + 60
        while "model swapped" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "model swapped" in log.read_text() and http_call(port, "GET", "/ready")[0] == 200
        assert log.read_text().count("Booting worker") == 1  # swapped live, not replaced
    assert not metrics_dir.exists()


def test_a_server_removes_what_a_killed_server_left(exported_bundle: Path, tmp_path: Path) -> None:
    """End to end through gunicorn's hooks; which directories go and which stay: tests/test_server_dirs.py."""
    with running_server(exported_bundle, tmp_path / "killed.log", "--workers", "1", stop=signal.SIGKILL,
                        TMPDIR=str(tmp_path)):
        pass
    left = sorted(tmp_path.glob("ticketclf-*"))  # the crash removed nothing: its metrics and model state
    assert [path.name.rsplit("-", 1)[0] for path in left] == ["ticketclf-metrics", "ticketclf-state"]
    assert list(left[1].glob("snapshots/*/onnx"))
    log = tmp_path / "server.log"
    with running_server(exported_bundle, log, "--workers", "1", TMPDIR=str(tmp_path)):
        assert not any(path.exists() for path in left)
        assert "removed the temporary directories of servers no longer running" in log.read_text()
    assert not list(tmp_path.glob("ticketclf-*"))  # the second left nothing either


def test_a_bundle_mistake_found_only_by_loading_stops_gunicorn_with_one_line(bundle_copy: Path,
                                                                            tmp_path: Path) -> None:
    # An unsealed bundle (an older release's) without its tokenizer: nothing tells but loading the model.
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["integrity"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    (bundle_copy / "tokenizer.json").unlink()
    environment = {key: value for key, value in os.environ.items() if key not in ("GUNICORN_CMD_ARGS",)}
    environment["TMPDIR"] = str(tmp_path)  # where the metrics directory goes
    server = subprocess.Popen([sys.executable, "-m", "classifier.cli", "serve", str(bundle_copy), "--port",
                               str(free_port()), "--workers", "4"], cwd=ROOT, env=environment, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Not a master restarting failed workers forever; with 4 workers, a second one usually fails while
        # the master halts for the first (gunicorn 27 then raised HaltServer again: service.server._Arbiter).
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 2, output
    assert "error: " in output and "bundle has no tokenizer.json" in output
    assert "Traceback" not in output and "Reason: App failed to load." in output
    assert not list(tmp_path.glob("ticketclf-metrics-*"))  # removed on the way out (on_exit ran)


def test_dev_server_serves_over_http(exported_bundle: Path, tmp_path: Path) -> None:
    # Ctrl-C (SIGINT) stops the development server cleanly; SIGTERM would just kill it.
    with running_server(exported_bundle, tmp_path / "server.log", "--dev", stop=signal.SIGINT) as port:
        status, body = http_call(port, "POST", "/classify", {"text": "I cannot log in"})
        assert status == 200 and json.loads(body)["predictions"][0]["label"]


def test_loadtest_script_runs_bounded(exported_bundle: Path, sample_csv: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    command = [sys.executable, str(ROOT / "scripts" / "benchmarks" / "loadtest.py"), str(exported_bundle),
               "--requests", "20", "--duration", "5", "--concurrency", "1,4", "--texts", str(sample_csv),
               "--column", "body", "--runs-file", str(runs)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 4 | 20 | 0 |" in result.stdout  # concurrency 4: 20 requests, 0 errors
    [run] = [json.loads(line) for line in runs.read_text().splitlines()]  # and recorded, as one run
    assert "loadtest.py" in run["command"] and run["figures"]


def test_settings_come_from_environment_then_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TICKETCLF_BUNDLE", str(tmp_path))
    monkeypatch.setenv("TICKETCLF_MAX_BATCH", "8")
    monkeypatch.setenv("TICKETCLF_LOG_TEXT", "yes")
    merged = service_settings({"MAX_BATCH": 4})
    assert (merged["BUNDLE"], merged["MAX_BATCH"], merged["LOG_TEXT"]) == (str(tmp_path), 4, True)
    monkeypatch.setenv("TICKETCLF_LOG_TEXT", "maybe")
    with pytest.raises(UserError, match="TICKETCLF_LOG_TEXT"):
        service_settings()
    monkeypatch.delenv("TICKETCLF_BUNDLE")
    monkeypatch.delenv("TICKETCLF_LOG_TEXT")
    with pytest.raises(UserError, match="no model bundle"):
        service_settings()
