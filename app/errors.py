"""Every error is JSON: 400 names the field, 404/405 for routes (a 405 with its ``Allow`` header), 409
for a conflict (a reused batch id), 413 says the body limit, 503 + Retry-After when a dependency is
unavailable (Elasticsearch, a swap in progress, an encoder)."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from facetrec.errors import BadRequest, Conflict, Unavailable
from facetrec.model.user_encoder import EncoderUnavailable

log = logging.getLogger("facetrec.service")


def error_body(code: str, message: str, field: str | None = None, **extra) -> dict:
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return {"error": body}


def init_app(app: Flask) -> None:
    """Handlers written against the error family's kinds (``facetrec.errors``)."""

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return jsonify(error_body("bad_request", exc.message, exc.field)), 400

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict):
        return jsonify(error_body(exc.code, str(exc), exc.field)), 409

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_CONTENT_LENGTH"]
        return jsonify(error_body("request_entity_too_large", f"the request body is larger than the limit of "
                                  f"{limit} bytes ({limit / 1024:g} KiB)", "body", limit_bytes=limit)), 413

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable):
        """A 503 the caller may retry after Retry-After: the error's public message; the detail goes to
        the structured log only (an encoder missing is an operator's error, the rest warnings)."""
        level = logging.ERROR if isinstance(exc, EncoderUnavailable) else logging.WARNING
        log.log(level, exc.public, extra={"event": exc.log_event, "detail": str(exc)[:500]})
        response = jsonify(error_body(exc.code, exc.public))
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        field = "body" if exc.code == 400 else None
        response = jsonify(error_body(code, exc.description or exc.name, field))
        # A 405 says which methods the resource allows (RFC 9110 15.5.6); werkzeug puts them in its headers.
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
        return response, exc.code

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error", extra={"event": "unhandled_error"})
        return jsonify(error_body("internal", "internal error; it has been logged")), 500
