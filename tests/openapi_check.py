"""Validate real service responses against app/openapi.yaml (openapi-core, OpenAPI 3.0 rules)."""

from __future__ import annotations

import os

import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_schema_validator import OAS30Validator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(REPO, "app", "openapi.yaml")
with open(SPEC_PATH) as _f:
    SPEC = yaml.safe_load(_f)
OPENAPI = OpenAPI.from_dict(SPEC)


class _TestClientRequest(WerkzeugOpenAPIRequest):
    """The request of a Flask test client response, its body read again (the service consumed it)."""

    @property
    def body(self) -> bytes | None:
        stream = self.request.environ.get("wsgi.input")
        if stream is not None and stream.seekable():
            stream.seek(0)
            return stream.read()
        return self.request.get_data(as_text=False)


def assert_matches_schema(body, name: str) -> None:
    """``body`` is an instance of ``#/components/schemas/<name>``."""
    OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}).validate(body)


def assert_valid_exchange(response, status: int | None = None, valid_request: bool = False,
                          document: dict | None = None):
    """A Flask test client ``response`` (with its ``request``) is one the document allows for that
    path and method: its status, content type and body (and, with ``valid_request``, the request's
    parameters and body too). ``document``: the one a service served (default: the base document,
    app/openapi.yaml). Returns the JSON body."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    openapi = OPENAPI if document is None else OpenAPI.from_dict(document)
    request = _TestClientRequest(response.request)
    if valid_request:
        openapi.validate_request(request)
    openapi.validate_response(request, WerkzeugOpenAPIResponse(response))
    return response.get_json()
