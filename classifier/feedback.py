"""The feedback store: the labels agents set on tickets, kept in a real database through SQLAlchemy.

One table, ``feedback_events``: every correction received, never rewritten (except by
:meth:`FeedbackStore.delete`). What a ticket's label *is* is computed from them: the latest event per
ticket, ordered by the ticket's update time when the client sent one (else the time received), then by
arrival. So a later correction supersedes an earlier one, and a late, out-of-order delivery of an older
update does not.

Idempotency: every event gets a key, unique in the table, so a helpdesk that retries a webhook does not
count twice:

- the client's ``event_id`` when it sends one (another ticket or label under an id already stored is refused:
  two integrations numbering alike would otherwise lose events as retries);
- else a hash of ticket id, label and the ticket's ``updated_at``, when sent (a retry repeats it, whenever it
  arrives). A ticket moved to another label and back within one ``updated_at`` (Zendesk's is to the minute)
  repeats it too, and is taken for a retry: only an ``event_id`` tells the two apart;
- else a hash of ticket id, label and the ticket's latest event before it: the same correction posted
  twice in a row is one event, while a ticket moved back to a label it had before is a new one.

An event that would not change the ticket's current label (a ticket-updated webhook that fires on every
comment) is not stored again: it is reported as ``unchanged`` (and fills in the ticket's text if none was
kept). A batch is one transaction: all of it is stored, or nothing.

Databases: a SQLite file by default (WAL journal, ``synchronous=FULL`` so that a commit is on disk before
it returns, a busy timeout for concurrent writers, and ``BEGIN IMMEDIATE`` for writes so that writers queue
instead of failing), or PostgreSQL by URL (``postgresql+psycopg://user:password@host/db``) when several
replicas serve. The schema is versioned: Alembic migrations shipped in ``classifier/migrations`` are applied
when a store is opened (one process at a time; a no-op when the database is up to date).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from classifier.bundle import replace_atomically
from classifier.data import spreadsheet_safe
from classifier.errors import UserError
from classifier.text import into_fields, label_key

if TYPE_CHECKING:
    from classifier.retrain import Correction as RetrainCorrection

log = logging.getLogger(__name__)

DB_VARIABLE = "TICKETCLF_FEEDBACK_DB"
OFF = "off"  # TICKETCLF_FEEDBACK_DB=off: the service stores no feedback (its routes answer 503)
# How far a helpdesk's update time may be ahead of the event's arrival (its clock ahead of ours): further, it
# counts as this far, or a time in the future (a clock far off, a typo) would outrank every later correction.
MAX_CLOCK_AHEAD = timedelta(minutes=5)
DEFAULT_FILE = "feedback.sqlite"  # inside REPO/NAME when serving a repository
MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's transaction before giving up
POSTGRES_CONNECT_TIMEOUT = 10  # seconds
_MIGRATION_LOCK = 7_201_818  # PostgreSQL advisory lock id held while migrating (any constant, ours alone)

# Limits of the columns (and of the API's fields, which name them when exceeded).
MAX_ID = 256
MAX_LABEL = 256
MAX_VERSION = 128

Status = Literal["stored", "duplicate", "unchanged"]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out. SQLite keeps them as naive UTC text (which sorts in time order),
    PostgreSQL as ``timestamp with time zone``."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s"})

# The schema as migration 0001 creates it (tests check that the two agree); change both together, in a new
# migration, never by editing this alone.
events = sa.Table(
    "feedback_events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),  # sha256 hex
    sa.Column("ticket_id", sa.String(MAX_ID), nullable=False),
    sa.Column("label", sa.String(MAX_LABEL), nullable=False),  # the label the agent set
    sa.Column("new_label", sa.Boolean(), nullable=False),  # not a label of the model that served it
    sa.Column("text_fields", sa.JSON(none_as_null=True), nullable=True),  # {field: text} as sent; NULL: none
    sa.Column("predicted_label", sa.String(MAX_LABEL), nullable=True),
    sa.Column("model_version", sa.String(MAX_VERSION), nullable=True),
    sa.Column("confidence", sa.Float(), nullable=True),
    sa.Column("needs_review", sa.Boolean(), nullable=True),
    sa.Column("source", sa.String(32), nullable=False),  # api, zendesk, freshdesk, jira
    sa.Column("event_id", sa.String(MAX_ID), nullable=True),  # the client's own, when sent
    sa.Column("occurred_at", UTCDateTime(), nullable=False),  # the ticket's update time, else received_at
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Index(None, "ticket_id", "occurred_at", "id"),
    sa.Index(None, "received_at"),
)


def as_utc(value: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- what goes in and comes out


class EventIdReused(UserError):
    """An ``event_id`` already stored for another ticket or label: a retry repeats its event, so this is another
    event under the same id (two integrations counting alike?), which would otherwise be dropped as a retry."""

    def __init__(self, event: FeedbackEvent, ticket_id: str, label: str) -> None:
        self.index = 0  # the event's place in its batch
        super().__init__(f"event_id {event.event_id!r} was stored for ticket {ticket_id!r} with label {label!r}; "
                         f"this event (ticket {event.ticket_id!r}, label {event.label!r}) reuses it: give each "
                         "event its own id")


@dataclass(frozen=True)
class FeedbackEvent:
    """One correction as a client sends it: the ticket, the label an agent set, optionally its text and the
    prediction the agent saw."""

    ticket_id: str
    label: str
    text_fields: Mapping[str, str] | None = None  # the model's fields (or "text"), only those sent
    predicted_label: str | None = None
    model_version: str | None = None
    confidence: float | None = None
    needs_review: bool | None = None
    new_label: bool = False
    event_id: str | None = None
    updated_at: datetime | None = None  # the ticket's update time as the helpdesk says
    source: str = "api"


@dataclass(frozen=True)
class Outcome:
    """What became of one event, with the prediction it is judged against: its own, or the one an earlier
    event of the ticket brought (a webhook carries only the agent's label)."""

    ticket_id: str
    label: str
    status: Status
    predicted_label: str | None
    model_version: str | None
    needs_review: bool | None
    new_label: bool

    @property
    def agreed(self) -> bool | None:
        """Whether the model predicted the agent's label; None when no prediction is known."""
        return None if self.predicted_label is None else self.predicted_label == self.label


class Correction(NamedTuple):
    """A ticket's current label (its latest event) for retraining, with the latest text kept for it (None if
    none was ever sent) and when that label was received."""

    ticket_id: str
    label: str
    text: dict[str, str] | None
    received_at: datetime


# ---------------------------------------------------------------- where the database is


def database_url(value: str | os.PathLike[str]) -> str:
    """A URL as given (``sqlite:///...``, ``postgresql+psycopg://...``), or a file path, as a SQLite URL."""
    text = os.fspath(value)
    if "://" in text:
        return text
    return f"sqlite:///{os.path.abspath(text)}"


def is_off(setting: str | None) -> bool:
    """Whether a FEEDBACK_DB setting turns feedback off."""
    return bool(setting) and str(setting).strip().lower() == OFF


def feedback_url(configured: str | None, bundle: str | os.PathLike[str], *, starting: bool = False) -> str | None:
    """The feedback database's URL from the service's ``FEEDBACK_DB`` setting (None: feedback is off), beside
    ``bundle`` where not set; a mistake in the setting (not a URL, no driver) is a :class:`UserError` that stops
    the server in one line, before its workers start (``service.server``) and in each (``service.feedback``).

    ``starting`` (a server starting): also refuse a SQLite file in a folder that is not there (a typo would make
    it, as root even at /) or inside a bundle, which the service reloads whenever its files change."""
    if is_off(configured):
        return None
    url = database_url(configured or default_location(bundle))
    try:
        parsed = check_url(url)
        if starting and parsed.get_backend_name() == "sqlite":
            _check_sqlite_place(Path(os.path.abspath(parsed.database or "")))
    except UserError as error:
        raise UserError(f"FEEDBACK_DB (TICKETCLF_FEEDBACK_DB): {error}") from None
    return url


def _check_sqlite_place(path: Path) -> None:
    if not path.parent.is_dir():
        raise UserError(f"feedback database {path}: its folder {path.parent} does not exist; create it, or "
                        "correct the path")
    from classifier.bundle import is_bundle

    folder = Path(os.path.realpath(path.parent))
    inside = next((bundle for bundle in (folder, *folder.parents) if is_bundle(bundle)), None)
    if inside is not None:
        raise UserError(f"feedback database {path}: is inside the model bundle {inside}, which the service "
                        "reloads whenever its files change; put it outside (unset, it goes beside the bundle)")


def default_location(model: str | os.PathLike[str]) -> Path:
    """Where the service keeps feedback when ``TICKETCLF_FEEDBACK_DB`` is not set: ``REPO/NAME/feedback.sqlite``
    for a model in a repository, else a file beside the bundle directory, ``BUNDLE.feedback.sqlite`` (never
    inside it: the service reloads a bundle whose files change)."""
    from classifier.repository import is_model_dir

    path = Path(os.path.abspath(model))
    return path / DEFAULT_FILE if is_model_dir(path) else path.with_name(f"{path.name}.{DEFAULT_FILE}")


def resolve_url(db: str | None = None, model: str | os.PathLike[str] | None = None) -> str:
    """The database to use: ``db`` (a URL or a SQLite path), else ``$TICKETCLF_FEEDBACK_DB``, else the default
    place for ``model`` (what ``ticketclf serve MODEL`` uses)."""
    chosen = db or os.environ.get(DB_VARIABLE)
    if chosen:
        return database_url(chosen)
    if model is not None:
        return database_url(default_location(model))
    raise UserError(f"which feedback database? give --db URL (or a SQLite file), set {DB_VARIABLE}, or name the "
                    "model the service serves (REPO/NAME or a bundle directory) for its default database")


def shown(url: str | URL) -> str:
    """A URL fit for messages and logs: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


# ---------------------------------------------------------------- the store


class FeedbackStore:
    """The feedback database, migrated to the current schema. Thread-safe (a connection pool); open one per
    process (after a fork: gunicorn workers each open their own)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self._sqlite = engine.dialect.name == "sqlite"
        # Writes on SQLite take the write lock at BEGIN (IMMEDIATE): a deferred transaction that reads and
        # then writes fails at once ("database is locked") when another writer got there in between.
        self._writer = engine.execution_options(ticketclf_begin="IMMEDIATE") if self._sqlite else engine

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> FeedbackStore:
        """Connect and bring the schema up to date. ``create=False`` refuses a SQLite file that does not exist
        (the CLI reading a database must not make an empty one by a typo)."""
        engine = _engine(url, create=create)
        store = cls(engine)
        try:
            store.migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return shown(self.url)

    # ------------------------------------------------------------ schema

    def migrate(self) -> None:
        """``alembic upgrade head``, applied only if the database is behind; concurrent openers (workers
        starting together) take turns: SQLite's write lock, or an advisory lock on PostgreSQL."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = _alembic_config()
        head = ScriptDirectory.from_config(config).get_current_head()
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        with self._writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
            current = MigrationContext.configure(connection).get_current_revision()
            if current == head:
                return  # another process migrated while this one waited
            known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
            if current is not None and current not in known:
                raise UserError(f"{self.describe()}: the feedback database's schema is at revision {current}, "
                                "which this version of ticketclf does not know (a newer one wrote it); upgrade "
                                "ticketclf")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            log.info("feedback database %s migrated from %s to %s", self.describe(), current or "empty", head)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    # ------------------------------------------------------------ writing

    def add(self, batch: Sequence[FeedbackEvent], *, received_at: datetime | None = None) -> list[Outcome]:
        """Store a batch in one transaction (all or nothing); the outcome of each event, in order. Returns
        once the commit is durable."""
        received = as_utc(received_at or now())
        with self._writer.begin() as connection:
            outcomes = []
            for index, event in enumerate(batch):
                try:
                    outcomes.append(self._add_one(connection, event, received))
                except EventIdReused as error:
                    error.index = index
                    raise
            return outcomes

    def _add_one(self, connection: Connection, event: FeedbackEvent, received: datetime) -> Outcome:
        latest = connection.execute(
            sa.select(events.c.id, events.c.label, events.c.occurred_at, events.c.text_fields.is_(None))
            .where(events.c.ticket_id == event.ticket_id)
            .order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(1)).first()
        key = idempotency_key(event, latest.id if latest else None)
        prediction = self._prediction(connection, event)

        def outcome(status: Status) -> Outcome:
            return Outcome(event.ticket_id, event.label, status, *prediction, event.new_label)

        if self._stored_already(connection, event, key):
            return outcome("duplicate")
        if latest is not None and latest.label == event.label:
            if event.text_fields and latest[3]:  # the ticket's text arrives with a repeat: keep it
                connection.execute(events.update().where(events.c.id == latest.id)
                                   .values(text_fields=dict(event.text_fields)))
            return outcome("unchanged")
        values = {
            "idempotency_key": key, "ticket_id": event.ticket_id, "label": event.label,
            "new_label": event.new_label, "text_fields": dict(event.text_fields) if event.text_fields else None,
            "predicted_label": event.predicted_label, "model_version": event.model_version,
            "confidence": event.confidence, "needs_review": event.needs_review, "source": event.source,
            "event_id": event.event_id,
            "occurred_at": min(as_utc(event.updated_at), received + MAX_CLOCK_AHEAD) if event.updated_at else received,
            "received_at": received,
        }
        inserted = connection.execute(_insert_ignoring_duplicates(connection).values(**values))
        if inserted.rowcount:
            return outcome("stored")
        # Another process stored the same key since the check above (PostgreSQL; SQLite writers queue): this
        # event's retry, or another event under its event_id, refused as above.
        self._stored_already(connection, event, key)
        return outcome("duplicate")

    @staticmethod
    def _stored_already(connection: Connection, event: FeedbackEvent, key: str) -> bool:
        """Whether an event of ``key`` is stored: this one's retry. Under the client's ``event_id``, another ticket
        or label is another event, refused (:class:`EventIdReused`) rather than dropped as a retry."""
        stored = connection.execute(sa.select(events.c.ticket_id, events.c.label)
                                    .where(events.c.idempotency_key == key)).first()
        if stored is not None and event.event_id is not None and \
                (stored.ticket_id, label_key(stored.label)) != (event.ticket_id, label_key(event.label)):
            raise EventIdReused(event, stored.ticket_id, stored.label)
        return stored is not None

    @staticmethod
    def _prediction(connection: Connection, event: FeedbackEvent) -> tuple[str | None, str | None, bool | None]:
        """The prediction ``event`` is judged against: its own, else the latest one stored for the ticket."""
        if event.predicted_label is not None:
            return event.predicted_label, event.model_version, event.needs_review
        earlier = connection.execute(
            sa.select(events.c.predicted_label, events.c.model_version, events.c.needs_review)
            .where(events.c.ticket_id == event.ticket_id, events.c.predicted_label.is_not(None))
            .order_by(events.c.occurred_at.desc(), events.c.id.desc()).limit(1)).first()
        return (earlier.predicted_label, earlier.model_version, earlier.needs_review) if earlier else \
            (None, event.model_version, event.needs_review)

    def latest_text_fields(self) -> list[str]:
        """The fields of the text stored last (none stored: empty), in the order they were sent."""
        with self.engine.connect() as connection:
            query = sa.select(events.c.text_fields).where(events.c.text_fields.is_not(None)) \
                .order_by(events.c.id.desc()).limit(1)
            return list(connection.execute(query).scalar() or {})

    def stored(self, ticket_ids: Sequence[str]) -> set[str]:
        """Which of the tickets have an event stored."""
        with self.engine.connect() as connection:
            query = sa.select(events.c.ticket_id).where(events.c.ticket_id.in_(list(ticket_ids))).distinct()
            return set(connection.execute(query).scalars())

    def delete(self, ticket_ids: Sequence[str], *, text_only: bool = False) -> int:
        """Remove the tickets' events (or only their text); how many events were changed. On SQLite the freed
        pages are overwritten (``secure_delete``) and the journal is checkpointed, so the text is gone from the
        files too; PostgreSQL frees the rows at its next (auto)vacuum."""
        ids = list(dict.fromkeys(ticket_ids))
        with self._writer.begin() as connection:
            if text_only:
                result = connection.execute(events.update().where(events.c.ticket_id.in_(ids),
                                                                  events.c.text_fields.is_not(None))
                                            .values(text_fields=None))
            else:
                result = connection.execute(events.delete().where(events.c.ticket_id.in_(ids)))
        if self._sqlite:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return result.rowcount

    # ------------------------------------------------------------ reading

    def _latest(self, *, predicted_only: bool = False) -> sa.Subquery:
        """Each ticket's latest event (of those with a prediction, if ``predicted_only``), as a subquery."""
        rank = sa.func.row_number().over(partition_by=events.c.ticket_id,
                                         order_by=(events.c.occurred_at.desc(), events.c.id.desc()))
        query = sa.select(*events.c, rank.label("rank"))
        if predicted_only:
            query = query.where(events.c.predicted_label.is_not(None))
        ranked = query.subquery()
        return sa.select(ranked).where(ranked.c.rank == 1).subquery()

    def corrections(self, since: datetime | None = None) -> list[Correction]:
        """Every ticket's current label (its latest event), oldest first, with the latest text kept for the
        ticket (None if none was ever sent) and when that label was received; only labels received at or after
        ``since`` if given. What ``ticketclf retrain`` and ``feedback export`` read."""
        latest = self._latest()
        rank = sa.func.row_number().over(partition_by=events.c.ticket_id,
                                         order_by=(events.c.occurred_at.desc(), events.c.id.desc()))
        texted = sa.select(events.c.ticket_id, events.c.text_fields, rank.label("rank")) \
            .where(events.c.text_fields.is_not(None)).subquery()
        query = (sa.select(latest.c.ticket_id, latest.c.label, texted.c.text_fields, latest.c.received_at)
                 .join_from(latest, texted, sa.and_(texted.c.ticket_id == latest.c.ticket_id, texted.c.rank == 1),
                            isouter=True)
                 .order_by(latest.c.received_at, latest.c.id))
        if since is not None:
            query = query.where(latest.c.received_at >= as_utc(since))
        with self.engine.connect() as connection:
            return [Correction(row.ticket_id, row.label, dict(row.text_fields) if row.text_fields else None,
                               row.received_at) for row in connection.execute(query)]

    def events(self, ticket_id: str | None = None) -> list[dict[str, Any]]:
        """Stored events, in arrival order (all, or one ticket's): for inspection and tests."""
        query = sa.select(events).order_by(events.c.id)
        if ticket_id is not None:
            query = query.where(events.c.ticket_id == ticket_id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def taught_labels(self) -> set[str]:
        """Labels received as new (not the model's) so far: accepted again without asking."""
        with self.engine.connect() as connection:
            return set(connection.scalars(sa.select(events.c.label).where(events.c.new_label).distinct()))

    def stats(self, windows: Sequence[Window], at: datetime | None = None) -> list[WindowStats]:
        """Agreement of the model with the agents, per window (tickets whose current label arrived in it)."""
        latest, predicted = self._latest(), self._latest(predicted_only=True)
        query = sa.select(latest.c.ticket_id, latest.c.label, latest.c.new_label, latest.c.received_at,
                          predicted.c.predicted_label, predicted.c.model_version, predicted.c.needs_review) \
            .join_from(latest, predicted, predicted.c.ticket_id == latest.c.ticket_id, isouter=True)
        at = as_utc(at or now())
        earliest = min((at - w.length for w in windows if w.length is not None), default=None)
        if earliest is not None and all(w.length is not None for w in windows):
            query = query.where(latest.c.received_at >= earliest)
        with self.engine.connect() as connection:
            rows = list(connection.execute(query))
        return [_window_stats(window, at, rows) for window in windows]


def idempotency_key(event: FeedbackEvent, latest_id: int | None) -> str:
    """The event's key (see the module's docstring): sha256 of what identifies it."""
    if event.event_id is not None:
        identity = ["event", event.event_id]
    elif event.updated_at is not None:
        identity = ["update", event.ticket_id, event.label, as_utc(event.updated_at).isoformat()]
    else:
        identity = ["after", event.ticket_id, event.label, str(latest_id or 0)]
    return hashlib.sha256("\x00".join(identity).encode("utf-8")).hexdigest()


def _insert_ignoring_duplicates(connection: Connection) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(events).on_conflict_do_nothing(index_elements=["idempotency_key"])
    if connection.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(events).on_conflict_do_nothing(index_elements=["idempotency_key"])
    return events.insert()  # other databases: a concurrent duplicate fails the batch, which the client retries


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def check_url(url: str) -> URL:
    """The parsed URL of a database the store can use; a mistake in it (not a URL, another database, no
    driver installed, an in-memory SQLite) is a :class:`UserError` naming it. A file path is a SQLite file."""
    try:
        parsed = make_url(database_url(url))
    except ArgumentError:
        raise UserError(f"feedback database: {url!r} is not a database URL (e.g. sqlite:////var/lib/ticketclf/"
                        "feedback.sqlite or postgresql+psycopg://user:password@host/db)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserError(f"feedback database {shown(parsed)}: SQLite or PostgreSQL only")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise UserError(f"feedback database {shown(parsed)}: give a SQLite file (feedback must outlive the "
                            "process)")
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as error:
        raise UserError(f"feedback database {shown(parsed)}: {error}; for PostgreSQL install "
                        "'ticket-classifier[postgres]' and use a postgresql+psycopg:// URL") from None
    return parsed


def _engine(url: str, *, create: bool) -> Engine:
    parsed = check_url(url)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not create and not path.is_file():
            raise UserError(f"no feedback database at {path}")
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"feedback database {path}: cannot create its directory ({error})") from None
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif parsed.get_driver_name() == "psycopg":
        options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT}
    engine = sa.create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_settings(engine)
    return engine


def _sqlite_settings(engine: Engine) -> None:
    """WAL, durable commits, secure deletion; SQLAlchemy (not the sqlite3 module) issues BEGIN, so that
    transactions cover reads and DDL too, and writers can ask for BEGIN IMMEDIATE."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # sqlite3's own transaction handling off
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit: a 2xx is on disk
            cursor.execute("PRAGMA secure_delete=ON")  # deleted text is overwritten, not left in free pages
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("ticketclf_begin", "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting for the lock: SQLite answers "database is locked" at once,
    without its busy handler, while another process holds the database (workers starting together, one
    of them migrating a new file), and a worker that gave up there answered 503 until its next retry."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def open_store(db: str | None = None, model: str | os.PathLike[str] | None = None, *,
               create: bool = False) -> Iterator[FeedbackStore]:
    """The store for the CLI and scripts (see :func:`resolve_url`), closed on exit."""
    store = FeedbackStore.open(resolve_url(db, model), create=create)
    try:
        yield store
    finally:
        store.close()


def corrections(db: str | None = None, model: str | os.PathLike[str] | None = None, *,
                since: datetime | None = None) -> list[Correction]:
    """Every ticket's current label with its latest text, from the database ``db`` (a URL or a SQLite path;
    default ``$TICKETCLF_FEEDBACK_DB``, else ``model``'s default database)."""
    with open_store(db, model) as store:
        return store.corrections(since)


def corrections_for_retraining(db: str | None = None, model: str | os.PathLike[str] | None = None, *,
                               since: datetime | None = None) -> list[RetrainCorrection]:
    """:func:`corrections` as ``ticketclf retrain --feedback DB`` takes them (``classifier.retrain.Correction``)."""
    from classifier.retrain import Correction as RetrainCorrection

    return [RetrainCorrection(row.ticket_id, row.label, row.text, row.received_at.isoformat())
            for row in corrections(db, model, since=since)]


# ---------------------------------------------------------------- online accuracy


_WINDOW = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Window:
    name: str  # as given: 1h, 7d, all
    length: timedelta | None  # None: all time

    @classmethod
    def parse(cls, text: str) -> Window:
        text = text.strip().lower()
        if text == "all":
            return cls("all", None)
        match = _WINDOW.fullmatch(text)
        if not match or int(match[1]) == 0:
            raise UserError(f"window {text!r}: a number and a unit, e.g. 30m, 1h, 1d, 2w, or 'all'")
        return cls(text, timedelta(**{_UNITS[match[2]]: int(match[1])}))


@dataclass
class Agreement:
    """Tickets with a known prediction, and how many of them the agents left at the predicted label."""

    tickets: int = 0
    predicted: int = 0
    agreed: int = 0

    @property
    def rate(self) -> float | None:
        return self.agreed / self.predicted if self.predicted else None

    def add(self, agreed: bool | None) -> None:
        self.tickets += 1
        if agreed is not None:
            self.predicted += 1
            self.agreed += agreed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.rate}


@dataclass
class WindowStats:
    window: str
    since: datetime | None
    overall: Agreement = field(default_factory=Agreement)
    per_label: dict[str, Agreement] = field(default_factory=dict)  # by the agents' label (the model's recall)
    per_predicted: dict[str, Agreement] = field(default_factory=dict)  # by predicted label (its precision)
    per_model: dict[str, Agreement] = field(default_factory=dict)  # by the version that predicted
    needs_review: Agreement = field(default_factory=Agreement)  # predictions flagged for review
    confident: Agreement = field(default_factory=Agreement)  # predictions not flagged: auto-routing precision
    review_known: int = 0  # tickets whose prediction says whether it needed review
    new_labels: Counter[str] = field(default_factory=Counter)

    @property
    def needs_review_share(self) -> float | None:
        return self.needs_review.tickets / self.review_known if self.review_known else None

    def predicted_distribution(self) -> dict[str, float]:
        total = self.overall.predicted
        return {label: a.tickets / total for label, a in sorted(self.per_predicted.items(),
                                                                  key=lambda item: -item[1].tickets)}

    def to_dict(self) -> dict[str, Any]:
        def table(groups: dict[str, Agreement]) -> dict[str, Any]:
            return {name: groups[name].to_dict() for name in sorted(groups)}

        return {"window": self.window, "since": self.since.isoformat() if self.since else None,
                "overall": self.overall.to_dict(), "per_label": table(self.per_label),
                "per_model_version": table(self.per_model), "per_predicted_label": table(self.per_predicted),
                "predicted_distribution": self.predicted_distribution(),
                "needs_review": {"known": self.review_known, "flagged": self.needs_review.tickets,
                                 "share": self.needs_review_share,
                                 "agreement_when_flagged": self.needs_review.rate,
                                 "agreement_when_not_flagged": self.confident.rate},
                "new_labels": dict(self.new_labels)}


def _window_stats(window: Window, at: datetime, rows: Sequence[Any]) -> WindowStats:
    since = at - window.length if window.length is not None else None
    stats = WindowStats(window.name, since)
    for row in rows:
        if since is not None and row.received_at < since:
            continue
        agreed = None if row.predicted_label is None else row.predicted_label == row.label
        stats.overall.add(agreed)
        stats.per_label.setdefault(row.label, Agreement()).add(agreed)
        if row.predicted_label is not None:
            stats.per_predicted.setdefault(row.predicted_label, Agreement()).add(agreed)
            stats.per_model.setdefault(row.model_version or "unknown", Agreement()).add(agreed)
        if row.needs_review is not None and row.predicted_label is not None:
            stats.review_known += 1
            (stats.needs_review if row.needs_review else stats.confident).add(agreed)
        if row.new_label:
            stats.new_labels[row.label] += 1
    return stats


# ---------------------------------------------------------------- a training file


def export_csv(store: FeedbackStore, output: str | os.PathLike[str], *, label_column: str = "label",
               since: datetime | None = None) -> tuple[int, int, tuple[str, ...]]:
    """Write the corrections as a training file, one row per ticket (its current label): ``ticket_id``, the
    text fields, the label and ``received_at``. What ``ticketclf train`` reads (it leaves out the rows of
    tickets whose text was never sent) and ``ticketclf retrain --corrections`` (which matches those to the
    export by ticket id). Returns (rows, rows without text, text columns). The file is replaced whole."""
    rows = store.corrections(since)
    # The columns of the text stored; with none since ``since``, of the text stored last: an export on a
    # schedule keeps its header when a period brought nothing.
    keys = list(dict.fromkeys(key for row in rows for key in row.text or {})) or store.latest_text_fields()
    # A ticket sent as one 'text' beside others sent by field: its text goes to the last field (the body).
    columns = tuple(key for key in keys if key != "text") or ("text",)
    reserved = {"ticket_id", "received_at", label_column} & set(columns)
    if reserved:
        raise UserError(f"the text fields {sorted(reserved)} collide with the export's own columns; choose "
                        "another --label-column")
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["ticket_id", *columns, label_column, "received_at"])
            for row in rows:  # cells customers or agents wrote, escaped for spreadsheets (training undoes it)
                text = into_fields(row.text or {}, columns)
                writer.writerow([*map(spreadsheet_safe, (row.ticket_id, *(text[column] for column in columns),
                                                         row.label)), row.received_at.isoformat()])

    replace_atomically(Path(output), write, private=True)  # customers' ticket text
    return len(rows), sum(row.text is None for row in rows), columns
