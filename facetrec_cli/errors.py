"""Turn exceptions into one line that says what to do next."""

from __future__ import annotations

import os
import traceback


def explain(exc: BaseException) -> str:
    from elasticsearch import ConnectionError as ESConnectionError

    if os.environ.get("FACETREC_DEBUG"):
        traceback.print_exception(exc)
    if isinstance(exc, ESConnectionError):
        return (f"cannot reach Elasticsearch ({exc}); start the local node with `facetrec-es start` "
                "or set ES_URL")
    return f"{type(exc).__name__}: {exc}" + ("" if os.environ.get("FACETREC_DEBUG") else
                                             " (set FACETREC_DEBUG=1 for the traceback)")
