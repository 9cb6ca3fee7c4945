"""Batch classification on Ray (classifier/batch.py): a folder of CSV, gzipped JSON Lines and Parquet files
classified by the real sample bundle on a real local Ray, and on a two-node Ray cluster on loopback addresses.

Ray runs for real here (ray start, actors, the object store): nothing is mocked. Ray starts once for the
module (about 5 s); the cluster test starts its own two nodes (about 10 s more).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the ray extra (pip install '.[ray]'); the test extra brings it")

import pyarrow as pa  # noqa: E402  (after the check: the ray extra brings pyarrow)
import pyarrow.parquet as pq  # noqa: E402
from csv_files import cut_cell_file  # noqa: E402

from classifier import batch  # noqa: E402
from classifier.batch import BatchOptions, classify_files, read_output  # noqa: E402
from classifier.data import read_tickets_to_classify  # noqa: E402
from classifier.errors import UserError  # noqa: E402
from classifier.predict import Predictor  # noqa: E402
from classifier.text import ticket_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))
import ray_cluster  # noqa: E402

SAMPLE = ROOT / "data" / "tickets.csv"
PER_FILE = 60  # tickets from the sample in each input file
SHARD_ROWS = 25  # several shards per file
PREDICTION = ("label", "confidence", "needs_review", "truncated")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three files, each with rows that must become rejects:

    - a.csv: sample rows with their ids, and a row with no text after cleaning (its HTML is empty);
    - b.jsonl.gz: sample rows, a line that is not JSON, a body that is a list, and a record without its id
      (classified with id null, as ``predict --file`` gives it: a row number could be another ticket's id);
    - c.parquet: sample rows without an id column (ids are row numbers).
    """
    with open(SAMPLE, newline="", encoding="utf-8") as handle:
        rows = [{key: row[key] for key in ("id", "subject", "body")} for row in csv.DictReader(handle)]
    folder = tmp_path_factory.mktemp("inputs")
    with open(folder / "a.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["id", "subject", "body"])
        writer.writeheader()
        writer.writerows(rows[:PER_FILE] + [{"id": "EMPTY-1", "subject": "", "body": "<p> </p>"}])
    lines = [json.dumps(row) for row in rows[PER_FILE:2 * PER_FILE]]
    lines[10:10] = ['{"id": "BROKEN-1", "subject": "cut off', json.dumps({"subject": "No id", "body": "Where is it"}),
                    json.dumps({"id": "LIST-1", "subject": "A list", "body": ["not", "text"]})]
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    parquet_rows = [{"subject": row["subject"], "body": row["body"]} for row in rows[2 * PER_FILE:3 * PER_FILE]]
    pq.write_table(pa.Table.from_pylist(parquet_rows), folder / "c.parquet")
    (folder / "README.txt").write_text("not a ticket file: a folder's other files are left alone\n")
    return folder


def expected_texts(folder: Path, predictor: Predictor) -> dict[tuple[str, int], tuple[str, str]]:
    """(file name, row) -> (id, cleaned text) of every ticket that should be classified, read independently."""
    options = predictor.text_options
    expected: dict[tuple[str, int], tuple[str, str]] = {}
    for row, (ticket_id, text) in enumerate(read_tickets_to_classify(folder / "a.csv", options), start=2):
        if text:
            expected["a.csv", row] = (ticket_id, text)
    with gzip.open(folder / "b.jsonl.gz", "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record["body"], str):
                expected["b.jsonl.gz", number] = (record.get("id"), ticket_text(record, options))
    for number, record in enumerate(pq.read_table(folder / "c.parquet").to_pylist(), start=1):
        expected["c.parquet", number] = (str(number), ticket_text(record, options))
    return expected


def by_place(records: Iterator[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(Path(record["source"]).name, record["row"]): record for record in records}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the module's runs: classify_files uses a session that is open already."""
    with batch.ray_session():
        yield


@pytest.fixture(scope="module")
def first_run(exported_bundle: Path, inputs: Path, ray_local: None,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, batch.BatchSummary]:
    output = tmp_path_factory.mktemp("batch") / "out"
    options = BatchOptions(actors=2, shard_rows=SHARD_ROWS, progress=False)
    return output, classify_files(exported_bundle, str(inputs), output, options)


def test_a_folder_of_mixed_files_is_classified_as_the_predictor_does(exported_bundle: Path, inputs: Path,
                                                                      first_run: tuple[Path, batch.BatchSummary]
                                                                      ) -> None:
    output, summary = first_run
    predictor = Predictor.load(exported_bundle)
    expected = expected_texts(inputs, predictor)
    got = by_place(read_output(output))
    assert set(got) == set(expected) and len(got) == 3 * PER_FILE + 1
    places = sorted(expected)
    predictions = predictor.predict([expected[place][1] for place in places], cleaned=True)
    for place, prediction in zip(places, predictions):
        record = got[place]
        assert record["id"] == expected[place][0]
        assert {key: record[key] for key in PREDICTION} == {key: prediction.to_dict()[key] for key in PREDICTION}
        assert "top_k" not in record  # only when asked
    assert summary.tickets == 3 * PER_FILE + 1 and summary.rejected == 3
    assert got["b.jsonl.gz", 12]["id"] is None  # no id: null, as predict --file gives it (source and row name it)
    assert summary.labels == {label: sum(1 for p in predictions if p.label == label) for label in summary.labels}
    assert summary.needs_review == sum(p.needs_review for p in predictions)
    assert summary.shards_written == 9 and summary.first_output_s is not None  # 61, 63, 60 rows in shards of 25
    assert all(path.suffix == ".parquet" for path in (output / "shards").iterdir())
    assert any(line.startswith("labels: ") for line in summary.lines())


def test_bad_rows_go_to_the_rejects_file_with_the_reason(inputs: Path,
                                                         first_run: tuple[Path, batch.BatchSummary]) -> None:
    output, _ = first_run
    rejects = [json.loads(line) for line in (output / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    reasons = {(Path(reject["source"]).name, reject["row"]): reject["reason"] for reject in rejects}
    ids = {(Path(reject["source"]).name, reject["row"]): reject["id"] for reject in rejects}
    assert len(rejects) == len(reasons) == 3
    assert ids == {("a.csv", PER_FILE + 2): "EMPTY-1", ("b.jsonl.gz", 11): None,
                   ("b.jsonl.gz", 13): "LIST-1"}  # the id where the row has one
    assert "no text after cleaning" in reasons["a.csv", PER_FILE + 2]
    assert "invalid JSON" in reasons["b.jsonl.gz", 11]
    assert "holds a JSON list" in reasons["b.jsonl.gz", 13]


def test_a_rerun_resumes_and_writes_only_the_missing_shards(exported_bundle: Path, inputs: Path,
                                                             first_run: tuple[Path, batch.BatchSummary],
                                                             tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(first_run[0], output)
    shards = sorted((output / "shards").iterdir())
    lost = [shards[0], shards[4]]  # an interrupted run: these were never renamed into place
    for path in lost:
        path.rename(path.with_name(f".{path.name}.tmp"))
    kept = {path: path.stat().st_mtime_ns for path in shards if path not in lost}
    summary = classify_files(exported_bundle, str(inputs), output,
                             BatchOptions(actors=2, shard_rows=SHARD_ROWS, progress=False))
    assert summary.shards_written == 2 and summary.shards_skipped == 7
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # done shards not rewritten
    assert not list((output / "shards").glob(".*.tmp"))
    assert by_place(read_output(output)) == by_place(read_output(first_run[0]))
    assert (output / "rejects.jsonl").read_bytes() == (first_run[0] / "rejects.jsonl").read_bytes()


def test_another_run_in_the_same_folder_needs_overwrite(exported_bundle: Path, inputs: Path,
                                                        first_run: tuple[Path, batch.BatchSummary],
                                                        tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(first_run[0], output)
    other = BatchOptions(actors=1, shard_rows=SHARD_ROWS, format="jsonl", top_k=2, progress=False)
    with pytest.raises(UserError, match=r"another run \(its format, top_k differ\); pass --overwrite"):
        classify_files(exported_bundle, str(inputs), output, other)
    summary = classify_files(exported_bundle, str(inputs), output, BatchOptions(**{**vars(other), "overwrite": True}))
    assert summary.shards_written == 9 and {path.suffix for path in (output / "shards").iterdir()} == {".jsonl"}
    rows, before = by_place(read_output(output)), by_place(read_output(first_run[0]))
    assert rows.keys() == before.keys()
    for place, record in rows.items():
        assert len(record.pop("top_k")) == 2 and record == before[place]


def test_a_file_read_only_in_part_is_an_error_and_a_changed_one_is_not_resumed(exported_bundle: Path,
                                                                              ray_local: None, tmp_path: Path) -> None:
    folder, output = tmp_path / "nightly", tmp_path / "out"
    folder.mkdir()
    rows = [f"T-{i},Refund please,I was charged twice for order {i}" for i in range(8)]
    rows[3] += ",an extra field"  # row 5, as a spreadsheet numbers it: the CSV cannot be read past it
    (folder / "tickets.csv").write_text("id,subject,body\n" + "\n".join(rows) + "\n")
    options = BatchOptions(actors=1, shard_rows=SHARD_ROWS, progress=False)
    summary = classify_files(exported_bundle, str(folder), output, options)
    assert (summary.tickets, summary.rejected, summary.stopped) == (3, 1, 1)
    assert any(line.startswith("error: 1 file could not be read to the end") for line in summary.lines())
    rerun = classify_files(exported_bundle, str(folder), output, options)  # the same command, as after a stop
    assert (rerun.tickets, rerun.shards_skipped, rerun.stopped) == (0, 1, 1)  # still an error: nothing past row 5

    (folder / "tickets.csv").write_text("id,subject,body\n" + "\n".join(rows[:3] + rows[4:]) + "\n")  # mended
    with pytest.raises(UserError, match=r"tickets\.csv changed since the run that wrote it .*--overwrite"):
        classify_files(exported_bundle, str(folder), output, options)
    summary = classify_files(exported_bundle, str(folder), output, BatchOptions(**{**vars(options), "overwrite": True}))
    assert (summary.tickets, summary.rejected, summary.stopped) == (7, 0, 0)


def test_ids_come_from_the_named_id_column(exported_bundle: Path, ray_local: None, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tickets.csv").write_text("Ref,subject,body\nA-7,Refund,charged twice\nA-8,Login,cannot log in\n")
    options = BatchOptions(actors=1, shard_rows=SHARD_ROWS, progress=False, id_column="ref")
    classify_files(exported_bundle, str(folder), tmp_path / "out", options)
    assert [record["id"] for record in read_output(tmp_path / "out")] == ["A-7", "A-8"]


def test_a_ticket_with_a_cell_cut_when_read_is_marked_truncated(exported_bundle: Path, ray_local: None,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    cut_cell_file(tmp_path / "in" / "tickets.csv")
    classify_files(exported_bundle, str(tmp_path / "in"), tmp_path / "out", BatchOptions(actors=1, progress=False))
    assert [(record["id"], record["truncated"]) for record in read_output(tmp_path / "out")] == [("T-1", False),
                                                                                                 ("T-2", True)]


def test_fields_list_their_top_k_as_the_label_does(fields_bundle: Path, ray_local: None, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tickets.csv").write_text("subject,body\nRefund,charged twice\nLogin,cannot log in\n")
    for top_k, output in ((None, "plain"), (2, "two")):
        options = BatchOptions(actors=1, shard_rows=SHARD_ROWS, progress=False, top_k=top_k)
        classify_files(fields_bundle, str(folder), tmp_path / output, options)
    for record in read_output(tmp_path / "plain"):
        assert "top_k" not in record and "top_k" not in record["fields"]["priority"]
    for record in read_output(tmp_path / "two"):
        assert len(record["top_k"]) == 2 and len(record["fields"]["priority"]["top_k"]) == 2


def test_output_folders_that_are_not_batch_output_are_left_alone(exported_bundle: Path, inputs: Path,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="notes.txt"):
            classify_files(exported_bundle, str(inputs), tmp_path, BatchOptions(overwrite=overwrite, progress=False))
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="no ticket files"):
        classify_files(exported_bundle, str(tmp_path / "*.csv"), tmp_path / "out", BatchOptions(progress=False))
    shards = tmp_path / "out" / "shards"  # an output folder inside the input folder: its shards are not input
    shards.mkdir(parents=True)
    (shards / "tickets-0123456789-00000.jsonl").write_text('{"id": "1", "label": "billing"}\n')
    with pytest.raises(UserError, match="no ticket files outside --output"):
        classify_files(exported_bundle, str(tmp_path), tmp_path / "out", BatchOptions(progress=False))


def run_cli(*args: str, env: dict[str, str] | None = None, code: str = "") -> subprocess.CompletedProcess[str]:
    """``ticketclf`` in a new process: its own Ray, or none; ``code`` runs before the command."""
    program = f"import sys\n{code}\nfrom classifier.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_without_ray_installed_the_error_names_the_extra_and_predict_file_still_works(
        exported_bundle: Path, inputs: Path, tmp_path: Path) -> None:
    no_ray = "sys.modules['ray'] = None  # import ray fails, as where the extra is not installed"
    result = run_cli("predict", str(exported_bundle), "--input", str(inputs), "--output", str(tmp_path / "out"),
                     code=no_ray)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert 'pip install "ticket-classifier[ray]"' in result.stderr and not (tmp_path / "out").exists()
    check = "import atexit; atexit.register(lambda: print('ray imported:', 'ray' in sys.modules))"
    result = run_cli("predict", str(exported_bundle), "--file", str(inputs / "a.csv"), code=check)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "ray imported: False"


@pytest.fixture(scope="module")
def loopback_cluster() -> Iterator[str]:
    """Two Ray nodes on 127.0.0.2 and 127.0.0.3, one CPU each (scripts/benchmarks/ray_cluster.py)."""
    with ray_cluster.loopback_cluster() as cluster:
        yield cluster.address


def test_a_two_node_loopback_cluster_gives_the_same_output(exported_bundle: Path, inputs: Path,
                                                           first_run: tuple[Path, batch.BatchSummary],
                                                           loopback_cluster: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    result = run_cli("predict", str(exported_bundle), "--input", str(inputs), "--output", str(output),
                     "--ray", loopback_cluster, env=ray_cluster.ENV)
    assert result.returncode == 0, result.stderr
    assert "2 actors" in result.stdout  # one per CPU of the cluster: one on each node
    assert by_place(read_output(output)) == by_place(read_output(first_run[0]))
    assert (output / "rejects.jsonl").read_bytes() == (first_run[0] / "rejects.jsonl").read_bytes()
