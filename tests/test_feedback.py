"""Feedback (classifier/feedback.py, service/feedback.py): the store on a real SQLite file and a real PostgreSQL
server, the HTTP routes, the metrics, the CLI, and a server killed right after acknowledging feedback.

PostgreSQL: a throw-away cluster (initdb + pg_ctl, trust authentication, a free loopback port and a socket in a
temporary folder), stopped after the session. Without PostgreSQL's binaries those tests are skipped, unless
TICKETCLF_REQUIRE_SERVERS=1 (CI sets it and installs PostgreSQL), when they fail.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from csv_files import read_csv
from flask import Flask
from service_helpers import KEYS, ROOT, ctx, error_of, free_port, http_call, metric_values, running_server

from classifier.cli import main
from classifier.data import load_tickets
from classifier.errors import UserError
from classifier.feedback import (
    EventIdReused,
    FeedbackEvent,
    FeedbackStore,
    Window,
    corrections_for_retraining,
    default_location,
    export_csv,
    metadata,
    resolve_url,
)
from classifier.retrain import corrections_from_file
from service import create_app

REQUIRE_SERVERS = os.environ.get("TICKETCLF_REQUIRE_SERVERS") == "1"
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------ databases


def _postgres_bin() -> Path | None:
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        located = shutil.which("initdb")
        return Path(located).parent if located else None
    return Path(max(found, key=lambda path: int(Path(path).parent.parent.name))).parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server for this session: its URL without a database name."""
    bindir = _postgres_bin()
    if bindir is None or shutil.which("pg_ctl", path=str(bindir)) is None:
        message = "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}, and TICKETCLF_REQUIRE_SERVERS=1")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="ticketclf-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: an unprivileged user owns the cluster
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    data, log = root / "data", root / "server.log"
    port = free_port()
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        details = getattr(error, "stderr", b"") or b""
        server_log = log.read_text() if log.is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {error}\n{details.decode(errors='replace')}\n{server_log}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _new_postgres_database(server: str) -> str:
    name = f"feedback_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.sqlite'}"
    return _new_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture()
def store(db_url: str) -> Iterator[FeedbackStore]:
    opened = FeedbackStore.open(db_url)
    yield opened
    opened.close()


def event(ticket: str, label: str, **fields: object) -> FeedbackEvent:
    return FeedbackEvent(ticket_id=ticket, label=label, **fields)  # type: ignore[arg-type]


def statuses(store: FeedbackStore, *batch: FeedbackEvent) -> list[str]:
    return [outcome.status for outcome in store.add(list(batch))]


# ------------------------------------------------------------------ the store


def test_migrations_build_the_schema_from_empty_and_reopening_changes_nothing(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from classifier.feedback import _alembic_config

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with caplog.at_level("INFO", logger="classifier.feedback"):
        with FeedbackStore.open(db_url) as first:
            assert first.revision() == head
            first.add([event("1", "billing")])
            with first.engine.connect() as connection:  # the migrations build exactly the tables the code uses
                assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        with FeedbackStore.open(db_url) as again:  # a no-op: nothing migrated, nothing lost
            assert again.revision() == head and [e["label"] for e in again.events()] == ["billing"]
    assert sum("migrated" in record.getMessage() for record in caplog.records) == 1


def test_sqlite_is_opened_with_wal_and_durable_commits(tmp_path: Path) -> None:
    with FeedbackStore.open(str(tmp_path / "f.sqlite")) as store:  # a plain path is a SQLite file
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
    with pytest.raises(UserError, match="no feedback database"):
        FeedbackStore.open(str(tmp_path / "missing.sqlite"), create=False)
    for url in ("sqlite://", "mysql://x@y/z", "not a url at all://"):
        with pytest.raises(UserError):
            FeedbackStore.open(url)


def test_a_retried_event_counts_once(store: FeedbackStore) -> None:
    assert statuses(store, event("1", "billing", event_id="zd-1")) == ["stored"]
    assert statuses(store, event("1", "billing", event_id="zd-1")) == ["duplicate"]
    update = {"updated_at": T0}
    assert statuses(store, event("2", "billing", **update), event("2", "billing", **update)) == \
        ["stored", "duplicate"]
    # The retry of an old event arrives after the ticket was corrected again: still a duplicate, and the
    # correction stays the ticket's label.
    assert statuses(store, event("1", "refund", event_id="zd-2")) == ["stored"]
    assert statuses(store, event("1", "billing", event_id="zd-1")) == ["duplicate"]
    assert {c.ticket_id: c.label for c in store.corrections()} == {"1": "refund", "2": "billing"}
    assert len(store.events()) == 3


def test_a_batch_sent_again_stores_nothing_twice_whenever_it_arrives(store: FeedbackStore) -> None:
    minute = {"updated_at": T0}  # Zendesk's update time is to the minute
    moves = [event("3", "billing", **minute), event("3", "refund", **minute)]
    assert statuses(store, *moves) == ["stored", "stored"]
    assert statuses(store, *moves) == ["duplicate", "duplicate"]
    assert statuses(store, event("3", "cancellation", updated_at=T0 + timedelta(minutes=5))) == ["stored"]
    assert statuses(store, *moves) == ["duplicate", "duplicate"]  # after a later update too
    assert {c.ticket_id: c.label for c in store.corrections()} == {"3": "cancellation"}
    assert len(store.events("3")) == 3


def test_an_event_id_reused_for_another_event_is_refused(store: FeedbackStore) -> None:
    assert statuses(store, event("5", "billing", event_id="e-1")) == ["stored"]
    for other in (event("6", "billing", event_id="e-1"), event("5", "refund", event_id="e-1")):
        with pytest.raises(EventIdReused, match="'e-1' was stored for ticket '5' with label 'billing'") as raised:
            store.add([event("7", "billing"), other])
        assert raised.value.index == 1
    assert [e["ticket_id"] for e in store.events()] == ["5"]  # the batch is stored whole or not at all


def test_a_later_correction_supersedes_and_the_events_are_kept(store: FeedbackStore) -> None:
    assert statuses(store, event("7", "billing")) == ["stored"]
    assert statuses(store, event("7", "billing")) == ["unchanged"]  # posted again: not a second event
    assert statuses(store, event("7", "refund")) == ["stored"]
    assert statuses(store, event("7", "billing")) == ["stored"]  # moved back: a new event
    assert [e["label"] for e in store.events("7")] == ["billing", "refund", "billing"]
    assert [c.label for c in store.corrections()] == ["billing"]
    # Updates delivered out of order: the ticket's later update wins, whichever arrives last.
    later, earlier = event("8", "refund", updated_at=T0 + timedelta(hours=1)), event("8", "billing", updated_at=T0)
    assert statuses(store, later) == ["stored"] and statuses(store, earlier) == ["stored"]
    assert {c.ticket_id: c.label for c in store.corrections()}["8"] == "refund"
    # A helpdesk clock a few seconds ahead keeps the order of its updates, delivered out of order too...
    arrived = datetime.now(timezone.utc)
    store.add([event("10", "refund", updated_at=arrived + timedelta(seconds=7))], received_at=arrived)
    store.add([event("10", "billing", updated_at=arrived + timedelta(seconds=6))],
              received_at=arrived + timedelta(seconds=1))
    # ...but an update time far in the future (a typo) counts as 5 minutes after its arrival: it does not
    # outrank the corrections that come after that.
    store.add([event("9", "refund", updated_at=arrived + timedelta(days=30))], received_at=arrived)
    store.add([event("9", "billing")], received_at=arrived + timedelta(minutes=6))
    assert {c.ticket_id: c.label for c in store.corrections() if c.ticket_id in ("9", "10")} == \
        {"9": "billing", "10": "refund"}


def test_a_batch_is_stored_whole_or_not_at_all(store: FeedbackStore) -> None:
    unstorable = event("3", None, event_id="e3")  # type: ignore[arg-type]  refused by the database (NOT NULL)
    with pytest.raises(sa.exc.IntegrityError):
        store.add([event("1", "billing"), event("2", "refund"), unstorable])
    assert store.events() == []
    assert statuses(store, event("1", "billing"), event("2", "refund")) == ["stored", "stored"]


def test_text_is_stored_only_when_sent_and_can_be_deleted(store: FeedbackStore) -> None:
    store.add([event("1", "billing"), event("2", "refund", text_fields={"subject": "Charged twice"})])
    assert {e["ticket_id"]: e["text_fields"] for e in store.events()} == {"1": None, "2": {"subject": "Charged twice"}}
    # Ticket 1's text arrives with a repeat of its label: kept, without a second event.
    assert statuses(store, event("1", "billing", text_fields={"body": "late text"})) == ["unchanged"]
    assert store.events("1")[0]["text_fields"] == {"body": "late text"}
    assert store.delete(["1"], text_only=True) == 1
    assert store.events("1")[0]["text_fields"] is None and store.events("1")[0]["label"] == "billing"
    assert store.delete(["2", "404"]) == 1 and store.events("2") == []


def test_deleted_text_is_gone_from_the_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "feedback.sqlite"
    secret = "Zx9-private-customer-words-" * 20
    with FeedbackStore.open(str(path)) as store:
        store.add([event("1", "billing", text_fields={"body": secret})])
        store.add([event("2", "refund", text_fields={"body": "other ticket"})])
        store.delete(["1"])
        files = [p for p in tmp_path.iterdir() if p.name.startswith("feedback.sqlite")]
        assert all(secret[:27].encode() not in p.read_bytes() for p in files)


def test_concurrent_writers_all_get_stored(store: FeedbackStore) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(15):
                store.add([event(f"w{worker}-{n}", "billing"), event(f"shared-{n}", "refund", event_id=f"e{n}")])
        except BaseException as error:  # noqa: BLE001  reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.events()) == 4 * 15 + 15  # each shared event once, whoever sent it first


def test_stats_agreement_per_label_version_window_and_review(store: FeedbackStore) -> None:
    old = T0 - timedelta(days=3)
    store.add([event("1", "billing", predicted_label="billing", model_version="1", needs_review=False),
               event("2", "refund", predicted_label="billing", model_version="1", needs_review=True)],
              received_at=old)
    store.add([event("3", "refund", predicted_label="refund", model_version="2", needs_review=False),
               event("4", "login", predicted_label="refund", model_version="2", needs_review=True, confidence=0.4),
               event("5", "new-queue", new_label=True)], received_at=T0)
    # A webhook with only the agent's label: judged against the prediction stored for the ticket before.
    [outcome] = store.add([event("3", "billing")], received_at=T0 + timedelta(minutes=1))
    assert (outcome.predicted_label, outcome.model_version, outcome.agreed) == ("refund", "2", False)

    day, everything = store.stats([Window.parse("1d"), Window.parse("all")], at=T0 + timedelta(hours=1))
    assert (everything.overall.tickets, everything.overall.predicted, everything.overall.agreed) == (5, 4, 1)
    assert (day.overall.tickets, day.overall.predicted, day.overall.agreed) == (3, 2, 0)
    assert everything.per_model["1"].rate == 0.5 and everything.per_model["2"].rate == 0
    assert everything.per_label["billing"].predicted == 2 and everything.per_label["billing"].agreed == 1
    assert everything.needs_review_share == 0.5 and everything.confident.rate == 0.5
    assert everything.predicted_distribution() == {"refund": 0.5, "billing": 0.5}
    assert dict(everything.new_labels) == {"new-queue": 1}
    assert json.dumps(everything.to_dict())  # what --json prints
    with pytest.raises(UserError, match="window"):
        Window.parse("3 fortnights")


def test_corrections_give_each_ticket_its_latest_label_and_text(store: FeedbackStore, db_url: str) -> None:
    store.add([event("1", "billing", text_fields={"subject": "Refund", "body": "charged twice"}),
               event("2", "refund")])
    store.add([event("1", "cancellation")])  # no text this time: the text sent before still goes with it
    rows = {row.ticket_id: row for row in store.corrections()}
    assert rows["1"].label == "cancellation" and rows["1"].text == {"subject": "Refund", "body": "charged twice"}
    assert rows["2"].text is None and rows["2"].received_at.tzinfo is not None
    for_retrain = {c.ticket_id: c for c in corrections_for_retraining(db_url)}
    assert for_retrain["1"].fields == rows["1"].text and for_retrain["1"].received_at.startswith("20")


def test_export_is_a_training_file_that_load_tickets_reads(store: FeedbackStore, tmp_path: Path) -> None:
    store.add([event("T-1", "billing", text_fields={"subject": "Charged twice", "body": "My card was billed twice."}),
               event("T-2", "login_access", text_fields={"subject": "Locked out", "body": "Cannot sign in."}),
               event("T-3", "billing", text_fields={"text": "Invoice is wrong"}),
               event("T-4", "refund")])
    output = tmp_path / "corrections.csv"
    rows, without_text, columns = export_csv(store, output)
    assert (rows, without_text, columns) == (4, 1, ("subject", "body"))
    assert output.stat().st_mode & 0o777 == 0o600  # customers' text: the owner's alone
    tickets, options = load_tickets(output)
    assert options.fields == ("subject", "body")
    assert tickets.labels == ["billing", "login_access", "billing"]  # T-4 has no text: dropped, reported
    assert tickets.ids == ["T-1", "T-2", "T-3"]
    assert "Charged twice" in tickets.texts[0] and "Invoice is wrong" in tickets.texts[2]



def test_export_cells_cannot_run_as_formulas_and_read_back_as_stored(store: FeedbackStore, tmp_path: Path) -> None:
    hostile = {"subject": "=HYPERLINK(\"http://evil.example\",\"click\")", "body": "@SUM(A1) is my total"}
    store.add([event("=1+1", "billing", text_fields=hostile)])
    output = tmp_path / "corrections.csv"
    export_csv(store, output)
    [row] = read_csv(output)
    assert (row["ticket_id"], row["subject"], row["body"]) == ("'=1+1", "'" + hostile["subject"], "'" + hostile["body"])
    tickets, _ = load_tickets(output)  # train reads the cells as they were stored
    assert tickets.ids == ["=1+1"] and tickets.texts[0].startswith(hostile["subject"])
    [correction] = corrections_from_file(output)  # as retrain --corrections does
    assert correction.ticket_id == "=1+1" and correction.fields == hostile


def test_where_the_database_is() -> None:
    assert resolve_url("/srv/f.sqlite") == "sqlite:////srv/f.sqlite"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert default_location("/srv/runs/model") == Path("/srv/runs/model.feedback.sqlite")
    env = os.environ.pop("TICKETCLF_FEEDBACK_DB", None)
    try:
        with pytest.raises(UserError, match="which feedback database"):
            resolve_url()
    finally:
        if env is not None:
            os.environ["TICKETCLF_FEEDBACK_DB"] = env


# ------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def feedback_app(exported_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    database = tmp_path_factory.mktemp("feedback") / "feedback.sqlite"
    return create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                       "FEEDBACK_DB": str(database), "FEEDBACK_FRESHDESK_FIELD": "cf_category",
                       "FEEDBACK_JIRA_FIELD": "customfield_10050"})


def app_store(app: Flask) -> FeedbackStore:
    from service.feedback import EXTENSION

    return app.extensions[EXTENSION].store()


def fresh_id() -> str:
    return uuid.uuid4().hex[:10]


def test_post_feedback_one_and_a_batch(feedback_app: Flask) -> None:
    client, ticket = feedback_app.test_client(), fresh_id()
    body = {"ticket_id": ticket, "label": "Billing", "subject": "Charged twice", "body": "Billed two times.",
            "predicted_label": "billing", "model_version": "3", "confidence": 0.91, "needs_review": False}
    answer = client.post("/feedback", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json() == {"stored": 1, "duplicates": 0, "unchanged": 0,
                                 "results": [{"ticket_id": ticket, "status": "stored"}]}
    assert client.post("/feedback", json=body).get_json()["unchanged"] == 1
    [stored] = app_store(feedback_app).events(ticket)
    assert stored["label"] == "billing"  # the model's spelling
    assert stored["text_fields"] == {"subject": "Charged twice", "body": "Billed two times."}
    assert (stored["confidence"], stored["needs_review"], stored["source"]) == (0.91, False, "api")

    other = fresh_id()
    batch = {"feedback": [{"id": other, "label": "how_to", "event_id": f"{other}-1"},
                          {"ticket_id": other, "label": "how_to", "event_id": f"{other}-1"},
                          {"ticket_id": 42, "label": "bug_report", "text": "The export crashes"}]}
    answer = client.post("/feedback", json=batch).get_json()
    assert (answer["stored"], answer["duplicates"], answer["unchanged"]) == (2, 1, 0)
    assert app_store(feedback_app).events("42")[0]["text_fields"] == {"text": "The export crashes"}


@pytest.mark.parametrize(("body", "status", "named"), [
    ({"label": "billing"}, 422, "ticket_id: Field required"),
    ({"ticket_id": "1"}, 422, "label: Field required"),
    ({"ticket_id": "1", "label": "no-such-queue"}, 422, "label: 'no-such-queue': not a label of the model"),
    ({"ticket_id": "1", "label": "x" * 300, "new_label": True}, 422, "label: String should have at most 256"),
    ({"ticket_id": "1", "label": "billing", "confidence": 2}, 422, "confidence: Input should be less than"),
    ({"ticket_id": "1", "label": "billing", "confidence": "0.9"}, 422, "confidence: Input should be a valid number"),
    ({"ticket_id": "1", "label": "billing", "updated_at": "yesterday"}, 422, "updated_at:"),
    ({"feedback": []}, 422, "feedback: List should have at least 1 item"),
    ({"feedback": [{"ticket_id": "1", "label": "billing"}, {"ticket_id": "2", "label": "nope"}]}, 422,
     "feedback[1].label: 'nope': not a label"),
    ({"feedback": [{"ticket_id": "1", "label": "billing"}, {"label": "billing"}]}, 422, "feedback[1].ticket_id"),
    ({"feedback": [{"ticket_id": "1", "label": "billing"}], "Feedback": [{"ticket_id": "2", "label": "billing"}]},
     422, "'Feedback' and 'feedback' are one key in any case"),  # neither batch is lost
    ({"ticket_id": "1", "Ticket_ID": "2", "label": "billing"}, 422, "'Ticket_ID' and 'ticket_id' are one key"),
    ({"id": "1", "ticket_id": "2", "label": "billing"}, 422, "give the ticket's id once, as 'ticket_id'"),
    ({"ticket_id": "1", "label": "billing", "description": "Charged twice."}, 422,
     "has 'description', which it does not read; send that text as 'subject' or 'body'"),
    ({"feedback": [{"ticket_id": "1", "label": "billing"}, {"ticket_id": "other", "label": "billing",
                                                           "event_id": "taken"}]},
     409, "feedback[1].event_id: event_id 'taken' was stored for ticket 'taker'"),
])
def test_bad_feedback_is_refused_naming_the_field_and_nothing_is_stored(
        feedback_app: Flask, body: dict[str, object], status: int, named: str) -> None:
    feedback_app.test_client().post("/feedback", json={"ticket_id": "taker", "label": "billing", "event_id": "taken"})
    before = len(app_store(feedback_app).events())
    error = error_of(feedback_app.test_client().post("/feedback", json=body), status)
    assert named in error["message"], error
    assert len(app_store(feedback_app).events()) == before


def test_a_note_beside_the_label_is_not_taken_for_ticket_text(feedback_app: Flask) -> None:
    ticket = fresh_id()  # feedback needs no text: a "message" may be the agent's note on the correction
    body = {"ticket_id": ticket, "label": "billing", "message": "moved after a call with the customer"}
    assert feedback_app.test_client().post("/feedback", json=body).get_json()["stored"] == 1
    assert app_store(feedback_app).events(ticket)[0]["text_fields"] is None


def test_a_body_over_the_limit_is_413(feedback_app: Flask) -> None:
    body = {"ticket_id": "1", "label": "billing", "text": "x" * (feedback_app.config["MAX_CONTENT_LENGTH"] + 10)}
    assert error_of(feedback_app.test_client().post("/feedback", json=body), 413)["code"] == "payload_too_large"


def test_a_new_label_is_taught_once_then_accepted(feedback_app: Flask) -> None:
    client, label = feedback_app.test_client(), f"queue-{fresh_id()}"
    assert client.post("/feedback", json={"ticket_id": fresh_id(), "label": label}).status_code == 422
    assert client.post("/feedback", json={"ticket_id": fresh_id(), "label": label, "new_label": True}
                       ).get_json()["stored"] == 1
    ticket = fresh_id()
    assert client.post("/feedback", json={"ticket_id": ticket, "label": label}).get_json()["stored"] == 1
    assert app_store(feedback_app).events(ticket)[0]["new_label"] is True
    # Another spelling is the same queue, stored as first taught, asked for new or not.
    tickets = [fresh_id(), fresh_id()]
    assert client.post("/feedback", json={"feedback": [{"ticket_id": tickets[0], "label": label.upper()},
                                                     {"ticket_id": tickets[1], "label": label.title(),
                                                      "new_label": True}]}).get_json()["stored"] == 2
    assert [app_store(feedback_app).events(t)[0]["label"] for t in tickets] == [label, label]


def test_zendesk_webhook_reads_the_category_and_a_retry_counts_once(feedback_app: Flask) -> None:
    client, ticket = feedback_app.test_client(), fresh_id()
    # updated_at as Zendesk writes it, to the minute
    payload = {"ticket": {"id": ticket, "subject": "Cannot log in", "description": "Password reset fails.",
                          "updated_at": "2026-11-30T10:00Z", "category": "login_access", "status": "open"}}
    assert client.post("/feedback/zendesk", json=payload).get_json()["stored"] == 1
    assert client.post("/feedback/zendesk", json=payload).get_json()["duplicates"] == 1
    [stored] = app_store(feedback_app).events(ticket)
    assert stored["text_fields"] == {"subject": "Cannot log in", "body": "Password reset fails."}
    assert stored["source"] == "zendesk" and stored["occurred_at"] == datetime(2026, 11, 30, 10, tzinfo=timezone.utc)
    # Zendesk's own list of custom fields, and the prediction the helpdesk kept in a field
    listed = {"ticket": {"id": fresh_id(), "custom_fields": [{"id": 1, "value": None},
                                                             {"id": "category", "value": "billing"}],
                         "predicted_label": "refund"}}
    assert client.post("/feedback/zendesk", json=listed).get_json()["stored"] == 1
    missing = error_of(client.post("/feedback/zendesk", json={"ticket": {"id": 5, "category": ""}}), 422)
    assert "ticket.category: missing" in missing["message"]
    for ticket in ({"category": "billing"}, {"id": " ", "category": "billing"}):  # no id, a blank one
        assert "ticket.id" in error_of(client.post("/feedback/zendesk", json={"ticket": ticket}), 422)["message"]
    # A trigger's body sent unrendered: every event would be stored as one ticket, '{{ticket.id}}'.
    placeholder = {"ticket": {"id": "{{ticket.id}}", "category": "billing"}}
    assert error_of(client.post("/feedback/zendesk", json=placeholder), 422)["message"] == (
        "ticket.id: '{{ticket.id}}' is a placeholder the helpdesk did not fill in: check the webhook's body")
    assert error_of(client.post("/feedback/jira", json={"issue": {"key": "{{issue.key}}", "fields": {
        "customfield_10050": "billing"}}}), 422)["message"].startswith("issue.key: '{{issue.key}}' is a placeholder")


def test_freshdesk_and_jira_webhooks(feedback_app: Flask) -> None:
    client, ticket = feedback_app.test_client(), fresh_id()
    freshdesk = {"ticket": {"id": ticket, "subject": "Export", "description": "<p>CSV export is empty</p>",
                            "custom_fields": {"cf_category": "data_export"}}}
    assert client.post("/feedback/freshdesk", json=freshdesk).get_json()["stored"] == 1
    assert app_store(feedback_app).events(ticket)[0]["label"] == "data_export"

    key = f"SD-{fresh_id()}"
    def paragraph(*texts: str) -> dict[str, object]:
        return {"type": "paragraph", "content": [{"type": "text", "text": text} for text in texts]}

    description = {"type": "doc", "content": [paragraph("App", " is slow"), paragraph("Since May")]}
    jira = {"issue": {"id": "10001", "key": key, "fields": {"summary": "Slow", "description": description,
                                                             "updated": "2026-11-30T15:20:11.662+0530",
                                                             "customfield_10050": {"value": "performance"}}}}
    assert client.post("/feedback/jira", json=jira).get_json()["stored"] == 1
    [stored] = app_store(feedback_app).events(key)
    assert stored["label"] == "performance" and stored["source"] == "jira"
    assert stored["text_fields"] == {"subject": "Slow", "body": "App is slow\nSince May"}
    automation_format = {"key": key, "fields": {"summary": "Slow", "customfield_10050": "bug_report"}}
    assert client.post("/feedback/jira", json=automation_format).get_json()["stored"] == 1
    assert "customfield_10050: missing" in error_of(
        client.post("/feedback/jira", json={"issue": {"key": "SD-1", "fields": {}}}), 422)["message"]


def test_metrics_count_agreement_by_version_and_label(feedback_app: Flask) -> None:
    client = feedback_app.test_client()
    served = ctx(feedback_app).model().version

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return metric_values(client.get("/metrics").get_data(as_text=True))

    def gained(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    before = samples()
    client.post("/feedback", json={"feedback": [
        {"ticket_id": fresh_id(), "label": "billing", "predicted_label": "billing", "model_version": served},
        {"ticket_id": fresh_id(), "label": "cancellation", "predicted_label": "billing",
         "model_version": served, "needs_review": True},
        # What a client makes up must not become series of its own.
        {"ticket_id": fresh_id(), "label": "made-up queue 1", "new_label": True,
         "predicted_label": "made-up prediction", "model_version": "made-up version"}]})
    after = samples()
    assert gained(("ticketclf_feedback_total", (("model_version", served), ("outcome", "agreed")))) == 1
    assert gained(("ticketclf_feedback_total", (("model_version", served), ("outcome", "corrected")))) == 1
    assert gained(("ticketclf_feedback_labels_total", (("label", "cancellation"), ("outcome", "corrected")))) == 1
    assert gained(("ticketclf_feedback_review_total", (("needs_review", "true"), ("outcome", "corrected")))) == 1
    assert gained(("ticketclf_feedback_total", (("model_version", "(not served here)"), ("outcome", "corrected")))) == 1
    assert gained(("ticketclf_feedback_labels_total", (("label", "(new label)"), ("outcome", "corrected")))) == 1
    assert gained(("ticketclf_feedback_predicted_total",
                   (("outcome", "corrected"), ("predicted", "(not a model label)")))) == 1
    assert not [key for key in after if "made-up" in str(key)]


def test_feedback_needs_the_api_key_and_text_can_be_left_out(exported_bundle: Path, tmp_path: Path) -> None:
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": ",".join(KEYS), "ACCESS_LOG": False,
                      "FEEDBACK_DB": str(tmp_path / "f.sqlite"), "FEEDBACK_STORE_TEXT": False})
    client, body = app.test_client(), {"ticket_id": "1", "label": "billing", "text": "private words"}
    for path in ("/feedback", "/feedback/zendesk", "/feedback/freshdesk", "/feedback/jira"):
        assert error_of(client.post(path, json=body), 401)["code"] == "unauthorized"
    assert client.post("/feedback", json=body, headers={"X-API-Key": KEYS[0]}).status_code == 200
    assert app_store(app).events("1")[0]["text_fields"] is None


def test_the_helpdesk_label_field_defaults_to_the_column_the_model_was_trained_on(bundle_copy: Path, hand_edit,
                                                                                   tmp_path: Path) -> None:
    # Trained on a Zendesk JSON export's ticket.custom_fields.queue: its webhook sends the custom field "queue".
    hand_edit(bundle_copy, lambda manifest: manifest["data"]["train"].update(label_column="ticket.custom_fields.queue"))
    app = create_app({"BUNDLE": bundle_copy, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                      "FEEDBACK_DB": str(tmp_path / "feedback.sqlite")})
    webhook = {"ticket": {"id": 7, "custom_fields": [{"id": "queue", "value": "billing"}]}}
    assert app.test_client().post("/feedback/zendesk", json=webhook).get_json()["stored"] == 1
    missing = error_of(app.test_client().post("/feedback/freshdesk", json={"ticket": {"id": 8, "group": "x"}}), 422)
    assert missing["message"].startswith("ticket.queue: missing: the ticket has no value for the category field "
                                         "'queue' or 'category' (the column the model was trained on, else")
    # a webhook set up as the docs said before, with "category": still read
    assert app.test_client().post("/feedback/zendesk", json={"ticket": {"id": 9, "category": "billing"}}
                                  ).get_json()["stored"] == 1
    app.config["FEEDBACK_FRESHDESK_FIELD"] = "group"  # a setting names another field
    assert app.test_client().post("/feedback/freshdesk", json={"ticket": {"id": 8, "group": "billing"}}
                                  ).get_json()["stored"] == 1


def test_without_a_usable_database_classification_goes_on_and_feedback_is_503(exported_bundle: Path,
                                                                             tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                      "FEEDBACK_DB": str(blocker / "feedback.sqlite")})
    client = app.test_client()
    assert client.post("/classify", json={"text": "I was charged twice"}).status_code == 200

    def store_errors() -> float:
        values = metric_values(client.get("/metrics").get_data(as_text=True))
        return values[("ticketclf_feedback_store_errors_total", ())]

    before = store_errors()
    answer = client.post("/feedback", json={"ticket_id": "1", "label": "billing"})
    assert store_errors() == before + 1  # an alert on the counter sees a database that never opened
    error = error_of(answer, 503)
    assert error["code"] == "feedback_unavailable" and answer.headers["Retry-After"] == "5"
    assert str(tmp_path) not in error["message"]  # the database's path is for the log, not for callers
    assert f"under request id {answer.headers['X-Request-ID']}" in error["message"]
    with pytest.raises(UserError, match="FEEDBACK_DB"):
        create_app({"BUNDLE": exported_bundle, "THREADS": 1, "FEEDBACK_DB": "mysql://u@h/db"})



def test_feedback_turned_off_is_a_404_that_asks_for_no_retry(exported_bundle: Path) -> None:
    # A 503 with Retry-After had helpdesks retry forever something that can never succeed.
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                      "FEEDBACK_DB": "off"})
    for path in ("/feedback", "/feedback/zendesk"):
        answer = app.test_client().post(path, json={"ticket_id": "1", "label": "billing"})
        assert error_of(answer, 404)["code"] == "feedback_off" and "Retry-After" not in answer.headers


def test_openapi_documents_the_feedback_routes(feedback_app: Flask) -> None:
    document = feedback_app.test_client().get("/openapi.json").get_json()
    assert {"/feedback", "/feedback/zendesk", "/feedback/freshdesk", "/feedback/jira"} <= set(document["paths"])
    assert {"subject", "body", "ticket_id", "label"} <= set(document["components"]["schemas"]["Feedback"]["properties"])


# ------------------------------------------------------------------ CLI


def test_cli_stats_export_and_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "feedback.sqlite"
    with FeedbackStore.open(str(database)) as store:
        store.add([event("1", "billing", predicted_label="billing", model_version="2", needs_review=True,
                         text_fields={"subject": "Refund", "body": "charged twice"}),
                   event("2", "refund", predicted_label="billing", model_version="2"),
                   event("3", "refund")])  # sent without a prediction: out of the agreement, in the count
    assert main(["feedback", "stats", "--db", str(database), "--window", "1h", "--window", "all"]) == 0
    out = capsys.readouterr().out
    assert "window 1h" in out and "agreement 50.0 %" in out and "model version" in out
    assert "  agents' label  TICKETS  WITH A PREDICTION  AGREED  AGREEMENT\n" in out
    assert "  refund               2                  1       0      0.0 %\n" in out
    assert "  needs_review: 100.0 % of the 1 prediction sent with the flag; agreement" in out  # not of 2
    assert main(["feedback", "stats", "--db", f"sqlite:///{database}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"][0]["overall"]["agreed"] == 1
    assert main(["feedback", "export", "--db", str(database), "--output", str(tmp_path / "out.csv")]) == 0
    assert "3 tickets' labels written" in capsys.readouterr().out
    exported = (tmp_path / "out.csv").read_bytes()
    assert main(["feedback", "export", "--db", str(database), "--output", str(tmp_path / "out.csv"),
                 "--since", "2999-01-01T00:00:00Z"]) == 2  # would write no ticket over the three
    assert f"{tmp_path / 'out.csv'} exists; choose another file name, or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.csv").read_bytes() == exported
    assert main(["feedback", "export", "--db", str(database), "--output", str(tmp_path / "none.csv"),
                 "--since", "2999-01-01T00:00:00Z"]) == 0
    assert read_csv(tmp_path / "none.csv") == [] and \
        (tmp_path / "none.csv").read_text().startswith("ticket_id,subject,body,label,received_at")  # as ever
    assert main(["feedback", "export", "--db", str(database), "--output", str(tmp_path / "out.csv"),
                 "--overwrite"]) == 0
    assert "3 tickets' labels written" in capsys.readouterr().out
    assert main(["feedback", "delete", "--db", str(database), "--ticket", "1", "--text-only"]) == 0
    assert capsys.readouterr().out == "text deleted from 1 event (tickets 1)\n"
    assert main(["feedback", "delete", "--db", str(database), "--ticket", "1", "--text-only"]) == 0
    assert "warning: no text was stored of these tickets (their labels are kept)" in capsys.readouterr().err
    assert main(["feedback", "delete", "--db", str(database), "--ticket", "1", "--ticket", "10"]) == 0
    printed = capsys.readouterr()  # one id mistyped among good ones is named
    assert printed.out == "1 event deleted (tickets 1, 10)\n"
    assert "warning: nothing is stored of ticket 10: check the id\n" in printed.err
    assert main(["feedback", "delete", "--db", str(database), "--ticket", "1"]) == 0  # done: nothing left of it
    printed = capsys.readouterr()
    assert printed.out == "0 events deleted (tickets 1)\n"
    assert "warning: nothing is stored of ticket 1: check the id\n" in printed.err
    assert main(["feedback", "stats", "--db", str(tmp_path / "nowhere.sqlite")]) == 2
    assert "no feedback database" in capsys.readouterr().err


def test_cli_finds_a_repository_models_default_database(exported_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.repository import ModelRepository

    repository = ModelRepository(tmp_path / "models")
    repository.add_version("tickets", exported_bundle)
    model = repository.model_dir("tickets")
    assert default_location(model) == model / "feedback.sqlite"
    with FeedbackStore.open(str(model / "feedback.sqlite")) as store:
        store.add([event("1", "billing")])
    env = os.environ.pop("TICKETCLF_FEEDBACK_DB", None)
    try:
        assert main(["feedback", "stats", str(model), "--window", "all"]) == 0
    finally:
        if env is not None:
            os.environ["TICKETCLF_FEEDBACK_DB"] = env
    assert "1 ticket, 0 with a known prediction" in capsys.readouterr().out


# ------------------------------------------------------------------ a real server, killed


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_acknowledged_feedback_survives_the_server_being_killed(kind: str, exported_bundle: Path, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.sqlite'}" if kind == "sqlite" else \
        _new_postgres_database(request.getfixturevalue("postgres"))
    log, acknowledged = tmp_path / "server.log", []
    # Killed outright: the master and both workers at once, no clean shutdown. TMPDIR: what it leaves there.
    with running_server(exported_bundle, log, "--workers", "2", stop=signal.SIGKILL, TICKETCLF_FEEDBACK_DB=url,
                        TICKETCLF_ACCESS_LOG="false", TMPDIR=str(tmp_path)) as port:
        for n in range(40):
            body = {"feedback": [{"ticket_id": f"k-{n}", "label": "billing", "text": f"ticket {n}"}]} if n % 2 \
                else {"ticket_id": f"k-{n}", "label": "how_to", "event_id": f"e-{n}"}
            status, answer = http_call(port, "POST", "/feedback", body)
            assert status == 200, answer
            assert json.loads(answer)["stored"] == 1
            acknowledged.append(f"k-{n}")
    assert len(acknowledged) == 40, log.read_text()
    with FeedbackStore.open(url, create=False) as store:
        assert sorted(e["ticket_id"] for e in store.events()) == sorted(acknowledged)



OPENER = """\
import sys
from classifier.feedback import FeedbackStore
FeedbackStore.open(sys.argv[1], create=True).close()
"""


def test_a_store_opened_while_another_process_holds_the_new_database_waits_for_it(tmp_path: Path) -> None:
    """Gunicorn's workers open the store together and one migrates the new file: switching it to WAL meanwhile
    failed at once ("database is locked", SQLite's busy handler does not cover it), and that worker answered
    503. Here the test holds the lock for a second while two processes open the store."""
    import sqlite3

    path = tmp_path / "feedback.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE placeholder (x)")
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, f"sqlite:///{path}"], cwd=ROOT, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    time.sleep(1.5)  # the openers are trying meanwhile
    holder.execute("COMMIT")
    holder.close()
    results = [(opener.wait(timeout=120), opener.stderr.read()) for opener in openers]  # type: ignore[union-attr]
    assert all(code == 0 for code, _ in results), [error for _, error in results if error]
