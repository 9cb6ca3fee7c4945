"""The typed manifest: strict reading, one line per bad field, and the migration of older schema versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from classifier.bundle import read_manifest, write_manifest
from classifier.errors import UserError
from classifier.manifest import SCHEMA_VERSION
from classifier.predict import Predictor

V1_MANIFEST = Path(__file__).parent / "data" / "manifest_v1.json"


@pytest.mark.parametrize(("written", "read"), [(0.1, None), (0.2, 0.2)])
def test_version_4s_default_validation_share_reads_as_the_default(exported_bundle: Path, tmp_path: Path,
                                                                    written: float, read: float | None) -> None:
    # Version 4 wrote its default 0.1 as if given; a retrain of such a bundle sizes its split as training now does.
    old = json.loads((exported_bundle / "manifest.json").read_text())
    old["data"]["options"]["validation_fraction"] = written
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "schema_version": 4}))
    assert read_manifest(tmp_path).data.options.validation_fraction == read


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("max_length"), r"\(max_length: a whole number >= 2 expected, found null\)"),
    (lambda m: m.update(labels="billing"), r"labels: a list of label names expected, found \"billing\""),
    (lambda m: m.update(labels=[]), r"labels: a list of label names expected, found \[\]"),
    (lambda m: m.update(labels=["a", "b", "a"]), r"labels: 'a' listed more than once"),
    (lambda m: m.update(thresholds=None), r"thresholds: an object expected, found null"),
    (lambda m: m["thresholds"].update({"global": "NaN"}), r"thresholds.global: a number expected, found \"NaN\""),
    (lambda m: m.update(text=None), r"text: an object expected, found null"),
    (lambda m: m.update(serving={"engine": "fp16"}), r"serving.engine: int8 or fp32 or torch expected, found \"fp16\""),
    (lambda m: m.pop("bundle_version"), r"bundle_version: a string expected, found null"),
    # Values Python would happily read the wrong way: "no" as true, a string as its characters.
    (lambda m: m["text"].update(strip_html="no"), r"text.strip_html: true or false expected, found \"no\""),
    (lambda m: m["text"].update(fields="subject"), r"text.fields: a list expected, found \"subject\""),
    (lambda m: m.update(max_lenght=96), r"max_lenght: not a manifest field"),  # a typo is not ignored
    # Read only when a ticket is out of scope: checked at load, not left to fail a request.
    (lambda m: m["out_of_scope"].update(route_to="Misc"), r"out_of_scope.route_to: 'Misc' is not one of the labels"),
    # A threshold for no label would never apply: a typo, or a label renamed above but not here.
    (lambda m: m["thresholds"].update(per_class={"Biling": 0.9}),
     r"thresholds.per_class: 'Biling' is not one of the labels \(renamed\? rename it here too\)"),
])
def test_a_manifest_edited_out_of_shape_is_a_clear_error(bundle_copy: Path, hand_edit, edit, message: str) -> None:
    hand_edit(bundle_copy, edit)
    with pytest.raises(UserError, match="manifest does not fit this release .*" + message):
        Predictor.load(bundle_copy)


def test_a_manifest_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_manifest(tmp_path)


def test_reading_and_writing_a_manifest_changes_nothing(exported_bundle: Path, tmp_path: Path) -> None:
    written = json.loads((exported_bundle / "manifest.json").read_text())
    write_manifest(tmp_path, read_manifest(exported_bundle))
    assert json.loads((tmp_path / "manifest.json").read_text()) == written
    assert written["schema_version"] == SCHEMA_VERSION


def test_a_manifest_of_schema_version_1_is_migrated(tmp_path: Path) -> None:
    shutil.copy(V1_MANIFEST, tmp_path / "manifest.json")
    manifest = read_manifest(tmp_path)
    assert manifest.schema_version == SCHEMA_VERSION and manifest.labels == ["billing", "login", "other"]
    assert manifest.data.options.min_class_count == 5 and manifest.data.options.merge_rare_classes is True
    assert manifest.data.seed == 7 and manifest.data.merged_into_other == ["legal"]
    assert manifest.data.train.rows_used == 99 and manifest.data.train.label_column == "category"
    assert manifest.training.options.epochs == 12.0 and manifest.training.precision_used == "bf16"
    assert manifest.training.validation_metrics["macro_f1"] == 0.901
    assert manifest.export.drift.examples == 11 and manifest.engine == "int8"
    assert manifest.thresholds.threshold_of("billing") == 0.62 and manifest.thresholds.threshold_of("login") == 0.5
    assert manifest.temperature == 0.61 and manifest.baseline is None
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == 1  # the file is left as it is


def test_a_manifest_of_schema_version_2_is_migrated_unsealed(exported_bundle: Path, tmp_path: Path) -> None:
    old = json.loads((exported_bundle / "manifest.json").read_text())
    del old["integrity"], old["out_of_scope"]  # schema versions 3 and 4 added them
    (tmp_path / "manifest.json").write_text(json.dumps({**old, "schema_version": 2}))
    manifest = read_manifest(tmp_path)
    assert manifest.schema_version == SCHEMA_VERSION == 5 and manifest.integrity is None
    assert manifest.out_of_scope is None
    assert manifest.model_copy(update={"schema_version": 2}).to_json() == {
        **old, "integrity": None, "out_of_scope": None, "schema_version": 2}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["integrity"]["files"]["config.json"].update(sha256="abc"),
     r"integrity.files.config.json.sha256: .*found \"abc\""),
    (lambda m: m["integrity"]["files"]["config.json"].update(size=-1), r"integrity.files.config.json.size: .*found -1"),
    (lambda m: m["integrity"]["files"].update({"../../etc/passwd": m["integrity"]["files"]["config.json"]}),
     r"integrity.files: '../../etc/passwd' is not a path inside the bundle"),
    (lambda m: m.update(integrity={"files": {}}), r"integrity.sealed_by: a string expected, found null"),
])
def test_a_seal_edited_out_of_shape_is_a_clear_error(bundle_copy: Path, hand_edit, edit, message: str) -> None:
    hand_edit(bundle_copy, edit)
    with pytest.raises(UserError, match="manifest does not fit this release .*" + message):
        Predictor.load(bundle_copy)


def test_a_manifest_of_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UserError, match="manifest schema version 99, this release reads 1, 2, 3"):
        read_manifest(tmp_path)


def test_the_served_validation_figures_are_the_blends_where_the_bundle_blends(exported_bundle: Path) -> None:
    manifest = read_manifest(exported_bundle)
    assert manifest.baseline is not None
    alone, alone_f1 = manifest.training.validation_metrics["accuracy"], manifest.training.label_macro_f1
    blended = manifest.baseline.model_copy(update={"blend_weight": 0.4, "blend_metrics": {
        "blend_accuracy": 0.5, "blend_macro_f1": 0.25}})
    served = manifest.model_copy(update={"baseline": blended})
    assert (served.served_validation_accuracy, served.served_validation_macro_f1) == (0.5, 0.25)
    before = manifest.model_copy(update={"baseline": blended.model_copy(update={"blend_metrics": {
        "blend_accuracy": 0.5}})})  # blended before its macro-F1 was recorded: not the model alone's
    assert before.served_validation_macro_f1 is None
    unblended = manifest.model_copy(update={"baseline": blended.model_copy(update={"blend_weight": 0.0})})
    assert (unblended.served_validation_accuracy, unblended.served_validation_macro_f1) == (alone, alone_f1)


def test_a_blending_bundle_records_the_blends_macro_f1(exported_bundle: Path) -> None:
    manifest = read_manifest(exported_bundle)
    assert manifest.baseline is not None and 0 <= manifest.baseline.blend_metrics["blend_macro_f1"] <= 1
