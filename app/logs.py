"""Structured (one JSON object per line) logs, including an access log line per request."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

from flask import Flask, g, request

from app.state import service_of

RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        line.update({k: v for k, v in record.__dict__.items() if k not in RESERVED and not k.startswith("_")})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger("facetrec")
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def init_app(app: Flask) -> None:
    configure_logging()
    access = logging.getLogger("facetrec.access")

    @app.before_request
    def start_timer():
        g.started = time.perf_counter()
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]

    @app.after_request
    def log_request(response):
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        endpoint = request.endpoint or "unmatched"
        metrics = service_of(app).metrics
        arm = request.environ.get("facetrec.arm")
        metrics.timing("request.latency", elapsed_ms, tags=[f"endpoint:{endpoint}", f"status:{response.status_code}",
                                                            *([f"arm:{arm}"] if arm else [])])
        access.info("request", extra={"event": "access", "request_id": g.get("request_id"), "method": request.method,
                                      "path": request.path, "endpoint": endpoint, "status": response.status_code,
                                      "duration_ms": round(elapsed_ms, 2),
                                      "user_id": request.environ.get("facetrec.user_id"), "arm": arm})
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response
