"""A two-node Ray cluster on this machine's loopback addresses, for tests/test_batch.py and batch_ray.py.

``ray start --head`` on 127.0.0.2 and a second ``ray start --address`` on 127.0.0.3 (Ray turns 127.0.0.1 into
the machine's network address, and other loopback addresses it leaves alone), each with its own CPUs, token
authentication on. Stopped by the ids of the processes it started: 'ray stop' would stop every Ray here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import psutil

HEAD, SECOND = "127.0.0.2", "127.0.0.3"
# For every process of the cluster and each driver that connects: the head turns token authentication on, and a
# node or driver without this setting would not send the token.
ENV = {"RAY_AUTH_MODE": "token"}


class Cluster(NamedTuple):
    address: str  # the head's host:port, for --ray
    folder: str  # its temporary folder, which its processes' command lines name


@contextmanager
def loopback_cluster(cpus_per_node: int = 1) -> Iterator[Cluster]:
    """Start the two nodes, yield the cluster, stop both."""
    ray = str(Path(sys.executable).with_name("ray"))
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, **ENV}
    common = ["--num-cpus", str(cpus_per_node), "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address", HEAD, "--port", "0", "--temp-dir", folder,
                        "--include-dashboard", "false", *common], env=env, check=True, capture_output=True, timeout=120)
        address = (Path(folder) / "ray_current_cluster").read_text().strip()
        subprocess.run([ray, "start", "--address", address, "--node-ip-address", SECOND, *common], env=env,
                       check=True, capture_output=True, timeout=120)
        yield Cluster(address, folder)
    finally:
        stop_processes_of(folder)
        shutil.rmtree(folder, ignore_errors=True)


def processes_of(folder: str) -> set[psutil.Process]:
    """Every process whose command line names ``folder`` (the cluster's own), and their children."""
    named = [process for process in psutil.process_iter(["cmdline"])
             if process.pid != os.getpid() and any(folder in part for part in process.info["cmdline"] or ())]
    family = set(named)
    for process in named:
        try:
            family.update(process.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return family


def stop_processes_of(folder: str) -> None:
    family = processes_of(folder)
    for process in family:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(family), timeout=3)  # raylet and gcs_server may not heed SIGTERM at once
    for process in alive:
        process.kill()
