"""Shared fixtures: a small real bundle trained from the bundled sample data, once per session.

The models are real (the packaged MiniLM, fine-tuned for a few steps): tests check
behaviour of the real pipeline, not mocks. Everything runs offline.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from csv_files import read_csv, write_csv
from flask import Flask
from flask.testing import FlaskClient
from service_helpers import KEYS, ctx

from classifier.predict import Predictor
from service import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "data" / "tickets.csv"
BANKING77 = ROOT.parent / "shared" / "data" / "banking77"
TINY_ROWS_PER_CLASS = 30


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-balanced slice of the sample data: enough to learn something in seconds."""
    taken: dict[str, int] = {}
    kept = []
    for row in read_csv(SAMPLE_DATA):
        if taken.get(row["category"], 0) < TINY_ROWS_PER_CLASS:
            taken[row["category"]] = taken.get(row["category"], 0) + 1
            kept.append(row)
    return write_csv(tmp_path_factory.mktemp("data") / "tiny.csv", kept)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle fine-tuned for two short epochs on ``tiny_csv`` (PyTorch only, not exported)."""
    from classifier.options import DataOptions, TrainingOptions
    from classifier.train import train

    output = tmp_path_factory.mktemp("bundles") / "tiny"
    options = TrainingOptions(epochs=3, learning_rate=3e-4, batch_size=16, max_length=96, seed=0)
    return train(tiny_csv, output, options, DataOptions(validation_fraction=0.2))


@pytest.fixture(scope="session")
def exported_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny_bundle`` exported to ONNX fp32 + int8."""
    from classifier.export import export

    output = tmp_path_factory.mktemp("bundles") / "exported"
    shutil.copytree(tiny_bundle, output)
    export(output)
    return output


@pytest.fixture(scope="session")
def fields_csv(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_csv`` with the priority of every seventh ticket unknown (empty) and every eleventh without tags."""
    rows = read_csv(tiny_csv)
    for index, row in enumerate(rows):
        row["priority"] = "" if index % 7 == 3 else row["priority"]
        row["tags"] = "" if index % 11 == 5 else row["tags"]
    return write_csv(tmp_path_factory.mktemp("data") / "fields.csv", rows)


@pytest.fixture(scope="session")
def fields_bundle(fields_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle predicting category, priority and tags, trained as ``tiny_bundle`` and exported."""
    from classifier.export import export
    from classifier.options import DataOptions, TrainingOptions
    from classifier.train import train

    output = tmp_path_factory.mktemp("bundles") / "fields"
    options = TrainingOptions(epochs=3, learning_rate=3e-4, batch_size=16, max_length=96, seed=0)
    train(fields_csv, output, options, DataOptions(validation_fraction=0.2, label_column="category",
                                                   field_columns=("priority",), tags_column="tags"))
    export(output)
    return output


@pytest.fixture()
def bundle_copy(exported_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the exported bundle, for tests that change it."""
    target = tmp_path / "bundle"
    shutil.copytree(exported_bundle, target)
    return target


@pytest.fixture()
def poison_word() -> Callable[[Path, str], None]:
    """``poison_word(bundle_dir, word)`` sets the word's embedding row to NaN in the bundle's fp32 ONNX
    model: a real model that scores NaN for exactly the tickets containing that word (and sealed so: the
    bundle's seal would refuse the changed file before it runs)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    from classifier.bundle import read_manifest, write_manifest
    from classifier.integrity import seal

    def poison(bundle_dir: Path, word: str) -> None:
        token_id = Tokenizer.from_file(str(bundle_dir / "tokenizer.json")).token_to_id(word)
        assert token_id is not None  # a word of the vocabulary, not split into pieces
        path = bundle_dir / "onnx" / "model.onnx"
        model = onnx.load(str(path))
        [table] = [t for t in model.graph.initializer if t.name.endswith("word_embeddings.weight")]
        rows = numpy_helper.to_array(table).copy()
        rows[token_id] = np.nan
        table.CopyFrom(numpy_helper.from_array(rows, table.name))
        onnx.save(model, str(path))
        manifest = read_manifest(bundle_dir)
        write_manifest(bundle_dir, manifest.model_copy(update={"integrity": seal(bundle_dir, "poison_word")}))

    return poison


@pytest.fixture()
def hand_edit() -> Callable[[Path, Callable[[dict[str, Any]], object]], None]:
    """``hand_edit(bundle_dir, edit)`` applies ``edit`` to the bundle's manifest.json as plain JSON, as a
    person editing the file would: the typed manifest refuses most such edits itself."""
    def apply(bundle_dir: Path, edit: Callable[[dict[str, Any]], object]) -> None:
        path = bundle_dir / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        edit(manifest)
        path.write_text(json.dumps(manifest), encoding="utf-8")

    return apply


@pytest.fixture(scope="module")
def app(exported_bundle: Path) -> Flask:
    return create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "LOG_TEXT": False})


@pytest.fixture(scope="module")
def auth_app(exported_bundle: Path) -> Flask:
    return create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": ",".join(KEYS), "LOG_TEXT": True})


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def predictor(app: Flask) -> Predictor:
    return ctx(app).model().predictor
