"""Build the service's Docker image and check it end to end, as a deployment would run it.

    python scripts/benchmarks/docker_image.py runs/banking77
    python scripts/benchmarks/docker_image.py runs/banking77 --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim

Builds the image from the repository's ``Dockerfile``, then checks that it holds neither torch
nor transformers, and runs one container the way ``deploy/kubernetes.yaml`` does: the bundle
mounted read-only at /model, a read-only root filesystem with /tmp as the only writable place,
published on a loopback port only. The container must run as the unprivileged user, answer
``/ready``, classify a ticket over HTTP, count it in ``/metrics`` and turn healthy by its own
HEALTHCHECK. Reports the build time, image size, time to ``/ready`` and memory, and appends
the run to docs/benchmarks/runs.jsonl (area "docker-image"). Exits non-zero at the first failed
check; always removes the container. Needs a Docker engine and the base image (or a registry
that has it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import command_line, publish, record_arguments, table_figures  # noqa: E402
from loadtest import HOST, free_port  # noqa: E402

CONTAINER_UID = "10001"  # the Dockerfile's USER
READY_TIMEOUT_S = 120
HEALTHY_TIMEOUT_S = 90  # the HEALTHCHECK's first probe comes one interval (15 s) after the start
TICKET = {"text": "I was charged twice for the same card payment"}  # every bundle accepts "text"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle.resolve()
    labels = set(json.loads((bundle / "manifest.json").read_text())["labels"])
    results: dict[str, str] = {}

    started = time.perf_counter()
    build = ["docker", "build", "-t", args.tag] + [f"--build-arg={a}" for a in args.build_arg]
    build += ["--no-cache"] if args.no_cache else []
    docker(*build[1:], str(ROOT), capture=False)
    results["build time"] = f"{time.perf_counter() - started:.0f} s"
    results["image size"] = f"{int(docker('image', 'inspect', '-f', '{{.Size}}', args.tag)) / 2**20:.0f} MiB"
    heavy = docker("run", "--rm", "--entrypoint", "python", args.tag, "-c",
                   "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])")
    check(heavy == "[]", f"the image holds {heavy}")
    results["torch / transformers in the image"] = "absent"

    port = free_port()
    name = f"ticketclf-check-{port}"
    docker("run", "--detach", "--name", name, "--publish", f"{HOST}:{port}:8000",
           "--volume", f"{bundle}:/model:ro", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", args.tag)
    try:
        started = time.perf_counter()
        wait_for(lambda: http(port, "/ready")[0] == 200, READY_TIMEOUT_S, f"{name} never became ready", name)
        results["start to /ready"] = f"{time.perf_counter() - started:.1f} s"
        results["user"] = docker("exec", name, "id", "-u")
        check(results["user"] == CONTAINER_UID, f"the container runs as uid {results['user']}")
        status, body = http(port, "/classify", TICKET)
        check(status == 200, f"POST /classify answered {status}: {body[:300]!r}")
        prediction = json.loads(body)["predictions"][0]
        check(prediction["label"] in labels, f"unknown label {prediction['label']!r}")
        results["classified"] = f"{prediction['label']} ({prediction['confidence']:.2f})"
        metrics = http(port, "/metrics")[1].decode()
        check(f'ticketclf_predictions_total{{label="{prediction["label"]}"}} 1.0' in metrics,
              "/metrics does not count the prediction")
        results["/metrics counts it"] = "yes"
        wait_for(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy",
                 HEALTHY_TIMEOUT_S, f"{name} never turned healthy", name)
        results["HEALTHCHECK"] = "healthy"
        results["memory (docker stats)"] = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name)
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)

    table = "| check | result |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in results.items())
    publish(args, "docker-image", table, table_figures(table), command_line(argv))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="an exported bundle to mount at /model")
    parser.add_argument("--tag", default="ticket-classifier:check", help="the image tag to build")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to docker build, e.g. PYTHON_IMAGE=... (repeatable)")
    parser.add_argument("--no-cache", action="store_true", help="build every layer afresh (a true build time)")
    return record_arguments(parser).parse_args(argv)


def docker(*arguments: str, capture: bool = True) -> str:
    done = subprocess.run(["docker", *arguments], capture_output=capture, text=True)
    if done.returncode:
        raise SystemExit(f"docker {arguments[0]} failed ({done.returncode}): {(done.stderr or '').strip()[-2000:]}")
    return (done.stdout or "").strip()


def http(port: int, path: str, payload: dict | None = None) -> tuple[int, bytes]:
    """Status and body of one request; a refused or reset connection is status 0."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(condition, timeout_s: float, failure: str, container: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            logs = subprocess.run(["docker", "logs", "--tail", "30", container], capture_output=True, text=True)
            raise SystemExit(f"{failure}; its last log lines:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


def check(condition: bool, failure: str) -> None:
    if not condition:
        raise SystemExit(f"check failed: {failure}")


if __name__ == "__main__":
    sys.exit(main())
