"""Every error is JSON: 400 names the field, 404/405 for routes, 503 + Retry-After when ES is down."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from facetrec.homepage import ClusterUnavailable, InconsistentGenerations
from facetrec.rows import BadRequest
from facetrec.user_encoder import EncoderUnavailable
from facetrec.user_events import UserIndexUnavailable

log = logging.getLogger("facetrec.service")


def error_body(code: str, message: str, field: str | None = None) -> dict:
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


def init_app(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return jsonify(error_body("bad_request", exc.message, exc.field)), 400

    @app.errorhandler(ClusterUnavailable)
    def unavailable(exc: ClusterUnavailable):
        log.warning("elasticsearch unavailable", extra={"event": "es_unavailable", "detail": str(exc)[:300]})
        response = jsonify(error_body("unavailable", "the recommendation index is unreachable; retry shortly"))
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.errorhandler(InconsistentGenerations)
    def inconsistent(exc: InconsistentGenerations):
        log.warning("page refused: generations kept mixing", extra={"event": "mixed_generations",
                                                                     "detail": str(exc)[:300]})
        response = jsonify(error_body("generation_swap", "the index is switching generations; retry shortly"))
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.errorhandler(UserIndexUnavailable)
    def user_index_unavailable(exc: UserIndexUnavailable):
        log.warning("event batch not applied", extra={"event": "events_unavailable", "detail": str(exc)[:300]})
        response = jsonify(error_body("unavailable", f"{exc}"))
        response.headers["Retry-After"] = "1"
        return response, 503

    @app.errorhandler(EncoderUnavailable)
    def encoder_unavailable(exc: EncoderUnavailable):
        log.error("no user encoder for the live model", extra={"event": "encoder_unavailable",
                                                                "detail": str(exc)[:500]})
        return jsonify(error_body("encoder_unavailable", "the live model's user encoder is not available to "
                                  "this service; the event batch is logged and will be applied with the next "
                                  "generation (operators: see the service log)")), 503

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        field = "body" if exc.code == 400 else None
        return jsonify(error_body(code, exc.description or exc.name, field)), exc.code

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error", extra={"event": "unhandled_error"})
        return jsonify(error_body("internal", "internal error; it has been logged")), 500
