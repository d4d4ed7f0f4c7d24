"""A small SaaS API for the demo and the tests: webhook registrations, like a payments provider's.

Run it beside the demo (it prints its base URL)::

    FLAMINGOCK_SAAS_TOKEN=demo-token python -m examples.demo_saas --port 8765 --state-file var/demo_saas.json

or start it in a test with :func:`serve`. Every request needs ``Authorization: Bearer <token>``
when the server has a token. The API:

- ``POST /v1/webhooks`` ``{"name", "url", "events"}``: 201 with the webhook; 409 if the name is
  taken. A request repeating an ``Idempotency-Key`` gets the first answer again, nothing created.
- ``GET /v1/webhooks`` (all), ``GET /v1/webhooks/NAME``: 200, or 404.
- ``PUT /v1/webhooks/NAME``: create or replace (200). ``DELETE /v1/webhooks/NAME``: 204, or 404.

For tests and demos of failures: ``POST /_demo/faults`` ``{"method", "path", "status", "delay",
"times"}`` makes the next ``times`` matching requests wait ``delay`` seconds and answer ``status``
(without ``status``, a delayed request is then served as usual); ``GET /_demo/requests`` lists the
requests received (method, path, idempotency key, whether the token matched, status answered).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class SaasState:
    token: str = ""
    #: Where the webhooks are kept between restarts of the demo ("" keeps them in memory only).
    path: str = ""
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    replies: dict[str, tuple[int, Any]] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)


class SaasHandler(BaseHTTPRequestHandler):
    server_version = "DemoSaaS/1"
    state: SaasState  # set on the subclass made by serve()

    def log_message(self, format, *args):  # quiet: the tests read /_demo/requests instead
        pass

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def _answer(self, status: int, payload: Any = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        state = self.state
        body = self._body() if method in ("POST", "PUT", "PATCH") else None
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        key = self.headers.get("Idempotency-Key")
        authorised = not state.token or self.headers.get("Authorization") == f"Bearer {state.token}"
        fault = self._fault(method, path)
        if fault.get("delay"):
            time.sleep(fault["delay"])  # a slow answer: the request is still acted on, as a real API would
        with state.lock:
            status, payload = (
                (fault["status"], {"error": "injected fault"}) if fault.get("status") else self._route(method, path, body, key, authorised)
            )
            if not path.startswith("/_demo/"):
                state.requests.append({"method": method, "path": path, "idempotency_key": key, "authorised": authorised, "status": status})
            if state.path and method != "GET":
                state_save(state)
        self._answer(status, payload)

    def _route(self, method: str, path: str, body: Any, key: str | None, authorised: bool) -> tuple[int, Any]:
        state = self.state
        if path == "/_demo/faults" and method == "POST":
            state.faults.append({"times": 1, **body})
            return HTTPStatus.CREATED, body
        if path == "/_demo/requests" and method == "GET":
            return HTTPStatus.OK, state.requests
        if not authorised:
            return HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"}
        if key and method != "GET" and key in state.replies:
            return state.replies[key]
        answer = self._webhooks(method, path, body)
        if key and method != "GET" and answer[0] < 500:
            state.replies[key] = answer
        return answer

    def _fault(self, method: str, path: str) -> dict[str, Any]:
        """The next injected fault matching this request (``status`` and/or ``delay``), if any."""
        with self.state.lock:
            for fault in self.state.faults:
                if fault["times"] > 0 and fault.get("method", method) == method and fault.get("path", path) == path:
                    fault["times"] -= 1
                    return fault
        return {}

    def _webhooks(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        state = self.state
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "webhooks"] or len(parts) > 3:
            return HTTPStatus.NOT_FOUND, {"error": f"no route {method} {path}"}
        name = parts[2] if len(parts) == 3 else None
        if name is None and method == "GET":
            return HTTPStatus.OK, sorted(state.webhooks.values(), key=lambda hook: hook["id"])
        if name is None and method == "POST":
            if not isinstance(body, dict) or not body.get("name") or not body.get("url"):
                return HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "a webhook needs 'name' and 'url'"}
            if body["name"] in state.webhooks:
                return HTTPStatus.CONFLICT, {"error": f"a webhook named {body['name']!r} exists"}
            return HTTPStatus.CREATED, self._store(body["name"], body)
        if name is not None and method == "GET":
            hook = state.webhooks.get(name)
            return (HTTPStatus.OK, hook) if hook else (HTTPStatus.NOT_FOUND, {"error": f"no webhook {name!r}"})
        if name is not None and method == "PUT":
            if not isinstance(body, dict) or not body.get("url"):
                return HTTPStatus.UNPROCESSABLE_ENTITY, {"error": "a webhook needs 'url'"}
            return HTTPStatus.OK, self._store(name, body)
        if name is not None and method == "DELETE":
            if state.webhooks.pop(name, None) is None:
                return HTTPStatus.NOT_FOUND, {"error": f"no webhook {name!r}"}
            return HTTPStatus.NO_CONTENT, None
        return HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} is not allowed on {path}"}

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        previous = state.webhooks.get(name)
        hook = {"id": previous["id"] if previous else f"wh_{state.next_id}", "name": name, "url": body["url"], "events": body.get("events", [])}
        if previous is None:
            state.next_id += 1
        state.webhooks[name] = hook
        return hook

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")


class DemoSaas:
    """A running server: its base URL, its state, and how to stop it."""

    def __init__(self, server: ThreadingHTTPServer, state: SaasState):
        self.server = server
        self.state = state
        self.thread = threading.Thread(target=server.serve_forever, name="demo-saas", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def state_save(state: SaasState) -> None:
    temporary = f"{state.path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"webhooks": state.webhooks, "next_id": state.next_id}, handle)
    os.replace(temporary, state.path)


def serve(*, host: str = "127.0.0.1", port: int = 0, token: str = "", path: str = "") -> DemoSaas:
    """Start the API in a background thread (port 0 picks a free port); ``path`` keeps its webhooks."""
    state = SaasState(token=token, path=path)
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        state.webhooks, state.next_id = saved["webhooks"], saved["next_id"]
    handler = type("BoundSaasHandler", (SaasHandler,), {"state": state})
    running = DemoSaas(ThreadingHTTPServer((host, port), handler), state)
    running.thread.start()
    return running


def main() -> None:
    parser = argparse.ArgumentParser(description="The demo SaaS API (webhook registrations).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-env", default="FLAMINGOCK_SAAS_TOKEN", help="the environment variable holding the bearer token")
    parser.add_argument("--state-file", default="", help="keep the webhooks in this JSON file between restarts")
    options = parser.parse_args()
    running = serve(host=options.host, port=options.port, token=os.environ.get(options.token_env, ""), path=options.state_file)
    print(f"demo SaaS API listening at {running.url}", flush=True)
    try:
        running.thread.join()
    except KeyboardInterrupt:
        running.stop()


if __name__ == "__main__":
    main()
