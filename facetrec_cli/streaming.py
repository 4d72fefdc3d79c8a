"""What the two streaming commands (`facetrec events stream`, `facetrec items stream`) share: run the
query until it ends or is stopped, then print its totals."""

from __future__ import annotations

import json
import sys


def say(message: str) -> None:
    print(f"facetrec: {message}", file=sys.stderr, flush=True)


def run_until_stopped(spark, query, writer) -> int:
    """Wait for the streaming query (Ctrl-C stops it; any kill is safe too: a micro-batch cut short
    runs again on restart from the checkpoint and applies nothing twice), stop Spark, print totals."""
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        say("stopping; a micro-batch cut short runs again on restart (nothing is applied twice)")
        query.stop()
    finally:
        spark.stop()
    print(json.dumps({"stream": writer.stream, **writer.totals}))
    return 0
