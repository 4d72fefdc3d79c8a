"""Every error is JSON: 400 names the field, 404/405 for routes, 409 for a reused batch id, 413 says
the body limit, 503 + Retry-After when ES is down."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from facetrec.homepage import ClusterUnavailable, InconsistentGenerations
from facetrec.rows import BadRequest
from facetrec.user_encoder import EncoderUnavailable
from facetrec.user_events import BatchIdReused, UserIndexUnavailable

log = logging.getLogger("facetrec.service")


def error_body(code: str, message: str, field: str | None = None, **extra) -> dict:
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update(extra)
    return {"error": body}


def init_app(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return jsonify(error_body("bad_request", exc.message, exc.field)), 400

    @app.errorhandler(BatchIdReused)
    def batch_id_reused(exc: BatchIdReused):
        return jsonify(error_body("batch_id_reused", str(exc), "batch_id")), 409

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = app.config["MAX_CONTENT_LENGTH"]
        return jsonify(error_body("request_entity_too_large", f"the request body is larger than the limit of "
                                  f"{limit} bytes ({limit / 1024:g} KiB)", "body", limit_bytes=limit)), 413

    def retry_later(code: str, message: str, event: str, detail: str, level: int = logging.WARNING):
        """A 503 the caller may retry after Retry-After; the detail goes to the structured log only."""
        log.log(level, message, extra={"event": event, "detail": detail[:500]})
        response = jsonify(error_body(code, message))
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.errorhandler(ClusterUnavailable)
    def unavailable(exc: ClusterUnavailable):
        return retry_later("unavailable", "the recommendation index is unreachable; retry shortly",
                           "es_unavailable", str(exc))

    @app.errorhandler(InconsistentGenerations)
    def inconsistent(exc: InconsistentGenerations):
        return retry_later("generation_swap", "the index is switching generations; retry shortly",
                           "mixed_generations", str(exc))

    @app.errorhandler(UserIndexUnavailable)
    def user_index_unavailable(exc: UserIndexUnavailable):
        return retry_later("unavailable", "the event batch is logged but not applied yet; retry it with the same "
                           "batch_id shortly", "events_unavailable", str(exc))

    @app.errorhandler(EncoderUnavailable)
    def encoder_unavailable(exc: EncoderUnavailable):
        return retry_later("encoder_unavailable", "the live model's user encoder is not available to this "
                           "service; the event batch is logged and will be applied with the next generation "
                           "(operators: see the service log)", "encoder_unavailable", str(exc), logging.ERROR)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        field = "body" if exc.code == 400 else None
        return jsonify(error_body(code, exc.description or exc.name, field)), exc.code

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error", extra={"event": "unhandled_error"})
        return jsonify(error_body("internal", "internal error; it has been logged")), 500
