"""The model bundle: one directory that every stage reads and writes.

Layout (everything that knows a file name inside a bundle lives here)::

    manifest.json                     labels, text options, thresholds, calibration, metrics, versions
    baseline.npz                      the TF-IDF baseline fitted on the training split
    config.json, model.safetensors,   the model and tokenizer (save_pretrained), loadable
    tokenizer.json, ...               by plain transformers (vocab.txt: WordPiece's, in id order)
    onnx/model.onnx                   fp32 ONNX (after export)
    onnx/model_int8.onnx              dynamic int8 ONNX (after export)
    reports/                          data report, drift check, evaluation summaries

Every file at the top level and in ``onnx/`` but the manifest is sealed: the manifest records its
sha256 and size (:mod:`classifier.integrity`). The manifest's fields are typed in
:mod:`classifier.manifest`; this module reads and writes it. Writes are atomic: a new bundle is
built in a temporary sibling directory and renamed into place; the manifest is replaced with
``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from classifier.errors import UserError
from classifier.manifest import MIGRATES_FROM, SCHEMA_VERSION, DataFile, Manifest, migrate, problems

MANIFEST = "manifest.json"
CONFIG_FILE = "config.json"  # the model's transformers config
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.txt"  # WordPiece tokenizers' vocabulary, one token a line in id order
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # PyTorch weights, at the top level
ONNX_DIR = "onnx"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
REPORTS_DIR = "reports"
DATA_REPORT = "data_report"  # reports/data_report.json: what training did to the data (classifier.data)
VALIDATION_FILE = "validation.jsonl"  # the held-out split, cleaned: for export drift checks
BASELINE_FILE = "baseline.npz"  # the TF-IDF baseline, fitted at training (classifier.baseline)
FIELD_HEADS_FILE = "field_heads.safetensors"  # the heads of the fields besides the label (classifier.heads)
OUT_OF_SCOPE_FILE = "out_of_scope.npz"  # the out-of-scope detector, fitted at training (classifier.oos)
# A copy of the file the bundle was trained on, where one is kept (retrain keeps one: it trains on a
# temporary file): the manifest names it by this name alone (bundles before it: their scratch path).
TRAINING_COPY_FILE = "training-data.jsonl"


def keep_training_copy(bundle_dir: Path, training_file: Path) -> None:
    """Copy the file the bundle was just trained on into it, as :data:`TRAINING_COPY_FILE`, and name the copy
    in the manifest (by its name alone: the bundle directory may move) instead of ``training_file``, which is
    about to be removed (retrain trains on a temporary file)."""
    shutil.copy2(training_file, bundle_dir / TRAINING_COPY_FILE)
    manifest = read_manifest(bundle_dir)
    data = manifest.data
    read_from = data.train.path if data.train else None

    def the_copy(source: DataFile | None) -> DataFile | None:
        return source.model_copy(update={"path": TRAINING_COPY_FILE}) if source and source.path == read_from \
            else source

    manifest.data = data.model_copy(update={"train": the_copy(data.train), "validation": the_copy(data.validation)})
    write_manifest(bundle_dir, manifest)
    report = Path(bundle_dir) / REPORTS_DIR / f"{DATA_REPORT}.json"
    if report.is_file():  # its rows are the copy's (the same lines), its file name the removed one's
        write_report(bundle_dir, DATA_REPORT, _renamed(read_json_object(report), str(training_file),
                                                       TRAINING_COPY_FILE))


def _renamed(value: Any, old: str, new: str) -> Any:
    """``value`` (JSON) with ``old`` replaced by ``new`` in every string and key."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_renamed(item, old, new) for item in value]
    if isinstance(value, dict):
        return {_renamed(key, old, new): _renamed(item, old, new) for key, item in value.items()}
    return value


def manifest_bytes(bundle_dir: str | Path) -> bytes | None:
    """The manifest file as it is now (None: none there), to tell whether it was written since."""
    try:
        return (Path(bundle_dir) / MANIFEST).read_bytes()
    except OSError:
        return None


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read, migrate and check a bundle's manifest; one clear error if it is not a bundle or does not fit."""
    path = Path(bundle_dir) / MANIFEST
    if Path(bundle_dir).is_file():  # e.g. "evaluate tickets.csv" with the bundle left out
        raise UserError(f"{bundle_dir}: is a file; a model bundle is a directory (made by 'ticketclf train')")
    if not Path(bundle_dir).is_dir():
        raise UserError(f"{bundle_dir}: bundle directory not found")
    if not path.is_file():
        from classifier.repository import is_model_dir  # it imports this module

        if is_model_dir(bundle_dir):  # serve takes it; predict and evaluate take one of its versions
            raise UserError(f"{bundle_dir}: is a model in a repository, not a bundle; give one of its versions "
                            f"(e.g. {Path(bundle_dir) / '1'}: 'ticketclf models list {bundle_dir}' lists them)")
        raise UserError(f"{bundle_dir}: not a model bundle (no {MANIFEST}); create one with 'ticketclf train'")
    raw = read_json_object(path, what="manifest")
    version = raw.get("schema_version")
    if version not in MIGRATES_FROM and version != SCHEMA_VERSION:
        raise UserError(f"{path}: manifest schema version {version!r}, this release reads "
                        f"{', '.join(map(str, (*MIGRATES_FROM, SCHEMA_VERSION)))}")
    try:  # through JSON again: validated as the JSON types the file holds, not as Python would coerce them
        return Manifest.model_validate_json(json.dumps(migrate(raw)), strict=True)
    except ValidationError as error:
        raise UserError(f"{path}: manifest does not fit this release ({'; '.join(problems(error))}); was it "
                        "edited by hand? 'ticketclf train' writes a new one") from None


def read_json_object(path: Path, data: bytes | None = None, what: str = "") -> dict[str, Any]:
    """The JSON object in the file at ``path`` (or in ``data``, its bytes read already), or one line saying
    why there is none; ``what`` names the file in the message ("manifest")."""
    subject = f"{what} is " if what else ""
    try:
        value = json.loads(path.read_bytes() if data is None else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: {subject}not valid JSON ({error})") from None
    except RecursionError:
        raise UserError(f"{path}: {subject}not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: {subject}not a JSON object")
    return value


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (write a temporary file, then rename)."""
    write_json_atomic(Path(bundle_dir) / MANIFEST, manifest.to_json())


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically and durably (:func:`write_text_atomic`)."""
    write_text_atomic(Path(path), json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (:func:`replace_atomically`): the manifest holds the seal and the served
    engine, so after a crash or a power loss it must be the old one or the new one, whole."""
    replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def replace_atomically(path: Path, write: Callable[[Path], object], private: bool = False) -> None:
    """Make ``path`` by ``write(temporary)``: a file of its own beside it (two writers never share one),
    flushed to disk and renamed over ``path``, the folder flushed after. Readers see the old file or the new
    one whole, also after a crash or a power loss; a failed write leaves the old one and no temporary file.
    ``private``: readable by its owner alone (customer text), else as the umask allows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        fsync(temporary)
        if not private:
            os.chmod(temporary, _default_mode(0o666))  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def fsync(path: Path) -> None:
    """Flush a file or a folder (its entries: a rename) to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_report(bundle_dir: str | Path, name: str, data: Any) -> Path:
    """Store a JSON report under ``reports/`` and return its path."""
    path = Path(bundle_dir) / REPORTS_DIR / f"{name}.json"
    write_json_atomic(path, data)
    return path


def write_examples(bundle_dir: str | Path, texts: list[str], labels: list[str], ids: list[str]) -> None:
    """Store the validation split (cleaned texts, labels, ids) so later stages can re-check the model."""
    with open(Path(bundle_dir) / VALIDATION_FILE, "w", encoding="utf-8") as out:
        for ident, text, label in zip(ids, texts, labels):
            out.write(json.dumps({"id": ident, "text": text, "label": label}, ensure_ascii=False) + "\n")


def read_examples(bundle_dir: str | Path, labels: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The bundle's validation texts and labels: as training named them, or as the manifest's ``labels`` name
    them now (training wrote the names of config.json's id2label, which a label renamed since no longer is)."""
    path = Path(bundle_dir) / VALIDATION_FILE
    if not path.is_file():
        raise UserError(f"{bundle_dir}: bundle has no {VALIDATION_FILE}; retrain it with this version")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if labels is None:
        return [r["text"] for r in records], [r["label"] for r in records]
    id2label = read_json_object(Path(bundle_dir) / CONFIG_FILE).get("id2label")
    trained = id2label.items() if isinstance(id2label, dict) else ()
    now = {name: labels[int(position)] for position, name in trained
           if str(position).isdigit() and int(position) < len(labels)}
    return [r["text"] for r in records], [now.get(r["label"], r["label"]) for r in records]


def new_manifest(**sections: Any) -> Manifest:
    """A manifest with a fresh bundle id and the creation time."""
    now = datetime.now(timezone.utc)
    return Manifest(bundle_version=now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8],
                    created_at=now.isoformat(timespec="seconds"), **sections)


def check_output(target: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output path whose replacement would lose anything but an older bundle."""
    if not target.exists() and not target.is_symlink():
        return
    if not overwrite:
        raise UserError(f"{target}: already exists; choose another --output or pass --overwrite")
    if not target.is_dir():
        raise UserError(f"{target}: is a file; --overwrite replaces only a model bundle directory")
    from classifier.repository import is_model_dir  # it imports this module

    folder = Path(os.path.abspath(target))  # '.' or '1' typed inside the model's folder: named in full
    model = folder if is_model_dir(folder) else folder.parent if is_model_dir(folder.parent) else None
    if model is not None:  # its versions, history and feedback, or a version the history names
        raise UserError(f"{target}: is in the model repository {model.parent}, which --overwrite would break; "
                        f"train a new version with --repository {model.parent} --name {model.name}")
    inside = [path for path in inputs if path.resolve().is_relative_to(target.resolve())]
    if inside:
        raise UserError(f"{target}: holds the input {inside[0]}, which --overwrite would delete; "
                        "choose another --output")
    if not (target / MANIFEST).is_file():
        if any(target.iterdir()):
            raise UserError(f"{target}: is not a model bundle (no {MANIFEST}) and not empty; --overwrite "
                            "replaces only a bundle, so choose another --output")
    elif not is_bundle(target):  # a web app's or an extension's manifest.json is no bundle
        raise UserError(f"{target}: its {MANIFEST} is not a model bundle's; --overwrite replaces only a bundle, so "
                        "choose another --output")


def is_bundle(directory: Path) -> bool:
    """Whether ``directory`` holds a bundle's manifest of any schema version: a JSON object with the schema
    version and the labels, whatever else it holds or lacks (a web app's manifest.json is none)."""
    try:
        raw = read_json_object(directory / MANIFEST)
    except (OSError, UserError):  # unreadable, not JSON (nested too deeply included), or not an object
        return False
    return isinstance(raw.get("schema_version"), int) and isinstance(raw.get("labels"), list)


@contextmanager
def staged_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target`` atomically.

    On failure the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    check_output(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".staging"))
    try:
        yield staging
        _make_readable(staging)
        swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_into_place(staging: Path, target: Path, before_commit: Callable[[], None] | None = None) -> None:
    """Put ``staging`` in place of ``target`` by renames. ``before_commit`` (e.g. writing the manifest
    that goes with the new files) runs once they are in place; if anything fails, ``target`` is as it was."""
    retired = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old") if target.exists() else None
    if retired is not None:
        target.rename(retired)
    placed = False
    try:
        staging.rename(target)
        placed = True
        if before_commit is not None:
            before_commit()
    except BaseException:
        if placed:
            shutil.rmtree(target, ignore_errors=True)
        if retired is not None:
            retired.rename(target)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """Give staged files the usual permissions (temporary files and directories are private)."""
    for path in [directory, *directory.rglob("*")]:
        os.chmod(path, _default_mode(0o777 if path.is_dir() else 0o666))


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it, and it sets it: once, at import, before any thread runs
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _default_mode(base: int) -> int:
    return base & ~_UMASK


def onnx_path(bundle_dir: str | Path, quantized: bool) -> Path:
    return Path(bundle_dir) / onnx_name(quantized)


def onnx_name(quantized: bool) -> str:
    """The ONNX model's path inside a bundle, as the manifest's seal names it."""
    return f"{ONNX_DIR}/{ONNX_INT8 if quantized else ONNX_FP32}"


def sealed_files(bundle_dir: str | Path) -> list[str]:
    """The files a seal records, by '/'-separated path inside the bundle: every file at the top level
    and in ``onnx/``, but the manifest (it holds the record) and hidden ones (staging, temporary files)."""
    bundle_dir = Path(bundle_dir)
    return sorted(path.relative_to(bundle_dir).as_posix()
                  for directory in (bundle_dir, bundle_dir / ONNX_DIR) if directory.is_dir()
                  for path in directory.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST)


def model_file(name: str) -> bool:
    """Whether loading a model may read the bundle's file ``name`` (a path as :func:`sealed_files` gives it)."""
    return name in (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, VOCAB_FILE) or \
        name.startswith(f"{ONNX_DIR}/") or ("/" not in name and name.endswith(WEIGHT_SUFFIXES))


def weights_files(bundle_dir: str | Path) -> list[str]:
    """The PyTorch weights files transformers loads from the bundle."""
    return [name for name in sealed_files(bundle_dir) if "/" not in name and name.endswith(WEIGHT_SUFFIXES)]
