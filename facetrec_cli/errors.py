"""Turn exceptions into one sentence that says what went wrong and what to do next (never a class
name: the traceback is there with FACETREC_DEBUG=1)."""

from __future__ import annotations

import os
import traceback

DEBUG_HINT = " (FACETREC_DEBUG=1 shows the traceback)"


def explain(exc: BaseException) -> str:
    from elasticsearch import ApiError, ConnectionTimeout
    from elasticsearch import ConnectionError as ESConnectionError

    debug = bool(os.environ.get("FACETREC_DEBUG"))
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, (ESConnectionError, ConnectionTimeout)):
        return (f"cannot reach Elasticsearch ({_connection_detail(exc)}); start the local node with "
                "`facetrec-es start` or set ES_URL")
    if isinstance(exc, ApiError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        cause = (error.get("root_cause") or [error])[0] if error else {}
        kind = cause.get("type") or exc.message
        reason = cause.get("reason") or str(body or exc.message)
        return f"Elasticsearch refused the request ({exc.status_code} {kind}): {reason}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory: {exc.filename or str(exc).strip()}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror.lower()}" + (f": {exc.filename}" if exc.filename else "")
    message = str(exc).strip()
    if message and not isinstance(exc, (KeyError, AttributeError, TypeError, NameError)):
        return message + ("" if debug else DEBUG_HINT)
    return "an unexpected internal error" + (f" ({message})" if message else "") + ("" if debug else DEBUG_HINT)


def _connection_detail(exc: BaseException) -> str:
    """The transport's reason without its class names (``Connection refused``, ``timed out``)."""
    text = str(getattr(exc, "message", "") or exc)
    for marker in ("] ", ": "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip(" )'\"") or "no answer"
