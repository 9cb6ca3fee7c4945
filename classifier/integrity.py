"""Bundle integrity: sealed files, checked as a model loads, and parts that agree.

Training and export *seal* a bundle: the manifest's ``integrity`` section records the sha256 and size
of every file at its top level and in ``onnx/`` (:func:`classifier.bundle.sealed_files`). Loading a
model (``Predictor.load``: the CLI, the service, its live swaps) reads each file the chosen engine
needs once (config, tokenizer files, the ONNX model or the PyTorch weights) through
:class:`BundleFiles`, which refuses one that differs from its record, and then checks that the parts
agree (:func:`agreement_problems`): the labels with the model's own ``id2label``, the tokenizer's ids
with the model's embedding rows and its special tokens with ``tokenizer_config.json``, ``max_length``
with the encoder's position embeddings. Every refusal is one line naming the file or field.

A bundle whose manifest records no hashes (schema version 2 and before) is *unsealed*: it loads, with
one warning, its files unverified. ``ticketclf bundle seal`` records them (also after a deliberate
hand edit); ``ticketclf bundle verify`` checks everything (:func:`verify_bundle`).

Sealing guards against corruption and accidents (a bad copy, a truncated upload, an onnx/ folder from
another bundle, a hand edit), not against someone who can rewrite the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classifier import bundle
from classifier.blend import TfidfModel
from classifier.errors import UserError
from classifier.fields import Head, read_heads
from classifier.manifest import FileDigest, Integrity, Manifest
from classifier.oos import OutOfScopeDetector

log = logging.getLogger(__name__)

SEALED_BY_TRAIN = "train"
SEALED_BY_EXPORT = "export"
SEALED_BY_HAND = "ticketclf bundle seal"
# Encoders whose position ids start after the padding id (RoBERTa's family): they read
# max_position_embeddings - pad_token_id - 1 tokens.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "ibert",
                           "roberta-prelayernorm", "xmod", "mpnet")


def digest(data: bytes) -> FileDigest:
    return FileDigest(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def file_digest(path: Path) -> FileDigest:
    """The file's sha256 and size, in one read that keeps one MiB at a time (hashlib.file_digest is 3.11)."""
    sha256, size = hashlib.sha256(), 0
    chunk = bytearray(2**20)
    view = memoryview(chunk)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(chunk):
            sha256.update(view[:count])
            size += count
    return FileDigest(sha256=sha256.hexdigest(), size=size)


def seal(bundle_dir: Path, by: str) -> Integrity:
    """A record of the bundle's files as they are now."""
    return seal_of(by, {name: file_digest(bundle_dir / name) for name in bundle.sealed_files(bundle_dir)})


def seal_of(by: str, files: dict[str, FileDigest]) -> Integrity:
    """The manifest's seal of ``files``, made now by ``by``."""
    return Integrity(sealed_by=by, sealed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     files=dict(sorted(files.items())))


def _remedy(bundle_dir: Path) -> str:
    return f"restore it, or export or train again ('ticketclf bundle seal {bundle_dir}' records a deliberate change)"


def mismatch(bundle_dir: Path, name: str, sealed: FileDigest, size: int, sha256: str | None = None) -> str | None:
    """What differs between a file as sealed and as found (its size, and its sha256 if given), in one line;
    None if nothing does."""
    path = bundle_dir / name
    if size != sealed.size:
        return (f"{path}: {size:,} bytes, sealed with {sealed.size:,}: truncated or replaced since the bundle "
                f"was sealed; {_remedy(bundle_dir)}")
    if sha256 is not None and sha256 != sealed.sha256:
        return (f"{path}: sha256 differs from the sealed one: corrupted or changed since the bundle was sealed; "
                f"{_remedy(bundle_dir)}")
    return None


def _missing(bundle_dir: Path, name: str) -> str:
    return f"{bundle_dir / name}: missing, but the manifest seals it; {_remedy(bundle_dir)}"


def _not_sealed(bundle_dir: Path, name: str) -> str:
    return (f"{bundle_dir / name}: not sealed (the manifest records no sha256 for it: added since?); check it, "
            f"then 'ticketclf bundle seal {bundle_dir}'")


def unsealed_warning(bundle_dir: Path) -> str:
    return (f"{bundle_dir}: unsealed bundle (its manifest records no file hashes: written before schema version 3), "
            f"so its files are not verified; 'ticketclf bundle seal {bundle_dir}' records them")


class SealBroken(UserError):
    """A bundle file differs from the manifest's seal (or is missing, or not sealed): damaged, edited, or, for
    a moment, an export's new models beside the manifest it has yet to write."""


class BundleFiles:
    """A bundle's files, each read once and, with ``check``, compared with the manifest's seal before it is
    used: small ones parsed from the bytes checked (:meth:`read`), models checked before the library that
    loads them reads them (:meth:`loading`). An unsealed bundle's files are read unchecked, after one
    warning."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, check: bool = True) -> None:
        self.bundle_dir = bundle_dir
        self.sealed = manifest.integrity.files if check and manifest.integrity else None
        if check and manifest.integrity is None:
            log.warning("%s", unsealed_warning(bundle_dir))

    def read(self, name: str, required: bool = True) -> bytes | None:
        """The file's bytes, checked; None for a missing file that is not ``required`` (nor sealed)."""
        path = self.bundle_dir / name
        record = self._record(name, path, required)
        if record is None and not path.is_file():
            return None
        if record is not None and (problem := mismatch(self.bundle_dir, name, record, path.stat().st_size)):
            raise SealBroken(problem)  # a file of another size is not read, nor hashed
        data = path.read_bytes()
        self._compare(name, record, digest(data) if record is not None else None)
        return data

    @contextmanager
    def loading(self, name: str) -> Iterator[Path]:
        """Check a file that another library then reads by path (an ONNX model, PyTorch weights) in the block:
        hashed in one streaming read, not kept in memory (onnxruntime given the bytes copies them twice: 0.2 s
        more for an 87 MB model). A file replaced or rewritten meanwhile is an error when the block ends."""
        path = self.bundle_dir / name
        record = self._record(name, path, required=True)
        before = path.stat()
        if record is not None and (problem := mismatch(self.bundle_dir, name, record, before.st_size)):
            raise SealBroken(problem)
        self._compare(name, record, file_digest(path) if record is not None else None)
        yield path
        after = path.stat()
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != \
                (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns):
            raise SealBroken(f"{path}: changed while it was loaded; load the bundle again")

    def _record(self, name: str, path: Path, required: bool) -> FileDigest | None:
        if self.sealed is None:
            if required and not path.is_file():
                raise UserError(f"{path}: missing from the bundle")
            return None
        record = self.sealed.get(name)
        if record is not None and not path.is_file():
            raise SealBroken(_missing(self.bundle_dir, name))
        if record is None and path.is_file():
            raise SealBroken(_not_sealed(self.bundle_dir, name))
        if record is None and required:
            raise UserError(f"{path}: missing from the bundle")
        return record

    def _compare(self, name: str, record: FileDigest | None, found: FileDigest | None) -> None:
        problem = mismatch(self.bundle_dir, name, record, found.size, found.sha256) if record and found else None
        if problem:
            raise SealBroken(problem)


def file_problems(bundle_dir: Path, manifest: Manifest, names: list[str] | None = None) -> dict[str, str]:
    """One line per sealed file that is missing or differs, and per model file not sealed, by file name;
    only those of ``names`` if given. Nothing for an unsealed bundle (see :func:`unsealed_warning`)."""
    if manifest.integrity is None:
        return {}
    sealed = manifest.integrity.files
    problems = {}
    for name in names if names is not None else sorted(sealed):
        if name not in sealed:
            if (bundle_dir / name).is_file():
                problems[name] = _not_sealed(bundle_dir, name)
        elif not (bundle_dir / name).is_file():
            problems[name] = _missing(bundle_dir, name)
        else:
            found = file_digest(bundle_dir / name)
            if problem := mismatch(bundle_dir, name, sealed[name], found.size, found.sha256):
                problems[name] = problem
    if names is None:
        for name in bundle.sealed_files(bundle_dir):
            if name not in sealed and bundle.model_file(name):
                problems[name] = _not_sealed(bundle_dir, name)
    return problems


# ---------------------------------------------------------------- the parts of a model, and their agreement


@dataclass
class ModelParts:
    """What every engine reads besides the model itself, parsed."""

    config: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    vocab: bytes | None = None  # vocab.txt, where the tokenizer has one and the files are not sealed
    detector: OutOfScopeDetector | None = None  # where the manifest names one
    heads: list[Head] | None = None  # the heads of the fields besides the label, where the manifest lists fields
    tfidf: TfidfModel | None = None  # the TF-IDF model the served scores blend in, where the manifest says so
    tfidf_path: Path | None = None


def read_model_parts(files: BundleFiles, manifest: Manifest) -> ModelParts:
    """Read (through ``files``: each once, checked) and parse the config and tokenizer files. vocab.txt
    (not read by any engine) only where no seal vouches for the tokenizer: to cross-check it."""
    bundle_dir = files.bundle_dir
    if not (bundle_dir / bundle.TOKENIZER_FILE).is_file():
        raise UserError(f"{bundle_dir}: bundle has no {bundle.TOKENIZER_FILE} (a fast tokenizer is required)")
    config = bundle.read_json_object(bundle_dir / bundle.CONFIG_FILE, files.read(bundle.CONFIG_FILE))
    tokenizer_config_data = files.read(bundle.TOKENIZER_CONFIG_FILE, required=False)
    tokenizer_config = bundle.read_json_object(bundle_dir / bundle.TOKENIZER_CONFIG_FILE, tokenizer_config_data) \
        if tokenizer_config_data is not None else {}
    tokenizer = parse_tokenizer(bundle_dir / bundle.TOKENIZER_FILE, files.read(bundle.TOKENIZER_FILE))
    vocab = files.read(bundle.VOCAB_FILE, required=False) if files.sealed is None else None
    detector = None
    if manifest.out_of_scope is not None:
        name = manifest.out_of_scope.file
        detector = OutOfScopeDetector.load(bundle_dir / name, files.read(name))
    heads = None
    if manifest.fields:
        data = files.read(bundle.FIELD_HEADS_FILE, required=False)
        if data is None:
            raise UserError(f"{bundle_dir}: the manifest lists fields besides the label, but "
                            f"{bundle.FIELD_HEADS_FILE} is missing; train the bundle again")
        heads = read_heads(data, manifest.fields, bundle_dir / bundle.FIELD_HEADS_FILE)
    tfidf = tfidf_path = None
    if manifest.baseline is not None and manifest.blend_weight > 0:
        tfidf_path = bundle_dir / manifest.baseline.file
        tfidf = TfidfModel.load(tfidf_path, files.read(manifest.baseline.file))
    return ModelParts(config, tokenizer, tokenizer_config, vocab, detector, heads, tfidf, tfidf_path)


def part_files(manifest: Manifest) -> set[str]:
    """The files :func:`read_model_parts` reads, besides the model itself."""
    names = {bundle.CONFIG_FILE, bundle.TOKENIZER_FILE, bundle.TOKENIZER_CONFIG_FILE, bundle.VOCAB_FILE}
    names |= {manifest.out_of_scope.file} if manifest.out_of_scope else set()
    names |= {bundle.FIELD_HEADS_FILE} if manifest.fields else set()
    return names | ({manifest.baseline.file} if manifest.baseline and manifest.blend_weight > 0 else set())


def parse_tokenizer(path: Path, data: bytes | None) -> Any:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json's bytes, or one line saying why there is none."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_buffer(data or b"")
    except Exception as error:  # noqa: BLE001  the Rust library's exceptions have no common type
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"{path}: not a tokenizer the tokenizers library can read ({reason})") from None


def agreement_problems(bundle_dir: Path, manifest: Manifest, parts: ModelParts) -> list[str]:
    """One line per disagreement between the manifest, the model's config and the tokenizer. (The number
    of labels against the model's outputs is checked by running the model: Predictor._check_model.)"""
    problems = [_labels_problem(bundle_dir, manifest, parts.config), _max_length_problem(bundle_dir, manifest,
                                                                                         parts.config)]
    problems += _vocabulary_problems(bundle_dir, parts)
    return [problem for problem in problems if problem]


def require_agreement(bundle_dir: Path, manifest: Manifest, parts: ModelParts) -> None:
    problems = agreement_problems(bundle_dir, manifest, parts)
    if problems:
        more = f" (and {len(problems) - 1} more; 'ticketclf bundle verify {bundle_dir}' lists them)" \
            if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def _labels_problem(bundle_dir: Path, manifest: Manifest, config: dict[str, Any]) -> str | None:
    """The manifest's labels name the model's outputs in order: a label config.json's id2label (written at
    training) gives to another output is a reordered list. (A label renamed in the manifest, to a name
    id2label does not use, is the manifest's to choose.)"""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict):
        return None
    trained = {label: int(index) for index, label in id2label.items() if isinstance(index, str) and index.isdigit()}
    for position, label in enumerate(manifest.labels):
        if trained.get(label, position) != position:
            return (f"{bundle_dir / bundle.MANIFEST}: labels disagree with {bundle.CONFIG_FILE}'s id2label, the "
                    f"order the model was trained in: {label!r} is output {trained[label]} there, {position} in the "
                    "manifest (a reordered label list?)")
    return None


def renamed_labels(manifest: Manifest, config: dict[str, Any]) -> list[str]:
    """``'old' -> 'new'`` for each label the manifest names otherwise than config.json's id2label (which
    training wrote): renamed by hand, which serves, but is worth saying where a check says the labels agree."""
    id2label = config.get("id2label")
    trained = id2label if isinstance(id2label, dict) else {}
    return [f"{trained[str(position)]!r} -> {label!r}" for position, label in enumerate(manifest.labels)
            if isinstance(trained.get(str(position)), str) and trained[str(position)] != label]


def encoder_token_limit(config: dict[str, Any]) -> int | None:
    """The tokens an encoder with this config.json reads at most (its positions, less RoBERTa's family's
    offset); None when the config does not say."""
    positions, padding = config.get("max_position_embeddings"), config.get("pad_token_id")
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    offset = padding + 1 if config.get("model_type") in POSITIONS_AFTER_PADDING and isinstance(padding, int) else 0
    return positions - offset


def _max_length_problem(bundle_dir: Path, manifest: Manifest, config: dict[str, Any]) -> str | None:
    limit = encoder_token_limit(config)
    if limit is None or manifest.max_length <= limit:
        return None
    positions = config["max_position_embeddings"]
    return (f"{bundle_dir / bundle.MANIFEST}: max_length {manifest.max_length} is more than the encoder reads: "
            f"{limit} tokens ({bundle.CONFIG_FILE} max_position_embeddings {positions}); set it to {limit} or less")


def _vocabulary_problems(bundle_dir: Path, parts: ModelParts) -> list[str]:
    """The tokenizer's ids have embedding rows; its special tokens have the ids tokenizer_config.json gives
    them; a WordPiece vocabulary has vocab.txt's order (where the files are not sealed: a token by token
    comparison, 15 ms for 30,522 tokens). A shifted vocabulary fails each."""
    tokenizer, tokenizer_path = parts.tokenizer, bundle_dir / bundle.TOKENIZER_FILE
    problems = []
    rows, size = parts.config.get("vocab_size"), tokenizer.get_vocab_size(with_added_tokens=True)
    if not isinstance(rows, int) or isinstance(rows, bool):
        if rows is not None:
            problems.append(f"{bundle_dir / bundle.CONFIG_FILE}: vocab_size: a whole number expected, found "
                            f"{json.dumps(rows)[:40]}")
    elif size > rows or tokenizer.id_to_token(rows) is not None:
        problems.append(f"{tokenizer_path}: token ids reach {rows} or more ({size} tokens), but the model has {rows} "
                        f"embedding rows ({bundle.CONFIG_FILE} vocab_size): another model's tokenizer, or a shifted "
                        "vocabulary")
    decoder = parts.tokenizer_config.get("added_tokens_decoder")
    for key, token in (decoder.items() if isinstance(decoder, dict) else ()):
        content = token.get("content") if isinstance(token, dict) else None
        if isinstance(content, str) and key.isdigit() and tokenizer.token_to_id(content) != int(key):
            problems.append(f"{tokenizer_path}: {content!r} has id {tokenizer.token_to_id(content)}, "
                            f"{bundle.TOKENIZER_CONFIG_FILE} gives it {key}: a shifted vocabulary?")
            break
    if parts.vocab is not None and type(tokenizer.model).__name__ == "WordPiece":
        listed = [line.rstrip("\r") for line in parts.vocab.decode("utf-8", errors="replace").split("\n")]
        listed = listed[:-1] if listed and not listed[-1] else listed
        ordered = [tokenizer.id_to_token(index) for index in range(len(listed))]
        if ordered != listed:
            index = next(i for i, (ours, theirs) in enumerate(zip(listed, ordered)) if ours != theirs)
            problems.append(f"{tokenizer_path}: id {index} is {ordered[index]!r}, line {index + 1} of "
                            f"{bundle.VOCAB_FILE} has {listed[index]!r}: a shifted vocabulary?")
    return problems


# ---------------------------------------------------------------- ticketclf bundle verify | seal


@dataclass
class Verification:
    defects: list[str]  # one line each of what stops a model from serving; none: it can serve
    summary: str  # what was checked, for the OK line
    unsealed: str | None = None  # nothing vouches for the files (a release before seals): it loads, with this warning

    @property
    def problems(self) -> list[str]:
        """Everything ``bundle verify`` reports: the defects, and a missing seal."""
        return self.defects + ([self.unsealed] if self.unsealed else [])


def verify_bundle(bundle_dir: str | Path) -> Verification:
    """Check everything: the manifest against its schema, every sealed file's size and sha256 (and model
    files not sealed), the parts' agreement, and that each model the bundle has loads and scores a
    ticket (ONNX models; PyTorch when it serves). An unsealed bundle is a problem too: nothing vouches
    for its files."""
    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    broken = file_problems(bundle_dir, manifest)
    engines, model_problems = _model_problems(bundle_dir, manifest, skip=set(broken))
    sealed = manifest.integrity
    files = f"{len(sealed.files)} sealed files match their size and sha256 (sealed by {sealed.sealed_by}, " \
            f"{sealed.sealed_at})" if sealed else "files not sealed"
    renamed = renamed_labels(manifest, bundle.read_json_object(bundle_dir / bundle.CONFIG_FILE)) \
        if (bundle_dir / bundle.CONFIG_FILE).is_file() else []
    labels = f"labels (renamed in the manifest since training: {', '.join(renamed)})" if renamed else "labels"
    return Verification(list(broken.values()) + model_problems,
                        f"{bundle_dir}: OK: {files}; {labels}, tokenizer, config and max_length agree; "
                        f"{', '.join(engines)} load and score a ticket; {manifest.engine} serves",
                        unsealed=unsealed_warning(bundle_dir) if sealed is None else None)


def _model_problems(bundle_dir: Path, manifest: Manifest, skip: set[str]) -> tuple[list[str], list[str]]:
    """The engines loaded, and one line per problem of the parts' agreement or of loading a model (files
    in ``skip`` are known to be broken: their engines are not loaded)."""
    from classifier.predict import Predictor

    files = BundleFiles(bundle_dir, manifest, check=False)
    try:
        parts = read_model_parts(files, manifest)
    except UserError as error:  # a file that differs from its seal is reported as that already
        return [], [] if skip & part_files(manifest) else [str(error)]
    problems = agreement_problems(bundle_dir, manifest, parts)
    if problems:
        return [], problems  # every model would be refused for them
    exported = [engine for engine in ("int8", "fp32") if bundle.onnx_path(bundle_dir, engine == "int8").is_file()]
    if manifest.engine != "torch" and manifest.engine not in exported:
        problems.append(f"{bundle_dir / bundle.onnx_name(manifest.engine == 'int8')}: missing, but the manifest "
                        f"says to serve the {manifest.engine} model")
    engines = exported if exported else ["torch"]
    loaded = []
    for engine in engines:
        weights = bundle.weights_files(bundle_dir) if engine == "torch" else [bundle.onnx_name(engine == "int8")]
        if skip & set(weights):
            continue
        try:
            Predictor.assemble(files, manifest, parts, engine, threads=1)
            loaded.append(engine)
        except UserError as error:
            problems.append(str(error))
    return loaded, problems


@dataclass
class Sealed:
    changes: list[str]  # one line per file added, changed or gone since the last seal
    files: int
    was_sealed: bool


def seal_bundle(bundle_dir: str | Path) -> Sealed:
    """Record the sha256 and size of the bundle's files as they are now (a deliberate hand edit): only
    if its parts agree and its models load, since a seal vouches for the bundle. Atomic."""
    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    _, problems = _model_problems(bundle_dir, manifest, skip=set())
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"not sealed, since it would not load: {problems[0]}{more}")
    before = manifest.integrity.files if manifest.integrity else {}
    now = seal(bundle_dir, SEALED_BY_HAND)
    changes = [f"{name}: {_change(before.get(name), now.files.get(name))}"
               for name in sorted(set(before) | set(now.files)) if before.get(name) != now.files.get(name)]
    if bundle.read_manifest(bundle_dir) != manifest:  # written meanwhile: this seal would undo what was written
        raise UserError(f"{bundle_dir}: not sealed: the bundle changed while it was checked (an export, or "
                        "evaluate applying thresholds, wrote it); seal it again once that is done")
    bundle.write_manifest(bundle_dir, manifest.model_copy(update={"integrity": now}))
    return Sealed(changes if manifest.integrity else [], len(now.files), manifest.integrity is not None)


def _change(before: FileDigest | None, after: FileDigest | None) -> str:
    if before is None:
        return "added"
    if after is None:
        return "gone (no longer sealed)"
    return f"changed ({before.size:,} -> {after.size:,} bytes, sha256 {before.sha256[:12]} -> {after.sha256[:12]})"
