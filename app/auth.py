"""Optional access control: ``Authorization: Bearer <token>`` against FACETREC_API_TOKENS (reads)
and FACETREC_ADMIN_TOKENS (item changes).

When read tokens are configured every route needs one (or an admin token) except the probes
(``/healthz``, ``/readyz``) and the API's description (``/openapi.yaml``, the ``/docs`` page and its
assets), including the HTML page and ``/v1/sample-users`` (which hands out real user ids). Item
changes (``/v1/items``: takedowns, new items) need an admin token whenever any token is configured;
with no token configured at all the API is open, and the service says so at start. Tokens are
compared in constant time; a missing or wrong token is a 401 JSON error naming the header, a read
token on an item change a 403.
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, jsonify, request

from app.errors import error_body

OPEN_ENDPOINTS = {"api.healthz", "api.readyz", "docs.openapi_document", "docs.docs_page", "docs.docs_asset"}
ADMIN_BLUEPRINTS = {"items"}
log = logging.getLogger("facetrec.service")


def _matches(offered: bytes, secrets: list[bytes]) -> bool:
    # Compare against every token (no early exit), so timing says nothing about which matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(offered, secret)
    return matched


def _refused(status: int, message: str):
    response = jsonify(error_body("unauthorized" if status == 401 else "forbidden", message, "Authorization"))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="facetrec"'
    return response, status


def init_app(app: Flask, tokens: list[str], admin_tokens: list[str] = ()) -> None:
    if not tokens and not admin_tokens:
        log.warning("the API is open: FACETREC_API_TOKENS and FACETREC_ADMIN_TOKENS are unset, so anyone who can "
                    "reach this service can read pages and change items (take items down, add items)",
                    extra={"event": "api_open"})
        return
    reads = [t.encode() for t in tokens]
    admins = [t.encode() for t in admin_tokens]

    @app.before_request
    def require_token():
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        offered = presented.strip().encode() if scheme.lower() == "bearer" else b""
        admin = bool(offered) and _matches(offered, admins)
        if request.blueprint in ADMIN_BLUEPRINTS:
            if admin:
                return None
            if offered and _matches(offered, reads):
                return _refused(403, "item changes need an admin token (FACETREC_ADMIN_TOKENS); this one only reads")
            return _refused(401, "an admin token is required: Authorization: Bearer <token>")
        if not reads or admin or (offered and _matches(offered, reads)):
            return None
        return _refused(401, "a valid service token is required: Authorization: Bearer <token>")
