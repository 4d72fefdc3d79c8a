"""A third catalog no code of facetrec knows: an online bookstore, written as a team would export it.

Its own column names (an ``sku`` id, a ``name`` title, ``customer`` ids, ISO 8601 times), its own
facets (``format``, ``language`` as the user filter, ``price`` a float, ``in_stock`` a boolean,
``tags`` a list, ``author``, ``released`` a date), the catalog as CSV, the events as JSON lines of
three kinds (one of which the schema does not keep), a few bad rows of each kind, and a hidden
preference model (readers favour some tags and authors) so a model has something to learn.

    python tests/bookstore.py DIR      writes DIR/catalog.yaml, rows.yaml, catalog.csv, events.jsonl, users.parquet
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

CATALOG_YAML = """\
# An online bookstore's catalog (tests/bookstore.py writes its files).
name: bookstore
items:
  id: sku
  title: name
  url: link
  categories: tags
  published: released
  facets:
    format: {type: keyword, feature: true, partition: true}
    language: {type: keyword, feature: true, user_filter: true}
    price: {type: float, feature: true, range: [0, 1000], buckets: 8}
    in_stock: {type: boolean, feature: true}
    tags: {type: keyword_list, feature: true, separator: "|"}
    author: {type: keyword, feature: true}
    released: {type: date, column: release_date}
events:
  user: customer
  item: sku
  time: {column: at, format: iso8601}
  type: {column: kind, keep: [purchase, view]}
users:
  id: customer
  features: [segment]
checks:
  max_rejected_share: 0.01
  max_id_length: 32
"""

ROWS_YAML = """\
# The bookstore's homepage (its facets: catalog.yaml beside this file).
rows:
  - id: for_you
    title: Picked for you
    size: 10
    rank: {candidates: 50}
  - id: under_15
    title: Under 15
    size: 8
    filter: [{range: {price: {lte: 15}}}]
  - id: in_stock_now
    title: In stock now
    size: 8
    filter: [{term: {in_stock: true}}]
  - id: fantasy
    title: Fantasy for you
    size: 8
    filter: [{term: {tags: fantasy}}]
  - id: audiobooks
    title: Audiobooks
    size: 8
    filter: [{term: {format: audiobook}}]
    must_not: [{term: {in_stock: false}}]
homepage: [for_you, under_15, in_stock_now, fantasy, audiobooks]
"""

FORMATS = ["hardcover", "paperback", "ebook", "audiobook"]
LANGUAGES = ["en", "fr", "de"]
TAGS = ["fantasy", "crime", "romance", "history", "science", "poetry", "travel", "cooking", "horror", "classics"]
START = datetime(2026, 2, 1, tzinfo=timezone.utc)
# The bad rows planted in each input, by the reason the ETL gives (tests assert these exact counts).
BAD_CATALOG = {"duplicate_id": 1, "unparseable:price": 1, "out_of_range:price": 1, "missing_title": 1,
               "id_too_long": 1}
BAD_EVENTS = {"unparseable_time": 2, "unknown_item": 2, "missing_user": 1, "malformed_line": 1}


def write_bookstore(dest: Path, n_items: int = 1500, n_users: int = 500, history: int = 24, seed: int = 3) -> dict:
    """Write the bookstore's schema, rows and input files under ``dest``; returns their paths and the
    events it wrote of each kind."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (dest / "catalog.yaml").write_text(CATALOG_YAML)
    (dest / "rows.yaml").write_text(ROWS_YAML)
    items = _items(rng, n_items)
    _write_catalog_csv(dest / "catalog.csv", items)
    kinds = _write_events(dest / "events.jsonl", rng, items, n_users, history)
    users = pd.DataFrame({"customer": [f"c{u:05d}" for u in range(n_users)],
                          "segment": [["student", "family", "collector"][u % 3] for u in range(n_users)]})
    users.to_parquet(dest / "users.parquet", index=False)
    return {"catalog_config": dest / "catalog.yaml", "rows": dest / "rows.yaml", "catalog": dest / "catalog.csv",
            "events": dest / "events.jsonl", "users": dest / "users.parquet", "kinds": kinds, "items": items}


def _items(rng: np.random.Generator, n: int) -> list[dict]:
    authors = [f"Author {a:03d}" for a in range(120)]
    out = []
    for i in range(n):
        tags = sorted(set(rng.choice(TAGS, size=int(rng.integers(1, 4)), replace=False)))
        fmt = FORMATS[int(rng.choice(4, p=[0.3, 0.35, 0.2, 0.15]))]
        out.append({"sku": f"BK-{i:05d}", "name": f"{rng.choice(TAGS).title()} Book {i}", "link": f"https://books.example/{i}",
                    "format": fmt, "language": LANGUAGES[int(rng.choice(3, p=[0.7, 0.2, 0.1]))],
                    "price": round(float(rng.uniform(3, 60)), 2), "in_stock": bool(rng.random() < 0.8),
                    "tags": tags, "author": authors[int(rng.integers(0, len(authors)))],
                    "release_date": (datetime(1900, 1, 1) + timedelta(days=int(rng.integers(0, 45000)))).date().isoformat(),
                    "_weight": 1.0 / (i + 1) ** 0.6})
    return out


def _write_catalog_csv(path: Path, items: list[dict]) -> None:
    columns = ["sku", "name", "link", "format", "language", "price", "in_stock", "tags", "author", "release_date"]
    rows = [{**{k: item[k] for k in columns}, "tags": "|".join(item["tags"]),
             "in_stock": "true" if item["in_stock"] else "false"} for item in items]
    rows += [
        {**rows[0], "name": "A second row for the first sku"},                       # duplicate_id
        {**rows[1], "sku": "BK-X1", "price": "n/a"},                                 # unparseable:price
        {**rows[2], "sku": "BK-X2", "price": "-5"},                                  # out_of_range:price
        {**rows[3], "sku": "BK-X3", "name": ""},                                     # missing_title
        {**rows[4], "sku": "BK-" + "9" * 40},                                        # id_too_long
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_events(path: Path, rng: np.random.Generator, items: list[dict], n_users: int, history: int) -> dict:
    """Readers favour two tags and a few authors (the hidden model), beside popularity."""
    tag_index = {t: j for j, t in enumerate(TAGS)}
    tags = np.zeros((len(items), len(TAGS)))
    for i, item in enumerate(items):
        tags[i, [tag_index[t] for t in item["tags"]]] = 1.0
    weight = np.log(np.array([item["_weight"] for item in items]))
    kinds = {"purchase": 0, "view": 0, "wishlist": 0}
    lines = []
    for u in range(n_users):
        liked = rng.choice(len(TAGS), size=2, replace=False)
        logits = 2.5 * tags[:, liked].sum(axis=1) + weight
        p = np.exp(logits - logits.max())
        p /= p.sum()
        chosen = rng.choice(len(items), size=history, replace=False, p=p)
        t = START + timedelta(minutes=int(rng.integers(0, 60 * 24 * 20)))
        for i in chosen:
            t += timedelta(minutes=int(rng.integers(1, 500)), milliseconds=int(rng.integers(0, 1000)))
            kind = ["purchase", "view", "wishlist"][int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
            kinds[kind] += 1
            lines.append({"customer": f"c{u:05d}", "sku": items[i]["sku"],
                          "at": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "kind": kind})
    lines += [{"customer": "c00001", "sku": items[0]["sku"], "at": "yesterday", "kind": "view"},
              {"customer": "c00002", "sku": items[1]["sku"], "at": "2026-13-45T99:00:00Z", "kind": "view"},
              {"customer": "c00003", "sku": "BK-NOT-SOLD", "at": "2026-02-03T10:00:00Z", "kind": "purchase"},
              {"customer": "c00004", "sku": "BK-GONE", "at": "2026-02-03T10:00:00Z", "kind": "view"},
              {"customer": None, "sku": items[2]["sku"], "at": "2026-02-03T10:00:00Z", "kind": "view"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{\"customer\": \"c00005\", \"sku\": \n"
    path.write_text(text)
    return kinds


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/bookstore.py DIR")
    written = write_bookstore(Path(sys.argv[1]))
    print("\n".join(f"{k}: {v}" for k, v in written.items() if k not in ("kinds", "items")))
