"""A model repository: numbered versions of a model, and which one serves.

Layout (the convention of TensorFlow Serving and Triton, with MLflow-style aliases)::

    REPO/NAME/1/, 2/, 3/ ...   each an ordinary bundle (what 'ticketclf train --output' writes)
    REPO/NAME/aliases.json     which version is the champion (it serves) and the challenger, plus the
                               champions before it, for rollback
    REPO/NAME/history.jsonl    append-only, one JSON line per add, promote, rollback, remove (and the
                               decisions a retrain records with :meth:`ModelRepository.record`)
    REPO/NAME/.lock            held (flock) by writers while they change the state
    REPO/NAME/.incoming/       versions being built; invisible until renamed into place

Why it is safe to read while others write, without a lock:

- a version appears by one rename of a finished, fsynced directory, so nobody sees half a bundle; a
  build that crashes leaves only a hidden directory under ``.incoming``, removed by the next add;
- ``aliases.json`` is replaced whole (temporary file, fsync, ``os.replace``), so it is the old or the
  new choice, never a mix.

Writers (two retrains, a promote during a retrain) take an exclusive ``flock`` on ``.lock`` for the
milliseconds it takes to change the state, so version numbers are distinct and never reused (not even
a removed version's) and no alias change is lost. A build itself (training) runs unlocked.

A server polls :meth:`ModelRepository.serving_state` (one small file read) and swaps models when the
version it returns differs from the one it serves.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from classifier.bundle import MANIFEST, fsync, is_bundle, read_manifest, write_text_atomic
from classifier.errors import UserError, one_line
from classifier.manifest import Manifest

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
INCOMING_DIR = ".incoming"
BUILDING_LOCK = "building.lock"  # inside each .incoming/ directory, held while its version is built
CHAMPION = "champion"  # the version that serves
CHALLENGER = "challenger"  # the newest version not promoted
# The evaluation a version's figures come from: 'ticketclf evaluate REPO/NAME/N --output REPO/NAME/N/reports/evaluation'
EVALUATION_REPORT = Path("reports") / "evaluation" / "report.json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Aliases(BaseModel):
    """``aliases.json``: the serving choice of one model. Written only under the lock, replaced whole."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    aliases: dict[str, int] = Field(default_factory=dict)  # alias -> version; the champion serves
    previous_champions: list[int] = Field(default_factory=list)  # rollback goes back through them, latest last
    last_version: int = 0  # the highest number ever given, so that no number means two models
    updated_at: str = ""


class Event(BaseModel):
    """One line of ``history.jsonl``. Fields beyond these (a retrain's figures) are kept as written."""

    model_config = ConfigDict(extra="allow")

    time: str
    action: str  # add, promote, rollback, remove, or what a retrain records (e.g. "keep")
    version: int | None = None  # the version acted on
    champion_before: int | None = None
    champion_after: int | None = None
    reason: str = ""
    user: str = ""
    host: str = ""
    details: dict[str, Any] = Field(default_factory=dict)  # e.g. a retrain's figures for both models


class Evaluation(BaseModel):
    """The headline of a version's evaluation report (report.json's ``metrics``)."""

    tickets: int
    accuracy: float
    macro_f1: float


class _Report(BaseModel):
    metrics: Evaluation


@dataclass(frozen=True)
class Version:
    """One version of a model: a bundle directory."""

    model: str
    number: int
    path: Path

    def manifest(self) -> Manifest:
        return read_manifest(self.path)

    def evaluation(self) -> Evaluation | None:
        """The figures of :data:`EVALUATION_REPORT` if the version has one (None if absent or unreadable)."""
        path = self.path / EVALUATION_REPORT
        try:
            return _Report.model_validate_json(path.read_bytes()).metrics
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as error:
            log.warning("%s: not an evaluation report (%s)", path, one_line(error))
            return None


@dataclass(frozen=True)
class ServingState:
    """What serves: compare ``version`` with the one loaded to know whether to swap."""

    version: int
    path: Path


class VersionSummary(BaseModel):
    """A version as ``models list`` and ``models show`` present it."""

    version: int
    path: str
    aliases: list[str]
    serving: bool
    created_at: str | None = None
    data_sha256: str | None = None  # of the training file's bytes
    train_rows: int | None = None
    validation_accuracy: float | None = None
    validation_macro_f1: float | None = None
    engine: str | None = None  # the model the bundle serves: torch until exported, then int8 or fp32
    evaluation: Evaluation | None = None
    problem: str | None = None  # why the manifest could not be read


class ModelRepository:
    """Models under ``root``, each ``root/NAME/VERSION/``. Methods that read take no lock; those that
    change the state take the model's lock briefly. Problems a person can fix raise :class:`UserError`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ reading

    def model_dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise UserError(f"model name {name!r}: letters, digits, '.', '_' and '-' only, starting with a "
                            "letter or digit")
        return self.root / name

    def versions(self, name: str) -> list[Version]:
        """The model's versions, oldest first (none if the model does not exist)."""
        directory = self.model_dir(name)
        numbers = sorted(int(p.name) for p in directory.iterdir() if _is_version_dir(p)) if directory.is_dir() else []
        return [Version(name, number, directory / str(number)) for number in numbers]

    def version(self, name: str, ref: int | str) -> Version:
        """A version by number (``3`` or ``"3"``) or by alias (``"champion"``)."""
        aliases = self._state(name).aliases  # the model exists
        if isinstance(ref, str) and not ref.isdigit():
            if ref not in aliases:
                known = ", ".join(f"{alias} (version {number})" for alias, number in aliases.items()) or "none"
                raise UserError(f"{self.model_dir(name)}: no alias {ref!r}; aliases: {known}")
            ref = aliases[ref]
        number = int(ref)
        path = self.model_dir(name) / str(number)
        if not _is_version_dir(path):
            known = ", ".join(str(v.number) for v in self.versions(name)) or "none"
            raise UserError(f"{self.model_dir(name)}: no version {number}; versions: {known}")
        return Version(name, number, path)

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._state(name).aliases)

    def champion(self, name: str) -> Version:
        return self.version(name, CHAMPION)

    def resolve(self, name: str, alias: str = CHAMPION) -> Path:
        """The bundle directory of ``alias`` (by default the one that serves)."""
        return self.version(name, alias).path

    def serving_state(self, name: str) -> ServingState:
        """The version that serves, from one read of ``aliases.json`` (no lock: the file is replaced
        whole). A server polls this every few seconds, and on SIGHUP, and loads ``path`` when ``version``
        differs from the one it serves; a promotion or rollback changes ``version``."""
        state = self._state(name)
        if CHAMPION not in state.aliases:
            raise UserError(f"{self.model_dir(name)}: no version serves; promote one")
        number = state.aliases[CHAMPION]
        return ServingState(number, self.model_dir(name) / str(number))

    def history(self, name: str) -> list[Event]:
        """The model's events, oldest first. A line cut short by a crash is passed over."""
        self._state(name)  # the model exists
        path = self.model_dir(name) / HISTORY_FILE
        events = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [], 1):
            try:
                events.append(Event.model_validate_json(line))
            except ValidationError:
                if line.strip():
                    log.warning("%s, line %d: not an event; passed over", path, number)
        return events

    def describe(self, name: str) -> list[VersionSummary]:
        """Every version with its figures and aliases, oldest first."""
        state = self._state(name)
        return [self.summary(version, state.aliases) for version in self.versions(name)]

    def summary(self, version: Version, aliases: Mapping[str, int] | None = None) -> VersionSummary:
        aliases = self._state(version.model).aliases if aliases is None else aliases
        names = [alias for alias, number in aliases.items() if number == version.number]
        summary = VersionSummary(version=version.number, path=str(version.path), aliases=names,
                                 serving=CHAMPION in names, evaluation=version.evaluation())
        try:
            manifest = version.manifest()
        except UserError as error:
            summary.problem = str(error)
            return summary
        train = manifest.data.train
        summary.created_at = manifest.created_at
        summary.data_sha256 = train.sha256 if train else None
        summary.train_rows = train.rows_used if train else None
        summary.validation_accuracy = manifest.served_validation_accuracy
        summary.validation_macro_f1 = manifest.served_validation_macro_f1  # of the same model as the accuracy
        summary.engine = manifest.engine
        return summary

    # ------------------------------------------------------------ writing

    def add_version(self, name: str, source: str | Path | Callable[[Path], object], *, reason: str = "",
                    details: Mapping[str, Any] | None = None) -> Version:
        """Add a version from a finished bundle directory (copied) or from ``source(path)``, a build that
        creates the bundle at ``path`` (e.g. ``lambda path: train(data, path)``). The first version becomes
        the champion, so that something serves; later ones become the challenger until promoted.

        The build runs in a hidden directory without the lock; the version gets its number and appears
        (one rename) only once the build has finished and left a readable bundle."""
        directory = self.model_dir(name)
        if is_bundle(directory):  # serve would take the folder for the repository and serve its champion instead
            raise UserError(f"{directory}: is a model bundle, not a model in a repository; give REPO/NAME in another "
                            "folder, e.g. models/tickets")
        if not callable(source):
            _check_source(Path(source), directory)
        with self.scratch(name) as staging:
            target = staging / name  # train() names the bundle after its directory: the model's name
            if callable(source):
                source(target)
            else:  # the files themselves: a version must outlive the folder it came from, links and all
                shutil.copytree(source, target, symlinks=False)  # a link to nothing: the CLI says it in one line
            try:
                read_manifest(target)
            except UserError as error:
                raise UserError(f"{directory}: the new version is not a bundle ({error}); nothing was added") from None
            if not callable(source) and (problem := _defects(target)):  # the first version serves at once:
                problem = problem.replace(str(target), str(source))  # the copy's path: named as the user's
                raise UserError(f"{source}: not added: {problem}; 'ticketclf bundle verify {source}' checks it")
            _fsync_tree(target)
            with self._lock(name):
                state = self._state(name, missing_ok=True)
                number = max([state.last_version, *(v.number for v in self.versions(name))]) + 1
                os.rename(target, directory / str(number))
                fsync(directory)
                champion = state.aliases.get(CHAMPION)
                state.aliases[CHALLENGER if champion is not None else CHAMPION] = number
                state.last_version = number
                self._commit(name, state, "add", number, champion, reason or (
                    "first version: it serves" if champion is None else "new version: the challenger"), details)
        return Version(name, number, directory / str(number))

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A private directory in the model's ``.incoming``, removed on exit. One that a killed process left is
        removed when the next one is made (by a training into the repository, ``models add`` or ``retrain``),
        since its building lock is no longer held: new versions are built there, and retrain keeps the ticket
        text it trains on there, not in a /tmp nothing cleans."""
        incoming = self.model_dir(name) / INCOMING_DIR
        with self._lock(name):
            _sweep_incoming(incoming)
            incoming.mkdir(exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=incoming, prefix=f"{socket.gethostname()}-{os.getpid()}-"))
            building = os.open(staging / BUILDING_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(building, fcntl.LOCK_EX)  # under the model's lock: no sweep sees it unheld
        try:
            yield staging
        finally:
            os.close(building)
            shutil.rmtree(staging, ignore_errors=True)

    def promote(self, name: str, version: int | str, *, reason: str = "", details: Mapping[str, Any] | None = None,
                replacing: int | None = None) -> Event:
        """Make ``version`` the champion (it serves); the champion before is remembered for rollback. A version
        that fails :func:`~classifier.integrity.verify_bundle` is refused, and so is any where ``replacing`` is
        given and no longer the champion (:class:`ChampionChanged`: a decision made against another one)."""
        checked = self.version(name, version)  # an alias resolved once: the version checked is the one promoted
        _require_intact(checked, "promoted")  # versions do not change: checked unlocked
        with self._lock(name):
            state = self._state(name)
            chosen = self.version(name, checked.number)
            if isinstance(version, str) and not version.isdigit() and state.aliases.get(version) != chosen.number:
                raise UserError(f"{self.model_dir(name)}: {version} became version {state.aliases.get(version)} "
                                f"while version {chosen.number} was checked; promote again")
            champion = state.aliases.get(CHAMPION)
            if replacing is not None and champion != replacing:
                raise ChampionChanged(f"{self.model_dir(name)}: version {champion} became the champion after "
                                      f"version {chosen.number} was compared with version {replacing}")
            if chosen.number == champion:
                raise UserError(f"{self.model_dir(name)}: version {champion} already serves")
            if champion is not None:
                state.previous_champions.append(champion)
            state.aliases[CHAMPION] = chosen.number
            if state.aliases.get(CHALLENGER) == chosen.number:
                del state.aliases[CHALLENGER]
            return self._commit(name, state, "promote", chosen.number, champion, reason, details)

    def rollback(self, name: str, *, reason: str = "", details: Mapping[str, Any] | None = None) -> Event:
        """Serve again the version that served before the champion. Each rollback goes one champion further
        back (an undo of promotions); the version rolled back from keeps no alias. A version that fails
        :func:`~classifier.integrity.verify_bundle` is refused (checked before the lock: it loads the models)."""
        champion, checked = self._rollback_target(name)
        _require_intact(self.version(name, checked), "served again",
                        "; promote another version with 'ticketclf models promote'")
        with self._lock(name):
            state = self._state(name)
            if self._rollback_target(name, state) != (champion, checked):
                raise UserError(f"{self.model_dir(name)}: another promotion or rollback came first; see 'ticketclf "
                                "models history', and roll back again if still needed")
            earlier = state.previous_champions
            state.previous_champions = earlier[:len(earlier) - 1 - earlier[::-1].index(checked)]
            state.aliases[CHAMPION] = checked
            return self._commit(name, state, "rollback", checked, champion, reason, details)

    def _rollback_target(self, name: str, state: Aliases | None = None) -> tuple[int | None, int]:
        """The champion, and the version a rollback would serve: the last earlier champion that still exists."""
        state = state or self._state(name)
        champion = state.aliases.get(CHAMPION)
        existing = {version.number for version in self.versions(name)}
        earlier = [number for number in state.previous_champions if number in existing]  # not deleted by hand
        if not earlier:
            raise UserError(f"{self.model_dir(name)}: no earlier champion to roll back to (version {champion} "
                            "serves); promote another version instead")
        return champion, earlier[-1]

    def remove(self, name: str, version: int | str, *, reason: str = "") -> Event:
        """Delete a version; never the one that serves."""
        with self._lock(name):
            state = self._state(name)
            chosen = self.version(name, version)
            if state.aliases.get(CHAMPION) == chosen.number:
                raise UserError(f"{self.model_dir(name)}: version {chosen.number} serves (champion); promote "
                                "another version or roll back before removing it")
            state.aliases = {alias: n for alias, n in state.aliases.items() if n != chosen.number}
            state.previous_champions = [n for n in state.previous_champions if n != chosen.number]
            (self.model_dir(name) / INCOMING_DIR).mkdir(exist_ok=True)
            retired = self.model_dir(name) / INCOMING_DIR / f"removed-{chosen.number}"
            shutil.rmtree(retired, ignore_errors=True)
            os.rename(chosen.path, retired)  # gone at once; deleted below (or by the next add's sweep)
            fsync(self.model_dir(name))
            event = self._commit(name, state, "remove", chosen.number, state.aliases.get(CHAMPION), reason, None)
        shutil.rmtree(retired, ignore_errors=True)
        return event

    def record(self, name: str, action: str, version: int | None = None, *, reason: str = "",
               details: Mapping[str, Any] | None = None) -> Event:
        """Append an event that changes no alias, e.g. a retrain's decision to keep its challenger staged,
        with the figures behind it in ``details``."""
        with self._lock(name):
            state = self._state(name)
            champion = state.aliases.get(CHAMPION)
            event = _event(action, version, champion, champion, reason, details)
            _append_line(self.model_dir(name) / HISTORY_FILE, event.model_dump_json())
            return event

    # ------------------------------------------------------------ the files

    def _state(self, name: str, missing_ok: bool = False) -> Aliases:
        path = self.model_dir(name) / ALIASES_FILE
        try:
            return Aliases.model_validate_json(path.read_bytes(), strict=True)
        except FileNotFoundError:
            if missing_ok:
                return Aliases()
            if (self.model_dir(name) / MANIFEST).is_file():  # a bundle trained with --output
                raise UserError(f"{self.model_dir(name)}: a bundle, not a model in a repository (REPO/NAME); its "
                                f"summary is its {MANIFEST}, or add it to a repository with 'ticketclf models add "
                                f"REPO/NAME {self.model_dir(name)}' and show it there") from None
            raise UserError(f"{self.model_dir(name)}: not a model in a repository (no {ALIASES_FILE}); add a "
                            f"version with 'ticketclf train DATA --repository {self.root} --name {name}'") from None
        except ValidationError as error:
            raise UserError(f"{path}: not an aliases file ({one_line(error)})") from None

    def _commit(self, name: str, state: Aliases, action: str, version: int, champion_before: int | None,
                reason: str, details: Mapping[str, Any] | None) -> Event:
        """Write the new state, then log it (a crash between the two loses a history line, not a choice)."""
        event = _event(action, version, champion_before, state.aliases.get(CHAMPION), reason, details)
        state.updated_at = event.time
        write_text_atomic(self.model_dir(name) / ALIASES_FILE, state.model_dump_json(indent=2) + "\n")
        _append_line(self.model_dir(name) / HISTORY_FILE, event.model_dump_json())
        return event

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """The model's writers' lock: an exclusive flock on ``.lock``, released on exit (or by the kernel when
        the process dies)."""
        directory = self.model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock


def _check_source(source: Path, directory: Path) -> None:
    """Refuse, before anything is made, a source that is not a bundle, and a model folder inside it (the copy
    would copy itself)."""
    read_manifest(source)
    if directory.resolve().is_relative_to(source.resolve()):
        raise UserError(f"{directory}: is inside the bundle {source} being added; give a model folder outside it")


class ChampionChanged(UserError):
    """Another version was promoted (or rolled back to) since a decision to promote was made."""


def _require_intact(version: Version, outcome: str, instead: str = "") -> None:
    """Refuse to serve a version the service would refuse to load: it would keep the old model while it runs,
    and serve nothing once restarted. An unsealed version (an older release's) loads, and passes."""
    if problem := _defects(version.path):
        raise UserError(f"version {version.number} is not {outcome}: {problem}; "
                        f"'ticketclf bundle verify {version.path}' checks it{instead}")


def _defects(bundle_dir: Path) -> str | None:
    """Why the service would refuse to load the bundle (the first problem, and how many more), or None."""
    from classifier.integrity import verify_bundle

    problems = verify_bundle(bundle_dir).defects
    return problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "") \
        if problems else None


def open_model(path: str | Path) -> tuple[ModelRepository, str]:
    """``REPO/NAME`` as one path (what the CLI and ``serve`` take): the repository and the model's name."""
    path = Path(os.path.abspath(path))  # '.' (inside the model's folder) has a name only once absolute
    return ModelRepository(path.parent), path.name


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a model in a repository (``REPO/NAME``) rather than a bundle."""
    return (Path(path) / ALIASES_FILE).is_file()


def _is_version_dir(path: Path) -> bool:
    return path.name.isdigit() and str(int(path.name)) == path.name and path.is_dir()


def _event(action: str, version: int | None, champion_before: int | None, champion_after: int | None,
           reason: str, details: Mapping[str, Any] | None) -> Event:
    return Event(time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), action=action,
                 version=version, champion_before=champion_before, champion_after=champion_after, reason=reason,
                 user=_user(), host=socket.gethostname(), details=dict(details or {}))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's user without a passwd entry
        return f"uid {os.getuid()}"


def _sweep_incoming(incoming: Path) -> None:
    """Remove what crashed builds and interrupted removals left: directories whose building lock nobody holds.
    Called under the model's lock, under which builds take theirs."""
    for entry in incoming.iterdir() if incoming.is_dir() else []:
        lock = entry / BUILDING_LOCK
        try:
            handle = os.open(lock, os.O_RDWR)
        except OSError:  # no lock file: a removed version, or a build that died before taking it
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being built
        finally:
            os.close(handle)
        log.info("removing %s, left by a build that did not finish", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _append_line(path: Path, line: str) -> None:
    """Append one line durably; after a line that a crash cut short, start a new line."""
    handle = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(handle).st_size
        torn = size > 0 and os.pread(handle, 1, size - 1) != b"\n"
        os.write(handle, (("\n" if torn else "") + line + "\n").encode("utf-8"))
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(directory: Path) -> None:
    """Flush a built bundle's files to disk before it is renamed into place."""
    for path in [*directory.rglob("*"), directory]:
        if not path.is_symlink():
            fsync(path)


