"""Distributed training, shown to run: the README's ``torchrun`` and ``accelerate launch`` recipes, on CPU.

Two processes (gloo) run the real ``ticketclf train`` command on a small slice of the sample data. The
bundle must be the same kind as the same command's in one process, and written once, by rank 0: each
rank's output is kept apart by the launcher (``--tee 3 --log-dir``), so the test reads who said what.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from classifier import cli
from classifier.bundle import read_examples, read_manifest
from classifier.data import split_file
from classifier.predict import Predictor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's torchrun and accelerate
# The smallest run that goes through every step: one epoch of 3 optimisation steps, short windows.
TRAIN_OPTIONS = ["--epochs", "1", "--max-length", "32"]
LAUNCH_TIMEOUT = 300  # about 20 s each on 2 idle cores


@pytest.fixture(scope="module")
def small_csv(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 % of each class of the sample data, by the product's own stratified split: 107 tickets, 96 to train
    and 11 to validate. Odd on purpose: two processes pad their shares to the same length (the sampler
    repeats a ticket), and evaluation must still count each validation ticket once."""
    folder = tmp_path_factory.mktemp("distributed-data")
    split_file(sample_csv, folder / "rest.csv", folder / "small.csv", test_fraction=0.09)
    return folder / "small.csv"


@pytest.fixture(scope="module")
def one_process(small_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same command without a launcher, in one process (this one)."""
    output = tmp_path_factory.mktemp("one-process") / "model"
    assert cli.main(["train", str(small_csv), "--output", str(output), *TRAIN_OPTIONS]) == 0
    return output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launcher(name: str, logs: Path) -> list[str]:
    """The README's recipes, with each rank's stdout and stderr also kept in ``logs/.../<rank>/``."""
    if name == "torchrun":
        return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--tee", "3", "--log-dir", str(logs)]
    # Every setting is given, so accelerate neither prompts nor reads a config file. --multi_gpu is how
    # accelerate starts N processes (torch's launcher, gloo on CPU); --cpu would start only one.
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "--tee", "3", "--log_dir", str(logs)]


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a launcher in its own process group, so that a timeout ends its workers too."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{command[0]} ran past {LAUNCH_TIMEOUT} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, None)


def _rank_output(logs: Path, rank: int) -> str:
    """What local rank ``rank`` wrote to stdout and stderr (torch's layout: RUN_ID/attempt_0/RANK/)."""
    [folder] = logs.glob(f"*/attempt_0/{rank}")
    return (folder / "stdout.log").read_text(errors="replace") + (folder / "stderr.log").read_text(errors="replace")


def _files(bundle_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(bundle_dir)) for path in bundle_dir.rglob("*"))


# torchrun into a new --output; accelerate with --overwrite over an earlier bundle and an interrupted run's
# checkpoints, which only rank 0 may delete (another rank, a moment later, would delete the new run's).
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_write_one_bundle_like_one_process(launcher: str, small_csv: Path, one_process: Path,
                                                         tmp_path: Path) -> None:
    workspace, logs = tmp_path / "runs", tmp_path / "logs"
    workspace.mkdir()
    output = workspace / "model"
    overwrite = launcher == "accelerate"
    if overwrite:
        shutil.copytree(one_process, output)
        stale = workspace / "model.checkpoints"
        (stale / "checkpoint-3").mkdir(parents=True)
        (stale / "run.json").write_text('{"stale": true}', encoding="utf-8")
    previous = read_manifest(one_process).bundle_version
    # A private HF_HOME: no accelerate config file of this machine's user applies.
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_HOME": str(tmp_path / "hf")}
    command = [*_launcher(launcher, logs), "-m", "classifier.cli", "train", str(small_csv), "--output", str(output),
               *TRAIN_OPTIONS, *(["--overwrite"] if overwrite else [])]

    result = _run(command, env)

    assert result.returncode == 0, result.stdout[-4000:]
    # Written once, by rank 0: the data report, calibration, baseline and summary come from rank 0 only.
    rank0, rank1 = _rank_output(logs, 0), _rank_output(logs, 1)
    for line in ("classifier.train: data report:", "classifier.train: calibration:", "classifier.train: baseline",
                 "bundle written to"):
        assert rank0.count(line) == 1, (line, rank0[-4000:])
    assert not re.search(r"(?m)^classifier[.\w]*: |bundle written", rank1), rank1[-4000:]  # no log line of ours
    # Nothing left beside the bundle: no staging or retired copy, no checkpoints (the stale ones deleted).
    assert sorted(path.name for path in workspace.iterdir()) == ["model"]

    # The same kind of bundle as one process writes: the same files, data, split and settings.
    assert _files(output) == _files(one_process)
    manifest, reference = read_manifest(output), read_manifest(one_process)
    assert manifest.bundle_version != previous
    assert manifest.labels == reference.labels and len(manifest.labels) == 10
    assert (manifest.max_length, manifest.text, manifest.data) == (reference.max_length, reference.text, reference.data)
    assert manifest.training.options == reference.training.options
    assert set(manifest.training.validation_metrics) == set(reference.training.validation_metrics)
    assert {name for name, value in manifest if value is not None} == \
        {name for name, value in reference if value is not None}
    for name in ("reports/data_report.json", "validation.jsonl"):
        assert (output / name).read_bytes() == (one_process / name).read_bytes(), name

    # Loadable by plain transformers and by the product, which predicts. The fine-tuned model's accuracy on the
    # validation split (alone, not blended with TF-IDF) is the manifest's: evaluation in two processes counted
    # each of the 11 tickets once (no padding duplicate).
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == dict(enumerate(manifest.labels))
    texts, labels = read_examples(output)
    assert len(texts) == manifest.data.validation.rows_used == manifest.calibration.tickets == 11
    served = Predictor.load(output)
    assert {p.label for p in served.predict(texts)} <= set(manifest.labels)
    predicted = [served.labels[i] for i in served.logits(texts).argmax(axis=1)]
    accuracy = sum(p == label for p, label in zip(predicted, labels)) / len(labels)
    assert accuracy == pytest.approx(manifest.training.validation_metrics["accuracy"], abs=1e-6)
