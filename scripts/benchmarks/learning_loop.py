"""The learning loop on BANKING77: train on a fifth, then serve, collect feedback, retrain, swap, in rounds.

    python scripts/benchmarks/learning_loop.py --rounds 4 --epochs 4

1. ``ticketclf train`` a model on a fifth of train.csv (a tenth of it set apart as the repository's
   fixed holdout) into a repository and export it (version 1).
2. ``ticketclf serve`` the repository (gunicorn, live swaps) with a feedback database.
3. Each round: the next share of the other four fifths arrives as incoming tickets. Each is classified
   through ``POST /classify``, then its true label is posted as an agent's correction through
   ``POST /feedback`` (with the prediction, so the service counts online agreement). Then
   ``ticketclf retrain --feedback`` trains a challenger on the first fifth plus the corrected tickets,
   evaluates it beside the champion and promotes it or not; the server swaps within seconds, while a
   load of requests runs against it (errors and p99 recorded for the swap).
4. Per round: the test accuracy (test.csv, 3,080 tickets) of champion and challenger, the decision,
   the online agreement, retraining time, and the requests served during the swap.

Appends the run to docs/benchmarks/runs.jsonl (area "learning-loop"). BANKING77 stays in ../shared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import ROOT, publish, record_arguments  # noqa: E402
from loadtest import free_port  # noqa: E402

from classifier.predict import Predictor  # noqa: E402
from classifier.repository import ModelRepository  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"
MODEL = "banking77"


def main() -> int:
    args = parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = read_rows(args.data / "train.csv")
    random.Random(args.seed).shuffle(rows)
    rows = rows[:args.sample] if args.sample else rows
    # A fifth of every class first (stratified: every label is known from version 1), the rest arrives later.
    position: dict[str, int] = {}
    first, incoming = [], []
    for row in rows:
        position[row["category"]] = position.get(row["category"], -1) + 1
        (first if position[row["category"]] % 5 == 0 else incoming).append(row)
    # The repository's fixed holdout, set apart before version 1 trains: no version ever sees it.
    holdout = write_rows(work / "holdout.csv", first[::10])
    first = [row for index, row in enumerate(first) if index % 10]
    export = write_rows(work / "export.csv", first)
    test = read_rows(args.data / "test.csv")[:args.sample or None]
    repository = ModelRepository(work / "models")
    model_dir = repository.model_dir(MODEL)

    started = time.perf_counter()
    cli("train", str(export), "--repository", str(repository.root), "--name", MODEL, *training_flags(args))
    cli("export", str(repository.resolve(MODEL)))
    first_seconds = time.perf_counter() - started
    results: list[dict[str, Any]] = [{"round": 0, "tickets": len(first), "champion": 1,
                                      "champion_accuracy": accuracy(repository.resolve(MODEL), test),
                                      "retrain_seconds": round(first_seconds)}]
    print(f"round 0: {len(first)} tickets, version 1, test accuracy {results[0]['champion_accuracy']:.2%}")

    database = work / "feedback.sqlite"
    port = free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "classifier.cli", "serve", str(model_dir), "--port", str(port)],
                              env={**os.environ, "TICKETCLF_RELOAD_INTERVAL": "1",
                                   "TICKETCLF_FEEDBACK_DB": f"sqlite:///{database}", "TICKETCLF_ACCESS_LOG": "0"},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port)
        chunks = np.array_split(np.arange(len(incoming)), args.rounds)
        for number, chunk in enumerate(chunks, start=1):
            arrivals = [incoming[i] for i in chunk]
            agreement = serve_and_correct(port, arrivals, number)
            champion = repository.serving_state(MODEL).version
            load = Load(port, [row["text"] for row in test[:500]], args.concurrency, args.rate)
            load.start()
            began = time.perf_counter()
            cli("retrain", str(model_dir), "--data", str(export), "--feedback", f"sqlite:///{database}",
                *training_flags(args), *(["--holdout", str(holdout)] if number == 1 else []))
            retrain_seconds = time.perf_counter() - began
            serving = repository.serving_state(MODEL).version
            newest = repository.versions(MODEL)[-1].number
            swapped = wait_for_version(port, str(serving)) if serving != champion else 0.0
            time.sleep(2)
            load.stop()
            history = repository.history(MODEL)[-1]
            result = {"round": number, "tickets": len(first) + int(sum(len(c) for c in chunks[:number])),
                      "online_agreement": round(agreement, 4), "champion": champion, "challenger": newest,
                      "champion_accuracy": accuracy(repository.version(MODEL, champion).path, test),
                      "challenger_accuracy": accuracy(repository.version(MODEL, newest).path, test),
                      "promoted": serving == newest, "reason": history.reason,
                      "retrain_seconds": round(retrain_seconds), "swap_seconds": round(swapped, 1),
                      **load.summary()}
            results.append(result)
            print(json.dumps(result), flush=True)
            if not args.no_record:  # each round as it ends: a run stopped later keeps the rounds it finished
                (args.workdir / "rounds.jsonl").open("a").write(json.dumps(result) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    body = table(results)
    figures = {"rounds": results, "final_accuracy": max(r.get("challenger_accuracy", 0) or 0 for r in results),
               "swap_errors": sum(r.get("errors", 0) for r in results)}
    publish(args, "learning-loop", body, figures,
            notes=f"BANKING77: a fifth of train.csv first, the rest in {args.rounds} rounds as feedback; "
                  f"training flags {' '.join(training_flags(args)) or '(defaults)'}; 2 gunicorn workers, "
                  f"{args.concurrency} clients during each retrain and swap")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=float, help="training epochs (default: ticketclf train's)")
    parser.add_argument("--concurrency", type=int, default=2, help="clients classifying during each retrain")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second per client: a steady "
                        "trickle, not a saturating load that would slow the retrain sharing the cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, help="use only this many training and test tickets (a quick check)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "learning-loop")
    return record_arguments(parser).parse_args()


def training_flags(args: argparse.Namespace) -> list[str]:
    return ["--epochs", str(args.epochs)] if args.epochs else []


def cli(*arguments: str) -> None:
    print("$ ticketclf " + " ".join(arguments), flush=True)
    subprocess.run([sys.executable, "-m", "classifier.cli", *arguments], check=True)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{"id": f"{path.stem}-{i}", "text": row["text"], "category": row["category"]} for i, row in enumerate(rows)]


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def accuracy(bundle: Path, test: list[dict[str, str]]) -> float:
    predictor = Predictor.load(bundle)
    labels = [predictor.labels[i] for i in predictor.predict_proba([r["text"] for r in test]).argmax(axis=1)]
    return round(float(np.mean([p == r["category"] for p, r in zip(labels, test)])), 4)


def post(port: int, path: str, body: Any) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def serve_and_correct(port: int, arrivals: list[dict[str, str]], round_number: int) -> float:
    """Classify the round's tickets through the service, post their true labels as feedback; the agreement."""
    agreed = 0
    for start in range(0, len(arrivals), 64):
        batch = arrivals[start:start + 64]
        answer = post(port, "/classify", {"tickets": [{"id": r["id"], "text": r["text"]} for r in batch], "top_k": 1})
        version = answer["model"]["version"]
        feedback = [{"ticket_id": r["id"], "label": r["category"], "text": r["text"], "predicted_label": p["label"],
                     "model_version": version, "confidence": p["confidence"], "needs_review": p["needs_review"],
                     "event_id": f"round-{round_number}-{r['id']}"}
                    for r, p in zip(batch, answer["predictions"])]
        post(port, "/feedback", {"feedback": feedback})
        agreed += sum(p["label"] == r["category"] for r, p in zip(batch, answer["predictions"]))
    return agreed / len(arrivals)


def wait_ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not become ready")


def wait_for_version(port: int, version: str, timeout: float = 120) -> float:
    """Seconds until 20 answers in a row come from ``version`` (both workers swapped)."""
    began, streak = time.perf_counter(), 0
    while streak < 20:
        if time.perf_counter() - began > timeout:
            raise SystemExit(f"version {version} was not served within {timeout} s")
        answer = post(port, "/classify", {"text": "I still have not received my new card"})
        streak = streak + 1 if answer["model"]["version"] == version else 0
    return time.perf_counter() - began


class Load:
    """Clients classifying single tickets in a loop: errors and latencies while a retrain and swap happen."""

    def __init__(self, port: int, texts: list[str], clients: int, rate: float) -> None:
        self.port, self.texts, self.clients, self.interval = port, texts, clients, 1 / rate
        self.latencies: list[float] = []
        self.errors = 0
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, offset: int) -> None:
        index = offset
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                answer = post(self.port, "/classify", {"text": self.texts[index % len(self.texts)]})
                self.versions.add(answer["model"]["version"])
                self.latencies.append(time.perf_counter() - began)
            except OSError:
                self.errors += 1
            index += self.clients
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - began)))

    def summary(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies) * 1000
        return {"requests_during_retrain": len(self.latencies) + self.errors, "errors": self.errors,
                "p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
                "versions_seen": sorted(self.versions)}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| round | training tickets | online agreement | champion (test acc.) | challenger (test acc.) | "
             "promoted | retrain | swap | requests during retrain, errors, p99 |", "|" + " --- |" * 9]
    for r in results:
        if r["round"] == 0:
            lines.append(f"| 0 | {r['tickets']} | | v1 {r['champion_accuracy']:.2%} | | | {r['retrain_seconds']} s "
                         "(train + export) | | |")
            continue
        lines.append(f"| {r['round']} | {r['tickets']} | {r['online_agreement']:.2%} | v{r['champion']} "
                     f"{r['champion_accuracy']:.2%} | v{r['challenger']} {r['challenger_accuracy']:.2%} | "
                     f"{'yes' if r['promoted'] else 'no'} | {r['retrain_seconds']} s | {r['swap_seconds']} s | "
                     f"{r['requests_during_retrain']}, {r['errors']}, {r['p99_ms']} ms |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
