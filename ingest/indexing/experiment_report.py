"""The offline readout of an experiment (``facetrec experiment report``): per arm, how many served
pages were followed by an event on one of their items, with a 95% confidence interval.

Input: the service's impression lines (``"event": "impression"`` in its JSON log: experiment, arm,
user, time, the item ids the page showed) and the event log (``<user alias>_events``: each batch's
user, items and event times). A page is a hit when the user has an event on one of its items after
the page was served and within ``window``. Pinned pages (``?arm=``, debugging) are left out. Per arm:
the hit rate with Wilson's interval; per candidate arm, the difference to control with a normal
(Wald) interval of the difference of two proportions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator

from elasticsearch import Elasticsearch, helpers

from facetrec.experiments import CONTROL

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Impression:
    experiment: str
    arm: str
    user_id: str
    at: datetime
    items: frozenset[str]


def read_impressions(lines: Iterable[str], experiment: str | None = None) -> list[Impression]:
    """The impression lines of ``experiment`` (default: the only one in the log) among any log lines."""
    found: list[Impression] = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") != "impression" or record.get("pinned"):
            continue
        at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        found.append(Impression(record["experiment"], record["arm"], str(record["user_id"]), at,
                                frozenset(record.get("items") or ())))
    experiments = {i.experiment for i in found}
    if experiment is None:
        if len(experiments) > 1:
            raise ValueError(f"the log holds impressions of several experiments {sorted(experiments)}: name one")
        return found
    return [i for i in found if i.experiment == experiment]


def impression_lines(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, errors="replace") as f:
            yield from f


def user_events(es: Elasticsearch, log_index: str, user_ids: set[str], since: datetime,
                until: datetime) -> dict[str, list[tuple[datetime, str]]]:
    """(event time, item id) per user, from the event log's batches with an event in [since, until]."""
    out: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    if not user_ids or not es.indices.exists(index=log_index):
        return out
    es.indices.refresh(index=log_index)
    users = sorted(user_ids)
    for start in range(0, len(users), 1000):
        query = {"bool": {"filter": [{"terms": {"user_id": users[start:start + 1000]}},
                                     {"range": {"last_event_at": {"gte": since.isoformat()}}}]}}
        for hit in helpers.scan(es, index=log_index, query={"query": query}):
            src = hit["_source"]
            for item_id, at in zip(src["item_ids"], src["event_times"]):
                when = datetime.fromisoformat(at)
                if since <= when <= until:
                    out[src["user_id"]].append((when, item_id))
    return out


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (good near 0 and 1 and for small n)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference(hits_a: int, n_a: int, hits_b: int, n_b: int, z: float = Z95) -> tuple[float, float, float]:
    """(p_a - p_b, low, high): the normal interval of the difference of two proportions."""
    if n_a == 0 or n_b == 0:
        return 0.0, -1.0, 1.0
    pa, pb = hits_a / n_a, hits_b / n_b
    half = z * math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    return pa - pb, pa - pb - half, pa - pb + half


def readout(impressions: list[Impression], events: dict[str, list[tuple[datetime, str]]],
            window: timedelta) -> dict:
    """Per arm: pages, hits, hit rate and its interval; per candidate arm its difference to control."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for impression in impressions:
        later = events.get(impression.user_id, ())
        hit = any(impression.at < at <= impression.at + window and item in impression.items for at, item in later)
        counts[impression.arm][0] += 1
        counts[impression.arm][1] += int(hit)
    arms = {}
    for arm, (pages, hits) in sorted(counts.items(), key=lambda kv: (kv[0] != CONTROL, kv[0])):
        low, high = wilson(hits, pages)
        arms[arm] = {"pages": pages, "hits": hits, "hit_rate": hits / pages if pages else 0.0,
                     "ci95": [low, high]}
    control = counts.get(CONTROL)
    for arm, entry in arms.items():
        if arm != CONTROL and control:
            delta, low, high = difference(entry["hits"], entry["pages"], control[1], control[0])
            entry["vs_control"] = {"difference": delta, "ci95": [low, high],
                                   "significant": low > 0 or high < 0}
    return {"experiment": impressions[0].experiment if impressions else None,
            "window_s": window.total_seconds(), "arms": arms}


def report(es: Elasticsearch, log_index: str, lines: Iterable[str], window: timedelta,
           experiment: str | None = None) -> dict:
    impressions = read_impressions(lines, experiment)
    if not impressions:
        return readout([], {}, window)
    since = min(i.at for i in impressions)
    until = max(i.at for i in impressions) + window
    return readout(impressions, user_events(es, log_index, {i.user_id for i in impressions}, since, until), window)


def table(result: dict) -> str:
    lines = [f"experiment {result['experiment']}: a page is a hit when the user acts on one of its items within "
             f"{result['window_s'] / 3600:g} h",
             f"{'arm':<16}{'pages':>8}{'hits':>8}{'hit rate':>10}  {'95% CI':<17}{'vs control (95% CI)':<30}"]
    for arm, e in result["arms"].items():
        vs = e.get("vs_control")
        against = (f"{vs['difference']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]"
                   + (" *" if vs["significant"] else "")) if vs else ""
        lines.append(f"{arm:<16}{e['pages']:>8}{e['hits']:>8}{e['hit_rate']:>10.4f}  "
                     f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]  {against}")
    return "\n".join(lines)
