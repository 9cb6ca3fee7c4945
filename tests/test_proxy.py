"""The deployment for callers we do not control: nginx with deploy/nginx.conf in front of `ticketclf serve`.

nginx is started here from the shipped file (only its two addresses changed) in a temporary folder,
in front of a real gunicorn on loopback. Skipped when nginx is not installed, unless
TICKETCLF_REQUIRE_SERVERS=1 (CI, which installs it).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from service_helpers import ROOT, TICKET, free_port, http_call, read_answer, running_server

sys.path.insert(0, str(ROOT / "scripts" / "benchmarks"))
import slowloris  # noqa: E402

from service import DEFAULTS  # noqa: E402

if slowloris.find_nginx() is None:
    if os.environ.get("TICKETCLF_REQUIRE_SERVERS") == "1":
        pytest.fail("nginx is not installed, and TICKETCLF_REQUIRE_SERVERS=1 (apt-get install nginx)",
                    pytrace=False)
    pytest.skip("nginx is not installed (apt-get install nginx)", allow_module_level=True)


class Proxied(NamedTuple):
    port: int  # nginx
    service_port: int  # gunicorn
    service_log: Path
    nginx_dir: Path


@pytest.fixture(scope="module")
def proxied(exported_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    folder = tmp_path_factory.mktemp("proxy")
    log = folder / "server.log"
    with running_server(exported_bundle, log, "--workers", "2") as service_port:
        with slowloris.running_nginx(service_port, folder / "nginx") as port:
            yield Proxied(port, service_port, log, folder / "nginx")


def app_log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def raw(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """One request (it asks nginx to close after the answer: a half-close would read as the client leaving)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return read_answer(connection)


def test_nginx_passes_requests_and_the_callers_request_id(proxied: Proxied) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxied.port, timeout=10)
    try:
        for number in range(3):  # one kept-alive connection to nginx; gunicorn's sync workers close theirs
            connection.request("POST", "/classify", json.dumps(TICKET),
                               {"Content-Type": "application/json", "X-Request-ID": f"proxy-check-{number}"})
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 200 and body["predictions"][0]["label"]
            assert response.getheader("X-Request-ID") == f"proxy-check-{number}"
            assert response.getheader("Connection", "keep-alive").lower() == "keep-alive"
    finally:
        connection.close()
    logged = {line["request_id"]: line for line in app_log_lines(proxied.service_log)}
    assert logged["proxy-check-2"]["forwarded_for"] == "127.0.0.1"  # the client, as nginx tells the app


def test_nginx_refuses_in_the_services_json_errors_at_the_same_body_limit(proxied: Proxied) -> None:
    limit = DEFAULTS["MAX_CONTENT_LENGTH"]
    assert re.search(r"^\s*client_max_body_size 1m;", slowloris.NGINX_CONF.read_text(), re.M) and limit == 2**20
    prefix, suffix = b'{"text": "', b'"}'
    at_limit = prefix + b"word " * ((limit - len(prefix) - len(suffix)) // 5) + suffix
    at_limit = at_limit[:-2] + b" " * (limit - len(at_limit)) + suffix
    assert len(at_limit) == limit
    head = (b"POST /classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n")
    status, _, body = raw(proxied.port, head % limit + at_limit)
    assert status == 200, body[:300]  # the whole limit gets through to the service
    big_header = b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    for request, expected_status, code in [(head % (limit + 1) + at_limit + b" ", 413, "payload_too_large"),
                                           (big_header, 431, "headers_too_large"),
                                           (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request")]:  # all nginx's
        status, headers, body = raw(proxied.port, request)
        assert status == expected_status and json.loads(body)["error"]["code"] == code, (status, body)
        assert b"x-request-id: " in headers.lower()
    logged = [json.loads(line) for line in (proxied.nginx_dir / "access.log").read_text().splitlines()]
    assert [line["method"] for line in logged if line["status"] == 413] == ["POST"]  # not error_page's GET
    # A caller's id the service would not echo is not echoed by nginx's own answers either.
    hostile = head.replace(b"Host: x\r\n", b"Host: x\r\nX-Request-ID: <b>id with markup</b>\r\n")
    status, headers, body = raw(proxied.port, hostile % (limit + 1) + at_limit + b" ")
    assert status == 413 and b"markup" not in headers + body
    assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}(\r\n|$)", headers.lower())


def test_a_service_that_is_down_is_a_json_502(tmp_path: Path) -> None:
    with slowloris.running_nginx(free_port(), tmp_path / "nginx") as port:  # nothing listens upstream
        status, body = http_call(port, "POST", "/classify", TICKET, {"X-Request-ID": "down-check"})
    assert status == 502 and json.loads(body)["error"]["code"] == "unavailable"
    [logged] = [json.loads(line) for line in (tmp_path / "nginx" / "access.log").read_text().splitlines()]
    assert logged["request_id"] == "down-check" and logged["status"] == 502  # nginx logs what the app could not


def test_slow_clients_do_not_starve_the_service_behind_nginx(proxied: Proxied) -> None:
    # Issue 19: 50 slow clients for 20 s, probed meanwhile: behind nginx no probe fails.
    probes, slow = slowloris.slow_client_run(proxied.port, clients=50, duration=20, probe_interval=0.5,
                                             probe_timeout=5)
    assert probes.sent >= 30 and probes.failed == 0, (probes.failures, (proxied.nginx_dir / "error.log").read_text())
    assert slow.opened >= 50 and slow.ended_by_server > 0  # nginx timed out the slow headers, and they came back
    # The same clients straight at gunicorn's two sync workers (shorter: it only has to show they bite).
    probes, _ = slowloris.slow_client_run(proxied.service_port, clients=50, duration=5, probe_interval=0.5,
                                          probe_timeout=5)
    assert probes.failed > 0, "the slow clients did not hold bare gunicorn's workers: the check above proves nothing"
    # Once they leave, gunicorn answers again.
    assert http_call(proxied.service_port, "POST", "/classify", TICKET)[0] == 200
    assert not [line for line in app_log_lines(proxied.service_log) if line["status"] >= 500]
