"""Bundle integrity (classifier/integrity.py): training and export seal the files, loading checks them and
that labels, tokenizer, config and model agree, and every broken bundle of the audit (issue 19) ends in
one line naming the file or field and exit code 2, never served; ``ticketclf bundle verify | seal``."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from classifier import bundle
from classifier.bundle import read_manifest, write_manifest
from classifier.cli import main
from classifier.errors import UserError
from classifier.export import export
from classifier.integrity import SEALED_BY_EXPORT, SEALED_BY_HAND, SEALED_BY_TRAIN, file_digest, seal
from classifier.manifest import SCHEMA_VERSION
from classifier.predict import Predictor

INT8 = "onnx/model_int8.onnx"


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, list[str]]:
    """Run ``ticketclf ARGS``: its exit code, standard output and the lines of its standard error."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def unseal(bundle_dir: Path) -> None:
    """The manifest as releases before schema version 3 wrote it: no file hashes."""
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest["integrity"]
    manifest["schema_version"] = 2
    path.write_text(json.dumps(manifest), encoding="utf-8")


# ---------------------------------------------------------------- the audit's broken bundles, as real files


def flip_bytes(bundle_dir: Path) -> None:
    """200 KB of flipped bytes in the middle of the int8 model: same size, another model."""
    path = bundle_dir / INT8
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200_000] = bytes(byte ^ 0xFF for byte in data[middle:middle + 200_000])
    path.write_bytes(bytes(data))


def reverse_labels(bundle_dir: Path) -> None:
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["labels"].reverse()
    path.write_text(json.dumps(manifest), encoding="utf-8")


def shift_vocabulary(bundle_dir: Path, shift: Callable[[int, int], int] = lambda index, size: index + 1) -> None:
    path = bundle_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    vocabulary = tokenizer["model"]["vocab"]
    tokenizer["model"]["vocab"] = {token: shift(index, len(vocabulary)) for token, index in vocabulary.items()}
    path.write_text(json.dumps(tokenizer), encoding="utf-8")


def rotate_vocabulary(bundle_dir: Path) -> None:
    """Every id one further, the last wrapping round to 0: as many tokens, ids in range, all wrong."""
    shift_vocabulary(bundle_dir, lambda index, size: (index + 1) % size)


def truncate_onnx(bundle_dir: Path) -> None:
    path = bundle_dir / INT8
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def empty_onnx(bundle_dir: Path) -> None:
    (bundle_dir / INT8).write_bytes(b"")


def garbage_onnx(bundle_dir: Path) -> None:
    path = bundle_dir / INT8
    path.write_bytes(os.urandom(path.stat().st_size))


def invalid_tokenizer(bundle_dir: Path) -> None:
    (bundle_dir / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordPiece"', encoding="utf-8")


def invalid_tokenizer_config(bundle_dir: Path) -> None:
    (bundle_dir / "tokenizer_config.json").write_text('{"pad_token": "[PAD]",', encoding="utf-8")


def max_length_1000(bundle_dir: Path) -> None:
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["max_length"] = 1000
    path.write_text(json.dumps(manifest), encoding="utf-8")


LABELS_REVERSED = r"manifest.json: labels disagree with config.json's id2label, the order the model was trained in: " \
                  r"'\w+' is output \d+ there, 0 in the manifest \(a reordered label list\?\)"
MAX_LENGTH = r"manifest.json: max_length 1000 is more than the encoder reads: 512 tokens \(config.json " \
             r"max_position_embeddings 512\)"
CHANGED = r": sha256 differs from the sealed one: corrupted or changed since the bundle was sealed"
RESIZED = r" bytes, sealed with [\d,]+: truncated or replaced since the bundle was sealed"

SEALED_CASES = {  # the audit's cases on a sealed bundle, as training and export leave it
    "200 KB flipped in the int8 model": (flip_bytes, INT8 + CHANGED),
    "reversed label list": (reverse_labels, LABELS_REVERSED),
    "shifted vocabulary": (shift_vocabulary, r"tokenizer.json: [\d,]+" + RESIZED),  # rewritten: another size
    "truncated ONNX file": (truncate_onnx, INT8 + r": [\d,]+" + RESIZED),
    "empty ONNX file": (empty_onnx, INT8 + r": 0" + RESIZED),
    "garbage ONNX file": (garbage_onnx, INT8 + CHANGED),
    "invalid tokenizer.json": (invalid_tokenizer, r"tokenizer.json: [\d,]+" + RESIZED),
    "invalid tokenizer_config.json": (invalid_tokenizer_config, r"tokenizer_config.json: [\d,]+" + RESIZED),
    "max_length 1000": (max_length_1000, MAX_LENGTH),
}
NOT_ONNX = INT8 + r": not a model onnxruntime can load \(\w+: .*\); export the bundle again"
UNSEALED_CASES = {  # the same on a bundle from before seals: what agreement and parsing catch without hashes
    "reversed label list": (reverse_labels, LABELS_REVERSED),
    "shifted vocabulary": (shift_vocabulary, r"tokenizer.json: token ids reach 30522 or more \(\d+ tokens\), but the "
                                             r"model has 30522 embedding rows \(config.json vocab_size\).* a shifted "
                                             r"vocabulary"),
    "rotated vocabulary": (rotate_vocabulary,
                           r"tokenizer.json: '.+' has id \d+, .* gives it \d+: a shifted vocabulary\?"),
    "truncated ONNX file": (truncate_onnx, NOT_ONNX),
    "empty ONNX file": (empty_onnx, NOT_ONNX),
    "garbage ONNX file": (garbage_onnx, NOT_ONNX),
    "invalid tokenizer.json": (invalid_tokenizer, r"tokenizer.json: not a tokenizer the tokenizers library can read"),
    "invalid tokenizer_config.json": (invalid_tokenizer_config, r"tokenizer_config.json: not valid JSON"),
    "max_length 1000": (max_length_1000, MAX_LENGTH),
}


def assert_refused_in_one_line(bundle_dir: Path, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UserError, match=message) as refused:
        Predictor.load(bundle_dir)
    assert "\n" not in str(refused.value)
    code, out, err = cli(capsys, "predict", str(bundle_dir), "I was charged twice")
    assert (code, out, len(err)) == (2, "", 1), err
    assert err[0].startswith("ticketclf predict: error: ") and "Traceback" not in err[0]


@pytest.mark.parametrize("case", list(SEALED_CASES))
def test_each_broken_bundle_of_the_audit_is_one_line_and_exit_2(bundle_copy: Path, case: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    corrupt, message = SEALED_CASES[case]
    corrupt(bundle_copy)
    assert_refused_in_one_line(bundle_copy, message, capsys)


@pytest.mark.parametrize("case", list(UNSEALED_CASES))
def test_an_unsealed_bundle_broken_so_is_refused_by_agreement_or_parsing(bundle_copy: Path, case: str,
                                                                          capsys: pytest.CaptureFixture) -> None:
    unseal(bundle_copy)
    corrupt, message = UNSEALED_CASES[case]
    corrupt(bundle_copy)
    assert_refused_in_one_line(bundle_copy, message, capsys)


def test_two_labels_swapped_are_refused_and_a_label_renamed_is_not(bundle_copy: Path, hand_edit,
                                                                   capsys: pytest.CaptureFixture) -> None:
    labels = read_manifest(bundle_copy).labels
    hand_edit(bundle_copy, lambda m: m.update(labels=[labels[1], labels[0], *labels[2:]]))
    with pytest.raises(UserError, match=rf"labels disagree .*: '{labels[1]}' is output 1 there, 0 in the manifest"):
        Predictor.load(bundle_copy)
    hand_edit(bundle_copy, lambda m: m.update(labels=[labels[0].upper(), "renamed", *labels[2:]]))
    assert Predictor.load(bundle_copy).labels[:2] == [labels[0].upper(), "renamed"]
    # It serves, and verify, which says the labels agree with the config, says which were renamed.
    code, out, _ = cli(capsys, "bundle", "verify", str(bundle_copy))
    assert code == 0 and (f"; labels (renamed in the manifest since training: {labels[0]!r} -> "
                          f"{labels[0].upper()!r}, {labels[1]!r} -> 'renamed'), tokenizer, config") in out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["text"].update(strip_html="no"), r"text.strip_html: true or false expected, found \"no\""),
    (lambda m: m["text"].update(fields="subject"), r"text.fields: a list expected, found \"subject\""),
])
def test_manifest_values_python_would_misread_are_one_line_and_exit_2(bundle_copy: Path, hand_edit, edit,
                                                                      message: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    hand_edit(bundle_copy, edit)
    assert_refused_in_one_line(bundle_copy, message, capsys)


def test_a_manifest_nested_100000_deep_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    for command in ("predict", "bundle"):
        code, _, err = cli(capsys, *([command, str(tmp_path), "a ticket"] if command == "predict" else
                                     [command, "verify", str(tmp_path)]))
        assert code == 2 and len(err) == 1 and "manifest is not valid JSON (nested too deeply)" in err[0]


# ---------------------------------------------------------------- sealing at training and export


def test_training_and_export_seal_every_file_the_bundle_serves_from(tiny_bundle: Path, exported_bundle: Path) -> None:
    trained, exported = read_manifest(tiny_bundle).integrity, read_manifest(exported_bundle).integrity
    assert trained is not None and exported is not None
    assert trained.sealed_by == SEALED_BY_TRAIN and exported.sealed_by == SEALED_BY_EXPORT
    served = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    assert served <= set(trained.files) and not any(name.startswith("onnx/") for name in trained.files)
    assert set(exported.files) == set(trained.files) | {"onnx/model.onnx", INT8}
    for bundle_dir, sealed in ((tiny_bundle, trained), (exported_bundle, exported)):
        assert set(sealed.files) == set(bundle.sealed_files(bundle_dir))  # all but the manifest and reports/
        assert all(file_digest(bundle_dir / name) == digest for name, digest in sealed.files.items())


def test_an_export_refuses_a_model_changed_since_it_was_sealed(bundle_copy: Path) -> None:
    weights = bundle_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000:] = bytes(1000)
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors" + CHANGED):
        export(bundle_copy)


def test_loading_reads_only_what_its_engine_needs(bundle_copy: Path, tmp_path: Path) -> None:
    """The service's copy of the last good model keeps only the files its engine reads: it verifies."""
    from service_helpers import ctx

    from service import create_app
    from service.model import BundleSource, _snapshot

    app = create_app({"BUNDLE": bundle_copy, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                      "RELOAD_INTERVAL": 0})
    copy = _snapshot(ctx(app).served.current, tmp_path / "snapshots", BundleSource(bundle_copy))
    assert copy is not None and not (copy / "model.safetensors").exists() and not (copy / "onnx/model.onnx").exists()
    assert Predictor.load(copy).engine_kind == "int8" and Predictor.load(copy).detector is not None
    (bundle_copy / "onnx" / "model.onnx").unlink()  # a sealed file no engine here reads
    assert Predictor.load(bundle_copy).engine_kind == "int8"


def test_a_load_as_an_export_commits_waits_for_its_manifest_and_a_broken_seal_still_fails(bundle_copy: Path) -> None:
    """An export renames its models into place, then writes the manifest that seals them: a load in between
    sees new models and the old seal. Here the old seal is one that records another size for the int8 model."""
    committed, manifest = read_manifest(bundle_copy), read_manifest(bundle_copy)
    sealed = manifest.integrity.files[INT8]
    manifest.integrity.files[INT8] = sealed.model_copy(update={"size": sealed.size + 1})
    write_manifest(bundle_copy, manifest)
    export_commits = threading.Timer(0.2, write_manifest, (bundle_copy, committed))
    export_commits.start()
    try:
        assert Predictor.load(bundle_copy).engine_kind == "int8"
    finally:
        export_commits.join()
    write_manifest(bundle_copy, manifest)  # no export under way: the same seal is refused
    with pytest.raises(UserError, match="truncated or replaced"):
        Predictor.load(bundle_copy)


def test_a_corrupted_model_is_never_served_by_a_live_swap(bundle_copy: Path) -> None:
    from service_helpers import ctx

    from service import create_app

    app = create_app({"BUNDLE": bundle_copy, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False,
                      "RELOAD_INTERVAL": 0})
    served = ctx(app).served
    flip_bytes(bundle_copy)
    assert not served.check(force=True)
    assert INT8 in served.swap_error and "sha256 differs from the sealed one" in served.swap_error
    response = app.test_client().post("/classify", json={"text": "I was charged twice"})
    assert response.status_code == 200  # by the model loaded before
    with pytest.raises(UserError, match=INT8 + CHANGED):  # a fresh server does not start on it
        create_app({"BUNDLE": bundle_copy, "THREADS": 1, "API_KEYS": "", "ACCESS_LOG": False, "RELOAD_INTERVAL": 0})


# ---------------------------------------------------------------- ticketclf bundle verify | seal


def test_the_bundle_commands_have_help(capsys: pytest.CaptureFixture) -> None:
    for command in (["bundle"], ["bundle", "verify"], ["bundle", "seal"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0 and f"usage: ticketclf {' '.join(command)}" in capsys.readouterr().out


def test_verify_says_ok_for_an_intact_bundle(exported_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(capsys, "bundle", "verify", str(exported_bundle))
    assert (code, err) == (0, [])
    sealed = len(read_manifest(exported_bundle).integrity.files)
    assert out == (f"{exported_bundle}: OK: {sealed} sealed files match their size and sha256 (sealed by export, "
                   f"{read_manifest(exported_bundle).integrity.sealed_at}); labels, tokenizer, config and max_length "
                   "agree; int8, fp32 load and score a ticket; int8 serves\n")


def test_verify_prints_one_line_per_problem(bundle_copy: Path, capsys: pytest.CaptureFixture) -> None:
    flip_bytes(bundle_copy)
    (bundle_copy / "special_tokens_map.json").unlink()  # sealed, read by no engine
    max_length_1000(bundle_copy)
    code, out, err = cli(capsys, "bundle", "verify", str(bundle_copy))
    assert code == 2 and out == "" and len(err) == 3, err
    assert all(line.startswith("ticketclf bundle verify: ") for line in err)
    assert INT8 + ": sha256 differs from the sealed one" in err[0]
    assert "special_tokens_map.json: missing, but the manifest seals it" in err[1]
    assert "manifest.json: max_length 1000 is more than the encoder reads" in err[2]


def test_verify_loads_each_model_and_seal_vouches_only_for_one_that_loads(bundle_copy: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    garbage_onnx(bundle_copy)
    code, out, err = cli(capsys, "bundle", "seal", str(bundle_copy))
    assert code == 2 and out == "" and len(err) == 1
    assert re.search("not sealed, since it would not load: .*" + NOT_ONNX, err[0])
    manifest = read_manifest(bundle_copy)  # sealed as it is all the same, by a script of someone's own
    write_manifest(bundle_copy, manifest.model_copy(update={"integrity": seal(bundle_copy, "a script")}))
    code, out, err = cli(capsys, "bundle", "verify", str(bundle_copy))
    assert code == 2 and out == "" and len(err) == 1 and re.search(NOT_ONNX, err[0])


def test_seal_records_a_deliberate_edit_and_says_what_changed(bundle_copy: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    path = bundle_copy / "tokenizer_config.json"
    before = path.stat().st_size
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_max_length"] = 256  # an edit by hand, on purpose
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer_config.json: [\\d,]+" + RESIZED):
        Predictor.load(bundle_copy)

    code, out, err = cli(capsys, "bundle", "seal", str(bundle_copy))
    assert (code, err) == (0, [])
    files = len(read_manifest(bundle_copy).integrity.files)
    assert out.splitlines() == [
        f"  tokenizer_config.json: changed ({before:,} -> {path.stat().st_size:,} bytes, sha256 "
        + out.split("sha256 ", 1)[1].split("\n", 1)[0],
        f"{bundle_copy}: sealed {files} files; 1 changed since the last seal"]
    assert read_manifest(bundle_copy).integrity.sealed_by == SEALED_BY_HAND
    assert Predictor.load(bundle_copy).predict(["I was charged twice"])[0].label
    assert cli(capsys, "bundle", "seal", str(bundle_copy))[1] == \
        f"{bundle_copy}: all {files} files as sealed already; nothing changed\n"


def test_seal_refuses_a_bundle_that_would_not_load(bundle_copy: Path, capsys: pytest.CaptureFixture) -> None:
    reverse_labels(bundle_copy)
    manifest = (bundle_copy / "manifest.json").read_bytes()
    code, out, err = cli(capsys, "bundle", "seal", str(bundle_copy))
    assert code == 2 and out == "" and len(err) == 1
    assert "not sealed, since it would not load: " in err[0] and "labels disagree with config.json" in err[0]
    assert (bundle_copy / "manifest.json").read_bytes() == manifest


# ---------------------------------------------------------------- bundles from before seals


def test_an_unsealed_bundle_loads_with_one_warning_until_it_is_sealed(bundle_copy: Path,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     capsys: pytest.CaptureFixture) -> None:
    unseal(bundle_copy)
    assert read_manifest(bundle_copy).integrity is None
    predictor = Predictor.load(bundle_copy)
    assert predictor.predict(["I was charged twice"])[0].label in predictor.labels
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [f"{bundle_copy}: unsealed bundle (its manifest records no file hashes: written before "
                        f"schema version 3), so its files are not verified; 'ticketclf bundle seal {bundle_copy}' "
                        "records them"]

    code, _, err = cli(capsys, "bundle", "verify", str(bundle_copy))
    assert code == 2 and len(err) == 1 and "unsealed bundle" in err[0]
    code, out, _ = cli(capsys, "bundle", "seal", str(bundle_copy))
    files = len(bundle.sealed_files(bundle_copy))
    assert code == 0 and out == f"{bundle_copy}: sealed {files} files (it was unsealed)\n"
    assert json.loads((bundle_copy / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert cli(capsys, "bundle", "verify", str(bundle_copy))[0] == 0
    caplog.clear()
    Predictor.load(bundle_copy)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_an_export_seals_an_unsealed_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from classifier.export import ExportOptions

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    unseal(copy)
    export(copy, ExportOptions(optimize=False))
    sealed: Any = read_manifest(copy).integrity
    assert sealed.sealed_by == SEALED_BY_EXPORT and set(sealed.files) == set(bundle.sealed_files(copy))
