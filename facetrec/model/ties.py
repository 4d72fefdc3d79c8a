"""How events that share a timestamp are ordered: by a seeded hash of (user, item), not by item id.

MovieLens logs ratings to the second, and 44% of its users' last second holds more than one rating,
so whatever orders a same-second burst decides which item a leave-last-out split calls "the" test
item and which order a sequence model learns. Ordering by item id (as a string or a number) carries
the catalog's id order into the sequences: a model can learn it, and the offline metrics move with
it (docs/model_study.md). A hash of (seed, user, item) orders each burst arbitrarily but the same way
on every run, in every process, for the Spark ETL (``ingest.embedding.etl``) and for the streaming
job alike, and tells nothing about the ids.

The key is the SHA-256 hex digest of ``seed \\x1f user_id \\x1f item_id`` (UTF-8): Spark's
``sha2(concat_ws('\\x1f', ...), 256)`` computes the same string, so Python and Spark agree.
"""

from __future__ import annotations

import hashlib

TIE_SEED = "facetrec-ties-1"
SEPARATOR = "\x1f"
TIE_BREAKS = ("hash", "item_id", "numeric")   # the protocol's, and the two id orders it replaced (for the study)


def tie_key(user_id: str, item_id: str, seed: str = TIE_SEED) -> str:
    """The order of one (user, item) event among the user's events of the same timestamp."""
    return hashlib.sha256(SEPARATOR.join((seed, str(user_id), str(item_id))).encode()).hexdigest()


def check(tie_break: str) -> str:
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r}: expected one of {TIE_BREAKS}")
    return tie_break
