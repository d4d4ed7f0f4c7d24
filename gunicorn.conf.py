"""gunicorn's configuration, read from the environment (docs/operators.md, "Serving").

    gunicorn -c gunicorn.conf.py flamingock_site.wsgi:application

gunicorn reads this file in the master process before the application loads. Each setting is one
environment variable; a command-line option given after ``-c`` still wins. The access log and
gunicorn's own messages go through the redaction of the audit trail (a token in a query string, a
password in a URL), as one line of text or, with ``FLAMINGOCK_LOG_FORMAT=json``, one JSON object.
"""

import os
import shutil
from pathlib import Path

from prometheus_client import multiprocess

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flamingock_site.settings")


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"gunicorn.conf.py: {name} must be a whole number, not {value!r}") from None


# --- Where and how many ----------------------------------------------------------------------------
#: Addresses to listen on, comma-separated (host:port, [::1]:port, or unix:/path).
bind = [item.strip() for item in os.environ.get("FLAMINGOCK_BIND", "127.0.0.1:8000").split(",") if item.strip()]
#: Worker processes: one per core by default (a process runs Python on one core at a time).
workers = _int("FLAMINGOCK_WEB_WORKERS", os.cpu_count() or 1)
#: Threads per worker: gunicorn's threaded worker, whose main thread keeps reporting to the master
#: while a long streamed export runs (a sync worker would be killed after ``timeout``).
threads = _int("FLAMINGOCK_WEB_THREADS", 4)
worker_class = "gthread" if threads > 1 else "sync"
#: Seconds a request may take before its worker is restarted, and a stopping worker's grace.
timeout = _int("FLAMINGOCK_WEB_TIMEOUT", 60)
graceful_timeout = _int("FLAMINGOCK_WEB_GRACEFUL_TIMEOUT", 30)
#: Seconds an idle keep-alive connection from the proxy stays open.
keepalive = _int("FLAMINGOCK_WEB_KEEPALIVE", 5)
#: A worker is replaced after about this many requests (0: never), bounding any slow leak.
max_requests = _int("FLAMINGOCK_WEB_MAX_REQUESTS", 1000)
max_requests_jitter = max_requests // 10
#: The application loads (and the production refusals run, flamingock_site/wsgi.py) once, in the
#: master, before any worker starts: an unsafe setting stops gunicorn with its message.
preload_app = os.environ.get("FLAMINGOCK_WEB_PRELOAD", "1").strip().lower() not in {"0", "false", "no", "off"}

# --- Behind the proxy ------------------------------------------------------------------------------
#: Addresses of the TLS proxy whose X-Forwarded-Proto (and -For) gunicorn believes; "*" for any.
forwarded_allow_ips = os.environ.get("FLAMINGOCK_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
#: The proxy buffers slow clients; these bound what one request may send gunicorn.
limit_request_line = _int("FLAMINGOCK_WEB_LIMIT_REQUEST_LINE", 8190)
limit_request_fields = _int("FLAMINGOCK_WEB_LIMIT_REQUEST_FIELDS", 100)

# --- Logs -------------------------------------------------------------------------------------------
#: "-" (standard output, the default), a file, or "off".
_access = os.environ.get("FLAMINGOCK_ACCESS_LOG", "-").strip()
accesslog = None if _access.lower() in {"", "off", "none"} else _access
#: The combined log format, with the client the proxy names and the time taken in milliseconds.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" forwarded_for="%({x-forwarded-for}i)s" ms=%(M)s'
errorlog = "-"
loglevel = os.environ.get("FLAMINGOCK_WEB_LOG_LEVEL", "info")

_json = os.environ.get("FLAMINGOCK_LOG_FORMAT", "text").strip().lower() == "json"
_formatter = (
    {
        "()": "changes_app.observability.logs.RedactingJsonFormatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
    }
    if _json
    else {"format": "%(message)s"}
)
_handler = {"class": "logging.StreamHandler", "formatter": "flamingock", "filters": ["redact"]}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "audit_app.redaction.RedactingFilter"}},
    "formatters": {"flamingock": _formatter},
    "handlers": {
        "error": {**_handler, "stream": "ext://sys.stderr"},
        "access": {**_handler, "stream": "ext://sys.stdout"},
    },
    # Django's LOGGING replaces the root logger's set-up once the application loads.
    "root": {"handlers": ["error"], "level": "WARNING"},
    "loggers": {
        "gunicorn.error": {"handlers": ["error"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["access"] if accesslog == "-" else [], "level": "INFO", "propagate": False},
    },
}
if accesslog not in (None, "-"):
    logconfig_dict["handlers"]["access"] = {**_handler, "class": "logging.FileHandler", "filename": accesslog}
    logconfig_dict["loggers"]["gunicorn.access"]["handlers"] = ["access"]
    del logconfig_dict["handlers"]["access"]["stream"]


# --- Metrics of several workers ----------------------------------------------------------------------
# With PROMETHEUS_MULTIPROC_DIR set, django-prometheus's HTTP and database metrics of every worker
# are summed on /metrics (prometheus_client's multiprocess mode). The product's own metrics never
# need it: they are read from the database.


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # The files of an earlier gunicorn would be summed with this one's.
        shutil.rmtree(directory, ignore_errors=True)
        Path(directory).mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
