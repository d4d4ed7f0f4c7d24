"""HTTP/SaaS APIs as a target system, and the ``http`` YAML template.

Settings::

    "payments-api": {
        "kind": "http",
        "base_url_env": "FLAMINGOCK_SAAS_URL",   # or a literal "base_url"
        "token_env": "FLAMINGOCK_SAAS_TOKEN",    # optional: sent as "Authorization: Bearer <token>"
        "auth_scheme": "Bearer",                 # optional; "" sends the token as the whole header value
        "timeout": 10,                           # seconds, connect and read (or {"connect": 3, "read": 10})
        "retries": 2,                            # for idempotent requests only
        "honours_idempotency_key": false,        # true: the API deduplicates by Idempotency-Key, so POST
                                                 # and PATCH carrying one may be retried too
        "headers": {"Accept": "application/json"},
    }

The token is read from the environment when a change runs, registered as a secret (so no error,
entry or log line shows it) and never appears in the configuration the admin and the API show.

Every request a change makes that may change something (POST, PUT, PATCH, DELETE) carries an
``Idempotency-Key`` header built from the change and the run (``context.idempotency_key``): a
retried request is recognised by an API that honours the header. Requests are retried on a lost
connection (before anything was sent) and, for idempotent methods only, on 429/502/503/504 and read
timeouts; a POST is never sent twice unless the target declares ``honours_idempotency_key``.

A code change asks for ``http``::

    def apply(self, http, context):
        http.post("/v1/webhooks", json={...}, expect=201, idempotency_key=context.idempotency_key)

The template::

    template: http
    apply:
      method: POST
      path: /v1/webhooks
      body: {name: shop-orders, url: "https://shop.example.com/hooks/orders"}
      expect: 201
    rollback:
      method: DELETE
      path: /v1/webhooks/shop-orders
      expect: [204, 404]
    verify:
      method: GET
      path: /v1/webhooks/shop-orders
      expect: 200
      json: {url: "https://shop.example.com/hooks/orders"}

A rollback runs later, maybe in another process: it must address the resource by a name the change
chose, never by an id the API assigned in the apply.
"""

from __future__ import annotations

import json as jsonlib
import logging
import time
from contextlib import contextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

from audit_app.redaction import redact
from changes_app.definitions import Step, Strategy
from changes_app.targets.base import TargetSystem, TargetUnavailable, TransactionBound, register_target_kind
from changes_app.targets.common import flat, setting_problems, setting_read, step_label, steps_problems
from changes_app.targets.templates import ChangeTemplate, document_steps, register_template

logger = logging.getLogger("flamingock.targets.http")

METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Methods whose requests carry an Idempotency-Key.
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
REQUEST_KEYS = frozenset({"method", "path", "body", "headers", "expect"})
VERIFY_KEYS = REQUEST_KEYS | {"json"}
#: Headers that come only from the target's settings, never from a change file.
RESERVED_HEADERS = frozenset({"authorization", "idempotency-key", "cookie", "proxy-authorization"})


class HttpStatusError(Exception):
    """The API answered with a status the change did not expect."""

    def __init__(self, method: str, path: str, status: int, expected: tuple[int, ...] | None, body: str):
        self.status = status
        wanted = ", ".join(map(str, expected)) if expected else "2xx"
        super().__init__(f"{method} {path} answered {status} (expected {wanted}): {flat(body, 300)}")


class HttpResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body) if self.body else None


class HttpClient:
    """Requests to one API: base URL, authentication, timeouts and retries from the target's settings."""

    def __init__(self, *, name: str, base_url: str, headers: dict[str, str], timeout, retries: int, honours_idempotency_key: bool):
        import urllib3

        self.name = name
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = headers
        self._timeout = timeout
        self._retries = retries
        self._honours_key = honours_idempotency_key
        self._pool = urllib3.PoolManager()

    def url(self, path: str) -> str:
        if "://" in path or path.startswith("//"):
            # The base URL is the only host a change talks to: the token must never go anywhere else.
            raise ValueError(f"{path!r}: a path is relative to the target's base URL")
        return urljoin(self.base_url, path.lstrip("/"))

    def retry_policy(self, method: str, idempotency_key: str | None):
        from urllib3.util import Retry

        retriable = method in IDEMPOTENT_METHODS or (self._honours_key and bool(idempotency_key))
        return Retry(
            total=self._retries,
            connect=self._retries,
            read=self._retries if retriable else 0,
            status=self._retries if retriable else 0,
            other=0,
            # A method outside allowed_methods is never retried once the request may have been sent.
            allowed_methods=frozenset(METHODS) if retriable else IDEMPOTENT_METHODS,
            status_forcelist=RETRY_STATUSES if retriable else frozenset(),
            backoff_factor=0.2,
            backoff_max=5,
            raise_on_status=False,
            respect_retry_after_header=True,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: int | list[int] | tuple[int, ...] | None = None,
        idempotency_key: str | None = None,
    ) -> HttpResponse:
        """Send one request; raise :class:`HttpStatusError` when ``expect`` (default: any 2xx) is not met."""
        import urllib3

        method = method.upper()
        sent = {**self._headers, **(headers or {})}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent.setdefault("Content-Type", "application/json")
        if idempotency_key and method in CHANGING_METHODS:
            sent["Idempotency-Key"] = idempotency_key
        started = time.perf_counter()
        try:
            answer = self._pool.request(
                method, self.url(path), body=body, headers=sent, timeout=self._timeout, retries=self.retry_policy(method, idempotency_key)
            )
        except urllib3.exceptions.HTTPError as error:
            raise TargetUnavailable(f"target {self.name!r}: {method} {path} failed: {redact(str(error))}") from error
        # The log names the request, never its headers: they hold the token.
        logger.info("%s %s %s -> %s (%.0f ms)", self.name, method, path, answer.status, (time.perf_counter() - started) * 1000)
        response = HttpResponse(answer.status, dict(answer.headers), answer.data)
        wanted = (expect,) if isinstance(expect, int) else tuple(expect) if expect else None
        if (wanted and response.status not in wanted) or (not wanted and not 200 <= response.status < 300):
            raise HttpStatusError(method, path, response.status, wanted, redact(response.text))
        return response

    def get(self, path: str, **kwargs) -> HttpResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> HttpResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> HttpResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs) -> HttpResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs) -> HttpResponse:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self._pool.clear()


class HttpTarget(TargetSystem):
    """An HTTP API by base URL; changes get an :class:`HttpClient` as ``http``."""

    kind = "http"
    # Each request stands alone: no server transaction stays open between requests.
    transaction_bound = TransactionBound.NO_TRANSACTION
    secret_keys = frozenset({"base_url", "token", "password"})

    def __init__(self, name, config):
        super().__init__(name, config)
        self._client: HttpClient | None = None

    @classmethod
    def config_problems(cls, config):
        problems = setting_problems(config, "base_url", schemes=("http", "https"))
        if config.get("token"):
            problems.append("a token never goes in settings: name the environment variable holding it with 'token_env'")
        timeout = config.get("timeout", 10)
        if isinstance(timeout, dict):
            if set(timeout) - {"connect", "read"} or not all(isinstance(v, int | float) and v > 0 for v in timeout.values()):
                problems.append("'timeout' is seconds, or {'connect': seconds, 'read': seconds}")
        elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            problems.append("'timeout' must be a positive number of seconds")
        retries = config.get("retries", 2)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            problems.append("'retries' must be a whole number, 0 or more")
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            problems.append("'headers' must map header names to text")
        elif {k.lower() for k in headers} & RESERVED_HEADERS:
            problems.append("'headers' may not set Authorization, Cookie or Idempotency-Key (use 'token_env' for authentication)")
        if not isinstance(config.get("honours_idempotency_key", False), bool):
            problems.append("'honours_idempotency_key' must be true or false")
        return problems

    def dependency_names(self):
        return {"context", "http"}

    def strategy(self, *, transactional):
        return Strategy.NON_TRANSACTIONAL

    def client(self) -> HttpClient:
        import urllib3

        if self._client is None:
            base_url = setting_read(self, "base_url")
            headers = {"User-Agent": "flamingock", **self.config.get("headers", {})}
            token = setting_read(self, "token", secret=True, required=False)
            if token:
                scheme = self.config.get("auth_scheme", "Bearer")
                headers["Authorization"] = f"{scheme} {token}" if scheme else token
            timeout = self.config.get("timeout", 10)
            if isinstance(timeout, dict):
                timeout = urllib3.Timeout(connect=timeout.get("connect", 10), read=timeout.get("read", 10))
            else:
                timeout = urllib3.Timeout(connect=timeout, read=timeout)
            self._client = HttpClient(
                name=self.name,
                base_url=base_url,
                headers=headers,
                timeout=timeout,
                retries=int(self.config.get("retries", 2)),
                honours_idempotency_key=bool(self.config.get("honours_idempotency_key", False)),
            )
        return self._client

    @contextmanager
    def session(self, *, atomic):
        yield {"http": self.client()}

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


register_target_kind(HttpTarget)


# -- the template ----------------------------------------------------------------------------------


class HttpTemplate(ChangeTemplate):
    """One request to apply, one to roll back, and a GET whose answer proves the effect."""

    name = "http"

    def problems(self, document, target, *, transactional):
        if target.kind != HttpTarget.kind:
            return [("template", f"the http template needs an http target; {target.name!r} is a {target.kind} target")]
        return steps_problems(document, _payload_problems)

    def steps(self, document, target):
        steps = document_steps(document)
        built = []
        for index, step in enumerate(steps, start=1):
            # One key per change and run; a multi-step change numbers its steps so each request has its own.
            suffix = f":{index}" if len(steps) > 1 else ""
            apply, rollback, verify = step["apply"], step.get("rollback"), step.get("verify")
            built.append(
                Step(
                    label=step_label(step, index),
                    apply=_sender(apply, suffix),
                    rollback=_sender(rollback, f"{suffix}:rollback") if rollback else None,
                    verify=_prober(verify) if verify else None,
                    preview=flat(f"{apply['method'].upper()} {apply['path']}" + (f" {jsonlib.dumps(apply['body'])}" if "body" in apply else "")),
                )
            )
        return built


def _statuses(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values):
        return ["'expect' must be an HTTP status (100-599) or a list of them"]
    return []


def _payload_problems(key: str, payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["must be a request: a mapping with 'method' and 'path' (and 'body', 'headers', 'expect')"]
    allowed = VERIFY_KEYS if key == "verify" else REQUEST_KEYS
    found = []
    unknown = sorted(set(map(str, payload)) - allowed)
    if unknown:
        found.append(f"unknown keys {unknown} (a request has {', '.join(sorted(allowed))})")
    method = payload.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        found.append(f"'method' must be one of {', '.join(METHODS)} (got {method!r})")
    elif key == "verify" and method.upper() not in SAFE_METHODS:
        found.append(f"a verify request must only read: GET or HEAD, not {method.upper()}")
    path = payload.get("path")
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//") or urlsplit(path).scheme:
        found.append(f"'path' must be a path starting with '/', relative to the target's base URL (got {path!r})")
    if "expect" in payload:
        found.extend(_statuses(payload["expect"]))
    headers = payload.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        found.append("'headers' must map header names to text")
    elif {k.lower() for k in headers} & RESERVED_HEADERS:
        found.append("'headers' may not set Authorization, Cookie or Idempotency-Key: they come from the target's settings")
    if "body" in payload and payload["body"] is not None and not isinstance(payload["body"], dict | list | str | int | float):
        found.append("'body' must be JSON: a mapping, a list, text or a number")
    if "json" in payload and not isinstance(payload["json"], dict):
        found.append("'json' must be a mapping: keys and values the answer must contain")
    return found


def _arguments(request: dict[str, Any]) -> dict[str, Any]:
    body = request.get("body")
    return {
        "json": body if body is not None and not isinstance(body, str) else None,
        "body": body.encode() if isinstance(body, str) else None,
        "headers": request.get("headers"),
        "expect": request.get("expect"),
    }


def _sender(request: dict[str, Any], suffix: str):
    def send(dependencies):
        key = f"{dependencies['context'].idempotency_key}{suffix}"
        dependencies["http"].request(request["method"], request["path"], idempotency_key=key, **_arguments(request))

    return send


def contains(answer: Any, expected: Any) -> bool:
    """Whether ``answer`` holds every key and value of ``expected`` (mappings compared recursively)."""
    if isinstance(expected, dict):
        return isinstance(answer, dict) and all(key in answer and contains(answer[key], value) for key, value in expected.items())
    return answer == expected


def _prober(request: dict[str, Any]):
    def probe(dependencies) -> bool:
        arguments = _arguments(request)
        wanted = arguments.pop("expect") or [200]
        try:
            response = dependencies["http"].request(request["method"], request["path"], expect=wanted, **arguments)
        except HttpStatusError:
            return False
        if "json" in request:
            try:
                return contains(response.json(), request["json"])
            except ValueError:
                return False
        return True

    return probe


register_template(HttpTemplate())
