"""Classify ticket files on Ray: ``ticketclf predict BUNDLE --input PATH_OR_GLOB --output DIR [--ray ADDRESS]``.

One Ray Data pipeline, for exports of millions of tickets in one file or many:

1. read: a task per input file yields its rows in shards of ``shard_rows``, each row cleaned as training
   cleaned it and its id found (the file's id column, as :mod:`classifier.columns` finds it, else the row
   number); a row that cannot be classified carries the reason instead, and becomes a reject;
2. classify: an actor pool (``map_batches`` with a callable class); each actor loads the bundle's
   :class:`~classifier.predict.Predictor` once, with as many onnxruntime threads as Ray gave it CPUs;
3. write: this process gathers each shard's rows and, once the shard is complete, writes them to a
   temporary name renamed into place: a shard file is whole or absent, and a rerun skips the ones there.

Ray's own readers are not used: they give no row numbers (the ids of a file without an id column) and fail a
whole file for one bad JSON line. CSV, TSV and JSON arrays are read as ``predict --file`` reads them
(:func:`classifier.readers.read_records`: same rows, numbers and limits); JSON Lines and Parquet are streamed.

The output folder::

    DIR/batch.json            what the output is of (bundle, input, options): a rerun with the same resumes
    DIR/shards/KEY-N.parquet  shard N of the input file KEY (or .jsonl): id, source, row, the prediction
    DIR/rejects/KEY-N.jsonl   that shard's rows that could not be classified, each with the reason
    DIR/rejects.jsonl         all of them, gathered at the end of every run

Ray runs the read tasks and actors on any node: on a cluster the input files and the bundle must be at the
same path on every node (shared storage), as for Ray Data's own readers. The output is written here.
Ray is an optional extra (``pip install "ticket-classifier[ray]"``); nothing else imports this module.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from classifier import bundle
from classifier.columns import ColumnMapping
from classifier.cpus import usable_cpus
from classifier.data import columns_to_classify, given_id, record_text, with_text_columns
from classifier.errors import ModelError, UserError, one_line, where
from classifier.readers import file_sha256, read_records
from classifier.text import TextOptions, nested_fields

if TYPE_CHECKING:
    import pyarrow as pa

    from classifier.predict import Prediction, Predictor

log = logging.getLogger(__name__)

RAY_MISSING = 'classifying on Ray needs the ray extra: pip install "ticket-classifier[ray]"'
FORMATS = ("parquet", "jsonl")
SHARD_ROWS = 4096  # input rows per output shard: what an interrupted run redoes at most, per file in flight
BATCH_FILE = "batch.json"
SHARDS_DIR = "shards"
REJECTS_DIR = "rejects"
REJECTS_FILE = "rejects.jsonl"
_OWN_NAMES = {BATCH_FILE, SHARDS_DIR, REJECTS_DIR, REJECTS_FILE}
_ACTOR_BATCH = 256  # tickets per actor call: small enough to spread a shard over the pool
_BLOCK_BYTES = 256 * 1024  # Ray Data's blocks: about 700 cleaned tickets, or 1,000 predictions
_READERS_PER_ACTOR = 8  # reading and cleaning cost a few % of classifying: one read task feeds several actors
_TABULAR = {".csv", ".tsv", ".tab", ".json"}  # read whole by classifier.readers, as predict --file reads them
_JSON_LINES = {".jsonl", ".ndjson"}
_PARQUET = ".parquet"
_NO_NUMBERS = "the model gave scores that are not numbers (NaN or infinity); export or train the bundle again"


@dataclass(frozen=True)
class BatchOptions:
    format: str = "parquet"  # of the output shards: parquet or jsonl
    top_k: int | None = None  # None: no top_k column
    actors: int | None = None  # None: one per CPU of the Ray cluster (over threads_per_actor)
    threads_per_actor: int = 1  # onnxruntime threads, and the CPUs each actor asks Ray for
    engine: str = "auto"  # what the bundle marks for serving (int8 once exported)
    text_columns: tuple[str, ...] = ()  # the files' names for the bundle's text fields
    id_column: str | None = None  # the files' id column; None: a common id name
    overwrite: bool = False  # start over in an output folder of another run
    ray_address: str | None = None  # None: a local Ray on this machine
    shard_rows: int = SHARD_ROWS
    progress: bool = True  # a progress bar on standard error (when it is a terminal)


@dataclass
class BatchSummary:
    """What a run did: tickets classified and rejected, labels, review share, shards, time."""

    output: Path
    actors: int = 0
    tickets: int = 0
    rejected: int = 0
    needs_review: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    stopped: int = 0  # files in the output read only up to a place they could not be read past (a reject says)
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    first_output_s: float | None = None  # from the start to the first shard written

    def lines(self) -> list[str]:
        rate = self.tickets / self.seconds if self.seconds else 0.0
        share = 100 * self.needs_review / self.tickets if self.tickets else 0.0
        lines = [f"classified {self.tickets:,} tickets in {self.seconds:.1f} s ({rate:,.0f} tickets/s, "
                 f"{self.actors} actor{'s' * (self.actors != 1)}) into {self.output / SHARDS_DIR}",
                 f"needs review: {self.needs_review:,} ({share:.1f} %)"]
        if self.labels:
            lines.append("labels: " + ", ".join(f"{label} {count:,} ({100 * count / self.tickets:.1f} %)"
                                                for label, count in self.labels.most_common()))
        if self.rejected:
            lines.append(f"rejected: {self.rejected:,} rows, each with the reason, in {self.output / REJECTS_FILE}")
        if self.stopped:
            lines.append(f"error: {self.stopped} file{'s' * (self.stopped != 1)} could not be read to the end: "
                         f"the rows after the place named in {self.output / REJECTS_FILE} were not classified")
        first = f" (the first after {self.first_output_s:.1f} s)" if self.first_output_s is not None else ""
        lines.append(f"shards: {self.shards_written} written{first}" + (
            f", {self.shards_skipped} done by an earlier run and skipped" if self.shards_skipped else ""))
        return lines


def classify_files(bundle_dir: Path, inputs: str, output: Path, options: BatchOptions = BatchOptions()) -> BatchSummary:
    """Classify every ticket of the files ``inputs`` names (a file, a folder, or a glob) into shards under
    ``output``; see the module's description. The bundle and the options are checked here, before Ray starts."""
    from classifier.predict import Predictor

    started = time.perf_counter()
    import_ray(local=options.ray_address is None)  # a missing extra is the first thing said, before any work
    # Not the output's own shards, should the output folder be inside an input folder.
    files = [path for path in input_files(inputs) if not path.resolve().is_relative_to(output.resolve())]
    if not files:
        raise UserError(f"{inputs}: no ticket files outside --output {output}")
    predictor = Predictor.load(bundle_dir, engine=options.engine)  # a bad bundle: one line, before any Ray work
    _check_options(options, predictor)
    identity = _identity(bundle_dir, inputs, files, options)
    done = _prepare_output(output, identity, options.overwrite)
    summary = BatchSummary(output, shards_skipped=len(done))
    with ray_session(options.ray_address) as ray:
        _configure(ray)
        summary.actors = options.actors or _cluster_actors(ray, options.threads_per_actor)
        reading = _Reading(predictor.text_options, options.text_columns, options.id_column, options.shard_rows,
                           frozenset(done))
        dataset = _pipeline(ray, files, reading, bundle_dir, summary.actors, options)
        writer = _ShardWriter(output, options.format, summary, started)
        with _progress(options.progress) as advance:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.add(table)
                advance(table.num_rows)
    writer.check_complete()
    summary.stopped = _gather_rejects(output)
    summary.seconds = time.perf_counter() - started
    return summary


def input_files(inputs: str) -> list[Path]:
    """The files ``inputs`` names: a file, a folder (its ticket files, sorted) or a glob (``**`` included)."""
    path = Path(inputs)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
    elif glob.has_magic(inputs):
        files = sorted(Path(p) for p in glob.glob(inputs, recursive=True) if Path(p).is_file())
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"{inputs}: file not found")
    if not files:
        raise UserError(f"{inputs}: no ticket files (.csv, .tsv, .json, .jsonl, optionally .gz, or .parquet) there")
    return files


def shard_key(path: Path) -> str:
    """A file's name in its shards' names: its stem, readable, and a digest of its full path (two
    exports/2024/tickets.csv and exports/2025/tickets.csv must not share shards)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name.split(".")[0])[:40] or "file"
    return f"{stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------- the output folder


def _identity(bundle_dir: Path, inputs: str, files: list[Path], options: BatchOptions) -> dict[str, Any]:
    """What makes two runs' output the same: a rerun with this identity resumes, another is refused. Each input
    file is known by its size and modification time: a nightly file replaced under the same name is new input,
    whose tickets the old shards do not hold."""
    return {"bundle": str(bundle_dir.resolve()), "bundle_manifest_sha256": file_sha256(bundle_dir / bundle.MANIFEST),
            "input": os.path.abspath(inputs), "engine": options.engine, "format": options.format,
            "top_k": options.top_k, "text_columns": list(options.text_columns),
            "id_column": options.id_column, "shard_rows": options.shard_rows,
            "input_files": {str(path.resolve()): [path.stat().st_size, path.stat().st_mtime_ns] for path in files}}


def _prepare_output(output: Path, identity: dict[str, Any], overwrite: bool) -> set[str]:
    """Make ``output`` ready and return the shards an earlier run of the same identity completed."""
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is a file; --output names a folder")
    entries = sorted(entry.name for entry in output.iterdir()) if output.is_dir() else []
    if entries and overwrite:
        _remove_own_output(output, entries)
    elif entries:
        _require_same_run(output, entries, identity)
    for name in (SHARDS_DIR, REJECTS_DIR):
        (output / name).mkdir(parents=True, exist_ok=True)
        for stale in (output / name).glob(".*.tmp"):  # what a killed run was writing
            stale.unlink()
    bundle.write_json_atomic(output / BATCH_FILE, identity)
    return {path.name.rsplit(".", 1)[0] for path in (output / SHARDS_DIR).iterdir()}


def _remove_own_output(output: Path, entries: list[str]) -> None:
    foreign = [name for name in entries if name not in _OWN_NAMES]
    if foreign:
        raise UserError(f"{output}: holds {', '.join(foreign[:3])} besides batch output; --overwrite removes only "
                        "batch output, so choose an empty or new --output")
    for name in entries:
        path = output / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _require_same_run(output: Path, entries: list[str], identity: dict[str, Any]) -> None:
    try:
        recorded = json.loads((output / BATCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{output}: is not empty ({', '.join(entries[:3])}) and holds no batch output "
                        f"({BATCH_FILE}); choose an empty or new --output") from None
    changed = [key for key in identity if recorded.get(key) != identity[key]]
    files, before = identity["input_files"], recorded.get("input_files") or {}
    if changed == ["input_files"] and set(files) == set(before):
        edited = [Path(name).name for name in files if files[name] != before[name]]
        raise UserError(f"{output}: {', '.join(edited[:3])} changed since the run that wrote it (size or time): its "
                        "shards hold the old content; pass --overwrite to classify the files as they are now, or "
                        "choose another --output")
    if changed:
        raise UserError(f"{output}: holds the output of another run (its {', '.join(changed)} differ); "
                        "pass --overwrite to start over there, or choose another --output")


class _ShardWriter:
    """Gathers classified rows per shard; writes a shard once all its rows are in, rejects first, each file
    under a temporary name renamed into place. The shard file comes last: it marks the shard done."""

    def __init__(self, output: Path, fmt: str, summary: BatchSummary, started: float) -> None:
        self.output, self.format, self.summary, self.started = output, fmt, summary, started
        self.pending: dict[str, list[tuple[int | None, bool, str]]] = {}

    def add(self, table: pa.Table) -> None:
        columns = table.to_pydict()
        for shard, total, row, rejected, record in zip(columns["shard"], columns["shard_rows"], columns["row"],
                                                      columns["rejected"], columns["record"]):
            rows = self.pending.setdefault(shard, [])
            rows.append((row, rejected, record))
            if len(rows) == total:
                self._write(shard, self.pending.pop(shard))

    def check_complete(self) -> None:
        if self.pending:  # a bug, not the user's: every row the readers send comes back
            raise RuntimeError(f"shards left incomplete: {sorted(self.pending)[:5]}")

    def _write(self, shard: str, rows: list[tuple[int | None, bool, str]]) -> None:
        rows.sort(key=lambda item: (item[0] is None, item[0] or 0))  # file order, whatever order actors answered in
        records = [json.loads(record) for _, rejected, record in rows if not rejected]
        rejects = [record for _, rejected, record in rows if rejected]
        rejects_path = self.output / REJECTS_DIR / f"{shard}.jsonl"
        if rejects:
            text = "\n".join(rejects) + "\n"
            bundle.replace_atomically(rejects_path, lambda path: path.write_text(text, encoding="utf-8"))
        else:
            rejects_path.unlink(missing_ok=True)  # from an earlier, interrupted run of this shard
        shard_path = self.output / SHARDS_DIR / f"{shard}.{self.format}"
        bundle.replace_atomically(shard_path, lambda path: self._write_records(path, records))
        self._count(records, rejects)

    def _write_records(self, path: Path, records: list[dict[str, Any]]) -> None:
        if self.format == "jsonl":
            path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
                            encoding="utf-8")
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        empty = pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string()),
                          "row": pa.array([], pa.int64())})  # a shard of rejects only: still a file, marking it done
        pq.write_table(pa.Table.from_pylist(records) if records else empty, path)

    def _count(self, records: list[dict[str, Any]], rejects: list[str]) -> None:
        summary = self.summary
        summary.shards_written += 1
        summary.tickets += len(records)
        summary.rejected += len(rejects)
        summary.labels.update(record["label"] for record in records)
        summary.needs_review += sum(bool(record["needs_review"]) for record in records)
        if summary.first_output_s is None:
            summary.first_output_s = time.perf_counter() - self.started


def _gather_rejects(output: Path) -> int:
    """``rejects.jsonl``: every shard's rejects, in shard order, rebuilt after each run (a resumed one too). Returns
    how many files were read only up to a place (a reject without a row), an earlier run's shards included: a
    rerun that skips them has not classified those files' rest either."""
    stopped = 0

    def write(path: Path) -> None:
        nonlocal stopped
        with open(path, "w", encoding="utf-8") as out:
            for part in sorted((output / REJECTS_DIR).glob("*.jsonl")):
                text = part.read_text(encoding="utf-8")
                out.write(text)
                stopped += sum(json.loads(line)["row"] is None for line in text.splitlines() if line)

    bundle.replace_atomically(output / REJECTS_FILE, write)
    return stopped


# ---------------------------------------------------------------- Ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ModuleType]:
    """Ray, connected to the cluster at ``address`` or to a local one started here (shut down after). Inside it,
    :func:`classify_files` uses this connection: several runs (tests, scripts) start Ray once."""
    ray = import_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address is None:
            ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {one_line(error)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def import_ray(local: bool) -> ModuleType:
    """The ray module, or the one-line error that names the extra to install."""
    # A Ray started for one command serves it alone: on the loopback address, as Ray itself does on macOS and
    # Windows (this switch, read once, when ray is imported), not on the machine's network address. Set for the
    # import only: child processes (a `ray start` of a cluster) must not inherit it.
    switch = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(switch)
    if local and before is None:
        os.environ[switch] = "0"
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(RAY_MISSING) from None
    finally:
        if before is None:
            os.environ.pop(switch, None)
    return ray


def _configure(ray: ModuleType) -> None:
    """Ray Data (this process's context) set for this pipeline: small blocks, no progress bars or plans of its own."""
    context = ray.data.DataContext.get_current()
    # Ray Data gathers what a task yields into blocks of up to 128 MiB by default: a whole file's shards, then a
    # whole file's predictions, reached the writer at once (the first shard was written at the end of a 12,000
    # ticket run). Blocks of a few hundred rows let shards complete as they go, in half the time to the first.
    context.target_max_block_size = _BLOCK_BYTES
    context.enable_progress_bars = False  # this command shows its own progress and summary
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _cluster_actors(ray: ModuleType, threads: int) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)


def _pipeline(ray: ModuleType, files: list[Path], reading: _Reading, bundle_dir: Path, actors: int,
              options: BatchOptions) -> Any:
    """Files -> read tasks (shards of cleaned rows) -> actor pool (predictions) -> blocks for the writer."""
    paths = ray.data.from_items([{"path": str(path.resolve())} for path in files], override_num_blocks=len(files))
    readers = max(1, -(-actors // _READERS_PER_ACTOR))
    # Read tasks ask for no CPU: the actors hold them all, and reading is a few % of the work.
    shards = paths.map_batches(_read_files, batch_size=1, fn_kwargs={"reading": reading}, batch_format="pyarrow",
                               num_cpus=0, compute=ray.data.TaskPoolStrategy(size=readers))
    return shards.map_batches(_Classifier, batch_size=_ACTOR_BATCH, batch_format="pyarrow",
                              fn_constructor_kwargs={"bundle_dir": str(bundle_dir.resolve()), "engine": options.engine,
                                                     "threads": options.threads_per_actor, "top_k": options.top_k},
                              num_cpus=options.threads_per_actor, compute=ray.data.ActorPoolStrategy(size=actors))


class _Classifier:
    """An actor of the pool: the bundle loaded once, then batches of cleaned rows turned into output rows."""

    def __init__(self, bundle_dir: str, engine: str, threads: int, top_k: int | None) -> None:
        from classifier.predict import Predictor

        # The tokenizer's own thread pool would add threads beyond the ones Ray gave this actor.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.predictor: Predictor = Predictor.load(bundle_dir, engine=engine, threads=threads)
        self.top_k = top_k

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        rows = batch.to_pydict()
        ready = [index for index, reason in enumerate(rows["reason"]) if not reason]
        answers = dict(zip(ready, self._predict([rows["text"][index] for index in ready])))
        rejected, records = [], []
        for index, reason in enumerate(rows["reason"]):
            answer = answers.get(index, reason)
            if rows["cut"][index] and not isinstance(answer, str):
                answer.truncated = True
            rejected.append(isinstance(answer, str))
            place = {"id": rows["id"][index], "source": rows["source"][index], "row": rows["row"][index]}
            records.append(json.dumps({**place, **self._fields(answer)}, ensure_ascii=False))
        return pa.table({"shard": rows["shard"], "shard_rows": rows["shard_rows"], "row": rows["row"],
                         "rejected": rejected, "record": records})

    def _predict(self, texts: list[str]) -> list[Prediction | str]:
        """Each text's prediction; a ticket the model scores NaN for gets the reason instead."""
        if not texts:
            return []
        try:
            return list(self.predictor.predict(texts, top_k=self.top_k or 1, cleaned=True))
        except ModelError as error:
            failed = set(error.tickets)
        kept = [index for index in range(len(texts)) if index not in failed]
        answers = dict(zip(kept, self._predict([texts[index] for index in kept])))
        return [answers.get(index, _NO_NUMBERS) for index in range(len(texts))]

    def _fields(self, answer: Prediction | str) -> dict[str, Any]:
        if isinstance(answer, str):
            return {"reason": answer}
        fields = answer.to_dict()  # whatever a Prediction says (fields added later flow through)
        if self.top_k is None:  # no top-k lists asked for: none for the other fields either
            fields.pop("top_k", None)
            for field in (fields.get("fields") or {}).values():
                field.pop("top_k", None)
        return fields


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int], object]]:
    """A progress bar in rows (tickets and rejects) with their rate, on standard error when it is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:  # the ray extra brings it; without it the summary still tells
        yield lambda count: None
        return
    with tqdm(unit=" tickets", unit_scale=True, disable=None if enabled else True, file=sys.stderr,
              dynamic_ncols=True) as bar:
        yield bar.update


def _check_options(options: BatchOptions, predictor: Predictor) -> None:
    labels = len(predictor.labels)
    if options.format not in FORMATS:
        raise UserError(f"unknown output format {options.format!r}; choose one of {', '.join(FORMATS)}")
    if options.top_k is not None and not 1 <= options.top_k <= labels:
        raise UserError(f"--top-k must be between 1 and {labels} (the model's labels), got {options.top_k}")
    for name in ("actors", "threads_per_actor", "shard_rows"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    with_text_columns(predictor.text_options, options.text_columns)  # the count of --text-columns


# ---------------------------------------------------------------- reading (in Ray tasks)


@dataclass(frozen=True)
class _Reading:
    """What a read task needs: how to clean, which columns, how to cut shards, which shards are done."""

    text_options: TextOptions
    text_columns: tuple[str, ...]
    id_column: str | None
    shard_rows: int
    done: frozenset[str]


Item = tuple[int | None, dict[str, Any] | str]  # (row, record), or (row or None, why it cannot be read)


def _read_files(batch: pa.Table, reading: _Reading) -> Iterator[pa.Table]:
    """The read stage: one table per shard of each file in ``batch`` not done already."""
    for path in batch.column("path").to_pylist():
        yield from _file_shards(Path(path), reading)


def _file_shards(path: Path, reading: _Reading) -> Iterator[pa.Table]:
    key = shard_key(path)
    items = _items(path)
    chunk = list(islice(items, reading.shard_rows))
    try:
        mapping, options = _file_columns(path, chunk, reading)
    except UserError as error:  # e.g. none of the model's text columns: the whole file is one reject
        mapping, options = ColumnMapping((), None, None), reading.text_options
        chunk, items = [(None, str(error))], iter(())
    index = 0
    while chunk:
        name = f"{key}-{index:05d}"
        if name not in reading.done:  # a done shard is read again (to know where the next starts), not cleaned
            yield _shard_table(name, path, [_clean(path, item, mapping, options) for item in chunk])
        chunk, index = list(islice(items, reading.shard_rows)), index + 1


def _file_columns(path: Path, first: list[Item], reading: _Reading) -> tuple[ColumnMapping, TextOptions]:
    """The file's text and id columns, found among the columns of its first shard's records as ``predict --file``
    finds them: the model's text fields (or ``--text-columns``), else a ``text`` column alone."""
    columns = list(dict.fromkeys(name for _, record in first if isinstance(record, dict) for name in record))
    if not columns:
        return ColumnMapping((), None, None), reading.text_options  # no record read: only rejects follow
    return columns_to_classify(columns, path, reading.text_options, reading.text_columns, reading.id_column)


def _clean(path: Path, item: Item, mapping: ColumnMapping, options: TextOptions) -> tuple[Any, ...]:
    """(row, id, cleaned text, reason, cut): reason empty for a row to classify; the id as ``predict --file``
    gives it (:func:`classifier.data.given_id`), None for a line that could not be read; cut: a text cell was
    cut when read (the prediction says ``truncated``)."""
    row, record = item
    if isinstance(record, str):
        return row, None, "", record, False
    ticket_id = given_id(record, mapping.id_column, row or 0)
    try:  # as predict --file reads a row: no cell costs more than a window reads
        text, cut_columns = record_text(record, options, path, row or 0)
    except UserError as error:
        return row, ticket_id, "", str(error), False
    return row, ticket_id, text, "" if text else f"{where(path, row)}: no text after cleaning", bool(cut_columns)


def _shard_table(name: str, path: Path, rows: list[tuple[Any, ...]]) -> pa.Table:
    import pyarrow as pa

    numbers, ids, texts, reasons, cut = zip(*rows)
    return pa.table({"shard": [name] * len(rows), "shard_rows": pa.array([len(rows)] * len(rows), pa.int64()),
                     "source": [str(path)] * len(rows), "row": pa.array(numbers, pa.int64()),
                     "id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                     "reason": pa.array(reasons, pa.string()), "cut": pa.array(cut, pa.bool_())})


def _kind(path: Path) -> str | None:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    gzipped = suffixes[-1:] == [".gz"]
    last = (suffixes[:-1] if gzipped else suffixes)[-1:]
    if not last:
        return None
    if last[0] in _TABULAR:
        return "tabular"
    if last[0] in _JSON_LINES:
        return "jsonl"
    return "parquet" if last[0] == _PARQUET and not gzipped else None


def _items(path: Path) -> Iterator[Item]:
    """A file's records with their row numbers, as a person sees them; what stops the reading, as the last item."""
    kind = _kind(path)
    try:
        if kind == "tabular":
            yield from read_records(path)
        elif kind == "jsonl":
            yield from _json_lines(path)
        elif kind == "parquet":
            yield from _parquet_rows(path)
        else:
            yield None, f"{path}: unknown file type; expected .csv, .tsv, .json, .jsonl (optionally .gz) or .parquet"
    except UserError as error:  # the file's own reader named the place
        yield None, str(error)
    except (OSError, EOFError, zlib.error, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        yield None, f"{path}: cannot read the rest of the file ({one_line(error)})"


def _json_lines(path: Path) -> Iterator[Item]:
    """One record per line, streamed; a line that is not a JSON object is a reject, and reading goes on."""
    opener: Callable[..., Any] = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, _json_record(path, number, line)


def _json_record(path: Path, number: int, line: bytes) -> dict[str, Any] | str:
    try:
        record = json.loads(line.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return f"{where(path, number)}: bytes are not valid UTF-8"
    except json.JSONDecodeError as error:
        return f"{where(path, number)}: invalid JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return f"{where(path, number)}: JSON nested too deep"
    if not isinstance(record, dict):
        return f"{where(path, number)}: expected a JSON object, got {type(record).__name__}"
    try:
        return nested_fields(record)
    except RecursionError:
        return f"{where(path, number)}: JSON nested too deep"


def _parquet_rows(path: Path) -> Iterator[Item]:
    """Rows numbered from 1, a batch at a time; struct columns read as dotted fields, as nested JSON is."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=SHARD_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield number, nested_fields(record)


def read_output(output: Path) -> Iterator[dict[str, Any]]:
    """The rows of an output folder's shards (Parquet or JSON Lines), shard by shard: for tests and scripts."""
    for path in sorted((output / SHARDS_DIR).iterdir()):
        if path.suffix == ".jsonl":
            yield from (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
        else:
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
