"""Optional access control: ``Authorization: Bearer <token>`` against FACETREC_API_TOKENS.

When tokens are configured every route needs one except the probes (``/healthz``, ``/readyz``) and
the API's description (``/openapi.yaml``, the ``/docs`` page and its assets), including the HTML
page and ``/v1/sample-users`` (which hands out real user ids). Tokens are
compared in constant time; a missing or wrong token is a 401 JSON error naming the header.
"""

from __future__ import annotations

import hmac

from flask import Flask, jsonify, request

from app.errors import error_body

OPEN_ENDPOINTS = {"api.healthz", "api.readyz", "docs.openapi_document", "docs.docs_page", "docs.docs_asset"}


def init_app(app: Flask, tokens: list[str]) -> None:
    if not tokens:
        return
    secrets = [t.encode() for t in tokens]

    @app.before_request
    def require_token():
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        offered = presented.strip().encode()
        # Compare against every token (no early exit), so timing says nothing about which matched.
        matched = False
        for secret in secrets:
            matched |= hmac.compare_digest(offered, secret)
        if scheme.lower() == "bearer" and matched:
            return None
        response = jsonify(error_body("unauthorized", "a valid service token is required: "
                                      "Authorization: Bearer <token>", "Authorization"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="facetrec"'
        return response, 401
