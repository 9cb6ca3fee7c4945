"""Live model swaps (service/model.py): a promotion, a rollback or a flipped link is served without a
restart; a broken model is refused while the old one keeps serving, also across SIGHUP and a worker
restart; no request fails during a swap."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from service_helpers import TICKET, ctx, http_call, master_pid, metric_values, running_server

from classifier.repository import ModelRepository
from service import create_app
from service.auth import parse_keys


def served_version(app: Flask) -> str:
    response = app.test_client().post("/classify", json={"text": "I was charged twice"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["model"]["version"]


def break_model(bundle_dir: Path) -> None:
    """The served int8 model overwritten in place by bytes that are no model."""
    (bundle_dir / "onnx" / "model_int8.onnx").write_bytes(b"\x00not an onnx model" * 1000)


@pytest.fixture()
def repository(exported_bundle: Path, tmp_path: Path) -> ModelRepository:
    """``tickets`` with two versions of the exported bundle: 1 serves, 2 is the challenger."""
    models = ModelRepository(tmp_path / "models")
    models.add_version("tickets", exported_bundle)
    models.add_version("tickets", exported_bundle)
    return models


def repository_app(repository: ModelRepository, interval: float = 0.0) -> Flask:
    return create_app({"BUNDLE": repository.model_dir("tickets"), "THREADS": 1, "API_KEYS": "",
                       "ACCESS_LOG": False, "RELOAD_INTERVAL": interval})


def test_a_promotion_is_served_and_a_rollback_returns(repository: ModelRepository) -> None:
    app = repository_app(repository)
    served = ctx(app).served
    assert served_version(app) == "1" and not served.check()  # nothing changed: nothing loaded

    repository.promote("tickets", 2)
    assert served.check() and served_version(app) == "2"
    assert app.test_client().get("/labels").get_json()["model"]["version"] == "2"
    repository.rollback("tickets")
    assert served.check() and served_version(app) == "1"

    samples = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    assert samples[("ticketclf_model_swaps_total", (("outcome", "accepted"),))] >= 2


def test_the_watcher_notices_a_promotion_within_its_interval(repository: ModelRepository) -> None:
    app = repository_app(repository, interval=0.2)
    repository.promote("tickets", 2)
    deadline = time.monotonic() + 30
    while served_version(app) != "2":
        assert time.monotonic() < deadline, "the promotion was not served"
        time.sleep(0.1)


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(repository: ModelRepository,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    app = repository_app(repository)
    served = ctx(app).served
    repository.promote("tickets", 2)  # which refuses a broken version: this one breaks after (a disk, a hand edit)
    break_model(repository.version("tickets", 2).path)

    assert not served.check()
    assert served_version(app) == "1"
    ready = app.test_client().get("/ready").get_json()
    assert ready["model"]["version"] == "1" and "version 2" in ready["swap_error"]
    assert any("model refused" in record.getMessage() for record in caplog.records)
    # With API keys, /ready stays open to probes, but says why (server paths) only to a client with a key for
    # every route or for the metrics.
    app.config["API_KEYS"] = parse_keys("secret, metrics:scraper, classify:caller")
    hidden = "a new model was refused; the server's log, or this route with a metrics key, says why"
    for key, said in (("", hidden), ("caller", hidden), ("secret", ready["swap_error"]),
                      ("scraper", ready["swap_error"])):
        assert app.test_client().get("/ready", headers={"X-API-Key": key}).get_json()["swap_error"] == said, key
    app.config["API_KEYS"] = ()
    samples = metric_values(app.test_client().get("/metrics").get_data(as_text=True))
    assert samples[("ticketclf_model_swap_failed", ())] == 1
    assert not served.check()  # the same broken version is not loaded again on every look

    repository.rollback("tickets")  # back to version 1, which serves: nothing is wrong any more
    assert not served.check() and served.swap_error is None and served_version(app) == "1"


def test_a_flipped_link_deploys_and_a_broken_bundle_is_refused(exported_bundle: Path, tmp_path: Path,
                                                                hand_edit) -> None:
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(exported_bundle, first)
    shutil.copytree(exported_bundle, second)
    hand_edit(second, lambda manifest: manifest.update(bundle_version="second-build"))
    link = tmp_path / "current"
    link.symlink_to(first)
    app = create_app({"BUNDLE": link, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False, "RELOAD_INTERVAL": 0})
    served = ctx(app).served
    before = served_version(app)

    flipped = tmp_path / "next"
    flipped.symlink_to(second)
    os.replace(flipped, link)  # how a deploy flips a link: atomically
    assert served.check() and served_version(app) == "second-build" != before

    break_model(second)  # changed in place: noticed, refused
    assert not served.check() and served_version(app) == "second-build"
    assert "second" in served.swap_error


def test_swaps_keep_a_bounded_number_of_model_copies(exported_bundle: Path, tmp_path: Path, hand_edit,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from service.model import OTHER_SNAPSHOTS_KEPT, STATE_DIR_VARIABLE

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(exported_bundle, bundle_dir)
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))  # as gunicorn's workers have it
    app = create_app({"BUNDLE": bundle_dir, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False, "RELOAD_INTERVAL": 0})
    served = ctx(app).served
    (bundle_dir / ".manifest.json.tmp").write_text("an edit under way")
    assert not served.check()  # a hidden file is no new model
    for build in range(4):
        hand_edit(bundle_dir, lambda manifest, build=build: manifest.update(bundle_version=f"build-{build}"))
        assert served.check() and served_version(app) == f"build-{build}"
    copies = list((tmp_path / "state" / "snapshots").iterdir())
    last_good = Path(json.loads((tmp_path / "state" / "last-good.json").read_text())["path"])
    assert len(copies) == 1 + OTHER_SNAPSHOTS_KEPT and last_good in copies


def test_no_request_fails_while_gunicorn_workers_swap_versions(repository: ModelRepository,
                                                                tmp_path: Path) -> None:
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def client(port: int) -> None:
        while not stop.is_set():
            try:
                status, body = http_call(port, "POST", "/classify", TICKET)
            except OSError as error:
                failures.append(repr(error))
                continue
            if status != 200:
                failures.append(f"{status} {body}")
            else:
                versions.append(json.loads(body)["model"]["version"])

    log = tmp_path / "server.log"
    with running_server(repository.model_dir("tickets"), log, "--workers", "2",
                        TICKETCLF_RELOAD_INTERVAL="0.3") as port:
        clients = [threading.Thread(target=client, args=(port,)) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(1)
            repository.promote("tickets", 2)
            deadline = time.monotonic() + 60
            while versions[-20:] != ["2"] * 20:  # both workers answer with version 2
                assert time.monotonic() < deadline, "version 2 was not served"
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in clients:
                thread.join()
    assert failures == [] and versions.count("1") > 0 and versions.count("2") > 20
    assert log.read_text().count("model swapped") == 2  # one per worker


def test_sighup_and_a_worker_restart_keep_the_last_good_model_when_the_bundle_breaks(bundle_copy: Path,
                                                                                      tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(bundle_copy, log, "--workers", "2", TICKETCLF_RELOAD_INTERVAL="0") as port:
        master = master_pid(log)
        deadline = time.monotonic() + 60
        while log.read_text().count("serving (int8") < 2:  # both workers loaded the good model
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        break_model(bundle_copy)
        os.kill(master, signal.SIGHUP)  # "deploy": the workers look at once
        deadline = time.monotonic() + 30
        while log.read_text().count("model refused") < 2:  # each worker tried it, and refused it
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for _ in range(4):
            assert http_call(port, "POST", "/classify", TICKET)[0] == 200
            status, body = http_call(port, "GET", "/ready")
            assert status == 200 and "model_int8.onnx" in json.loads(body)["swap_error"]

        # A worker that dies is replaced by one that cannot load the bundle on disk: it serves the copy of
        # the last good model instead of stopping the server.
        workers = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log.read_text())]
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(re.findall(r"Booting worker with pid", log.read_text())) < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while "serving the last good model" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        for _ in range(20):
            assert http_call(port, "POST", "/classify", TICKET)[0] == 200
