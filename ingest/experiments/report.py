"""The offline readout of an experiment (``facetrec experiment report``): per arm, how many served
pages were followed by an event on one of their items, with a 95% confidence interval.

Input: the service's impression lines (``"event": "impression"`` in its JSON log: experiment, arm,
user, time, the item ids the page showed) and the event log (``<user alias>_events``: each batch's
user, items and event times). The unit is the user: a user is a hit when they have an event on an
item of one of their pages within ``window`` after that page. Pinned pages (``?arm=``, debugging),
pages whose window is still open and users seen in several arms are left out. Per arm: the hit rate
with Wilson's interval and the generations its pages came from (control changes with a nightly
publish or a promote); per candidate arm, the difference to control with a normal (Wald) interval
of the difference of two proportions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
    generation: str | None = None


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
                                frozenset(record.get("items") or ()), record.get("generation")))
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


def readout(impressions: list[Impression], events: dict[str, list[tuple[datetime, str]]], window: timedelta,
            as_of: datetime | None = None) -> dict:
    """Per arm, over users (the unit: a user's pages are not independent of each other): users,
    users with a hit on any of their pages, the rate and Wilson's interval; per candidate arm the
    difference to control. Pages younger than ``window`` at ``as_of`` (default now) are left out (their
    window is still open), and so are users seen in more than one arm (a weight change moved them)."""
    as_of = as_of or datetime.now(timezone.utc)
    closed = [i for i in impressions if i.at + window <= as_of]
    arms_of: dict[str, set[str]] = defaultdict(set)
    for impression in closed:
        arms_of[impression.user_id].add(impression.arm)
    per_user: dict[str, bool] = {}
    pages: dict[str, int] = defaultdict(int)
    generations: dict[str, set[str]] = defaultdict(set)
    for impression in closed:
        if len(arms_of[impression.user_id]) > 1:
            continue
        later = events.get(impression.user_id, ())
        hit = any(impression.at < at <= impression.at + window and item in impression.items for at, item in later)
        per_user[impression.user_id] = per_user.get(impression.user_id, False) or hit
        pages[impression.arm] += 1
        if impression.generation:
            generations[impression.arm].add(impression.generation)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for user_id, hit in per_user.items():
        (arm,) = arms_of[user_id]
        counts[arm][0] += 1
        counts[arm][1] += int(hit)
    arms = {}
    for arm, (users, hits) in sorted(counts.items(), key=lambda kv: (kv[0] != CONTROL, kv[0])):
        low, high = wilson(hits, users)
        arms[arm] = {"users": users, "hits": hits, "hit_rate": hits / users if users else 0.0, "ci95": [low, high],
                     "pages": pages[arm], "generations": sorted(generations[arm])}
    control = counts.get(CONTROL)
    for arm, entry in arms.items():
        if arm != CONTROL and control:
            delta, low, high = difference(entry["hits"], entry["users"], control[1], control[0])
            entry["vs_control"] = {"difference": delta, "ci95": [low, high], "significant": low > 0 or high < 0}
    return {"experiment": impressions[0].experiment if impressions else None, "window_s": window.total_seconds(),
            "pages_still_open": len(impressions) - len(closed),
            "users_in_several_arms": sum(1 for arms_seen in arms_of.values() if len(arms_seen) > 1), "arms": arms}


def report(es: Elasticsearch, log_index: str, lines: Iterable[str], window: timedelta,
           experiment: str | None = None, as_of: datetime | None = None) -> dict:
    impressions = read_impressions(lines, experiment)
    if not impressions:
        return readout([], {}, window, as_of)
    since = min(i.at for i in impressions)
    until = max(i.at for i in impressions) + window
    return readout(impressions, user_events(es, log_index, {i.user_id for i in impressions}, since, until),
                   window, as_of)


def table(result: dict) -> str:
    lines = [f"experiment {result['experiment']}: a user is a hit when they act on an item of one of their pages "
             f"within {result['window_s'] / 3600:g} h of it ({result['pages_still_open']} pages still in their "
             f"window and {result['users_in_several_arms']} users seen in several arms left out)",
             f"{'arm':<16}{'users':>8}{'hits':>8}{'hit rate':>10}  {'95% CI':<17}{'vs control (95% CI)':<30}"]
    for arm, e in result["arms"].items():
        vs = e.get("vs_control")
        against = (f"{vs['difference']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]"
                   + (" *" if vs["significant"] else "")) if vs else ""
        lines.append(f"{arm:<16}{e['users']:>8}{e['hits']:>8}{e['hit_rate']:>10.4f}  "
                     f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]  {against}")
    return "\n".join(lines)
