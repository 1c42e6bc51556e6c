"""The operator's Serve probe against live HTTP servers on 127.0.0.1 (no mocks of httpx)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from lorafleet_operator.serveprobe import applications_running, parse_stats, probe_serve

from tests.support.hub import free_port


@pytest.fixture
def serve_stub() -> Iterator[Callable[[int, bytes], str]]:
    """``start(status, body) -> url``: an HTTP server answering every GET with that reply."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status if self.path == "/stats" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_an_answering_app_names_its_base_folder_and_adapters(serve_stub) -> None:
    body = {"pid": 7, "base_path": "/models/ns/basemodels/m/abc", "registered": ["a", "b"]}
    url = serve_stub(200, json.dumps(body).encode())
    answer = asyncio.run(probe_serve(url + "/"))
    assert answer.ok and answer.error is None
    assert answer.base_path == "/models/ns/basemodels/m/abc"
    assert answer.adapters == {"a", "b"}


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (503, b'{"error": {"message": "model not loaded"}}', "HTTP 503: "),
        (200, b"<html>hello</html>", "not JSON"),
        (200, b'{"status": "ok"}', "not lorafleet's"),
    ],
)
def test_an_app_that_does_not_answer_as_lorafleet_says_why(serve_stub, status, body, said) -> None:
    url = serve_stub(status, body)
    answer = asyncio.run(probe_serve(url))
    assert not answer.ok and answer.adapters == frozenset()
    assert said in answer.error and f"{url}/stats" in answer.error


def test_nothing_listening_is_an_error_not_an_exception() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    answer = asyncio.run(probe_serve(url, timeout_s=2))
    assert not answer.ok
    assert answer.error.startswith(f"GET {url}/stats: ConnectError")


def test_parse_stats_without_base_path_still_lists_adapters() -> None:
    answer = parse_stats({"registered": ["x"]})
    assert answer.ok and answer.base_path is None and answer.adapters == {"x"}


@pytest.mark.parametrize(
    ("apps", "running"),
    [
        (None, True),
        ({}, True),
        ({"minilm": {"status": "RUNNING"}}, True),
        ({"minilm": {"status": "RUNNING"}, "other": {"status": "DEPLOYING"}}, False),
        ({"minilm": {"status": "DEPLOY_FAILED"}}, False),
    ],
)
def test_applications_running(apps, running) -> None:
    rs = {"status": {"activeServiceStatus": {"applicationStatuses": apps}}}
    assert applications_running(rs) is running


def test_a_foreign_answer_is_said_once(serve_stub) -> None:
    url = serve_stub(200, b'{"status": "ok"}')
    answer = asyncio.run(probe_serve(url, attempts=1))
    assert answer.error == f"GET {url}/stats: the answer is not lorafleet's (no 'registered' list)"


def test_a_failed_first_answer_is_asked_again(serve_stub) -> None:
    """One slow or failed answer does not count: the second try's answer wins."""
    import threading as th

    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"

    def serve_late() -> None:
        import time

        time.sleep(0.5)  # the first try finds nothing listening
        from http.server import ThreadingHTTPServer as Server

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"registered": ["a"], "base_path": "/m"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = Server(("127.0.0.1", port), Handler)
        server.timeout = 5
        server.handle_request()
        server.server_close()

    thread = th.Thread(target=serve_late, daemon=True)
    thread.start()
    answer = asyncio.run(probe_serve(url, attempts=2, retry_after_s=1.5))
    thread.join(timeout=10)
    assert answer.ok and answer.adapters == {"a"}, answer


def test_failed_applications_name_their_status_and_message() -> None:
    from lorafleet_operator.serveprobe import failed_applications

    apps = {
        "b": {"status": "RUNNING"},
        "a": {"status": "DEPLOY_FAILED", "message": "ImportError: no module x"},
        "c": {"status": "UNHEALTHY"},
    }
    rs = {"status": {"activeServiceStatus": {"applicationStatuses": apps}}}
    assert failed_applications(rs) == (
        "application a: DEPLOY_FAILED: ImportError: no module x; application c: UNHEALTHY"
    )
    assert failed_applications({"status": {}}) is None
