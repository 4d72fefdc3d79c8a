"""A seedable, Scribd-like synthetic catalog with a hidden latent preference model.

Items have a format, a language, country availability, categories, a title and a Zipf
popularity; users have a hidden taste vector. Interactions are drawn from softmax(taste . item
+ log popularity), so the planted signal is learnable and retrieval recall can be checked
against the hidden vectors. Works from a few hundred items to millions (numpy, vectorised).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np

FORMATS = np.array(["ebook", "audiobook", "document", "podcast"])
FORMAT_P = np.array([0.45, 0.25, 0.2, 0.1])
LANGUAGES = np.array(["en", "es", "de", "fr", "pt"])
LANGUAGE_P = np.array([0.6, 0.15, 0.1, 0.1, 0.05])
COUNTRIES = np.array(["US", "GB", "AU", "ES", "MX", "DE", "FR", "BR"])
CATEGORIES = np.array(["fiction", "comedy", "romance", "mystery", "history", "science", "business",
                       "self-help", "biography", "fantasy", "horror", "travel"])
WORDS = np.array(["night", "river", "secret", "garden", "empire", "letters", "storm", "city", "silent", "road",
                  "fire", "ocean", "winter", "house", "stars", "journey", "code", "money", "mind", "war"])


def generate_catalog(n_items: int, seed: int = 0, latent_dims: int = 16) -> dict[str, np.ndarray]:
    """Columns of the item catalog plus the hidden item factors (``latent``)."""
    rng = np.random.default_rng(seed)
    categories_main = rng.integers(0, len(CATEGORIES), n_items)
    categories_extra = rng.integers(0, len(CATEGORIES), n_items)
    has_extra = rng.random(n_items) < 0.5
    availability = rng.random((n_items, len(COUNTRIES))) < 0.6
    availability[np.arange(n_items), rng.integers(0, len(COUNTRIES), n_items)] = True  # at least one
    ranks = rng.permutation(n_items) + 1
    popularity = (1.0 / ranks ** 0.9).astype(np.float32)
    popularity /= popularity.max()
    # Category and format shape the hidden item factors, so facets carry signal.
    cat_factors = rng.normal(size=(len(CATEGORIES), latent_dims))
    fmt_factors = rng.normal(size=(len(FORMATS), latent_dims)) * 0.5
    fmt = rng.choice(len(FORMATS), n_items, p=FORMAT_P)
    latent = cat_factors[categories_main] + fmt_factors[fmt] + rng.normal(size=(n_items, latent_dims)) * 0.7
    days = rng.integers(0, 365 * 30, n_items)
    return {
        "item_id": np.array([f"i{i}" for i in range(n_items)]),
        "item_format": FORMATS[fmt],
        "language": rng.choice(LANGUAGES, n_items, p=LANGUAGE_P),
        "country": availability,
        "categories_main": categories_main,
        "categories_extra": np.where(has_extra, categories_extra, -1),
        "title_words": rng.integers(0, len(WORDS), (n_items, 3)),
        "popularity": popularity,
        "published_days": days,
        "latent": latent.astype(np.float32),
    }


def item_record(catalog: dict, i: int) -> dict:
    cats = [CATEGORIES[catalog["categories_main"][i]]]
    extra = catalog["categories_extra"][i]
    if extra >= 0 and CATEGORIES[extra] != cats[0]:
        cats.append(CATEGORIES[extra])
    return {
        "item_id": str(catalog["item_id"][i]),
        "title": " ".join(WORDS[catalog["title_words"][i]]).title() + f" #{i}",
        "item_format": str(catalog["item_format"][i]),
        "language": str(catalog["language"][i]),
        "country": [str(c) for c in COUNTRIES[catalog["country"][i]]],
        "categories": [str(c) for c in cats],
        "popularity": float(catalog["popularity"][i]),
        "published_at": (date(1995, 1, 1) + timedelta(days=int(catalog["published_days"][i]))).isoformat(),
    }


def generate_users(n_users: int, catalog: dict, seed: int = 1, history: int = 20, tastes: int = 1,
                   switch: float = 0.2) -> dict[str, np.ndarray]:
    """Hidden user tastes and each user's interaction history drawn from the preference model. With
    ``tastes`` > 1 each user has that many taste vectors and reads in runs: each next item comes from the
    taste of the one before, or (with probability ``switch``) from another of the user's tastes (the
    case multi-interest user vectors are for: ``ModelConfig.interests``)."""
    rng = np.random.default_rng(seed)
    latent_dims = catalog["latent"].shape[1]
    if tastes == 1:
        taste = rng.normal(size=(n_users, latent_dims)).astype(np.float32) * 0.6
        return {"user_id": np.array([f"u{u}" for u in range(n_users)]), "taste": taste,
                "history": sample_histories(taste, catalog, history, rng)}
    taste = rng.normal(size=(n_users, tastes, latent_dims)).astype(np.float32) * 0.9
    return {"user_id": np.array([f"u{u}" for u in range(n_users)]), "taste": taste,
            "history": sample_taste_runs(taste, catalog, history, rng, switch)}


def sample_taste_runs(taste: np.ndarray, catalog: dict, history: int, rng: np.random.Generator,
                      switch: float) -> np.ndarray:
    """Histories of users of several tastes (U, T, latent): runs of items from one taste at a time."""
    logp = np.log(catalog["popularity"] + 1e-6)
    n_items, n_tastes = len(logp), taste.shape[1]
    pool = min(n_items, 2000)
    out = np.empty((len(taste), history), dtype=np.int64)
    for u in range(len(taste)):
        cand = rng.choice(n_items, pool, replace=False) if pool < n_items else np.arange(n_items)
        logits = catalog["latent"][cand] @ taste[u].T + logp[cand][:, None]      # (pool, T)
        p = np.exp(logits - logits.max(axis=0))
        taken = np.zeros(pool, dtype=bool)
        current = int(rng.integers(n_tastes))
        for j in range(history):
            if j and rng.random() < switch:
                current = int((current + rng.integers(1, n_tastes)) % n_tastes)
            weights = np.where(taken, 0.0, p[:, current])
            pick = int(rng.choice(pool, p=weights / weights.sum()))
            taken[pick] = True
            out[u, j] = cand[pick]
    return out


def sample_histories(taste: np.ndarray, catalog: dict, history: int, rng: np.random.Generator) -> np.ndarray:
    logp = np.log(catalog["popularity"] + 1e-6)
    n_items = len(logp)
    # Score a random candidate pool per user (exact softmax over millions of items is not needed).
    pool = min(n_items, 2000)
    out = np.empty((len(taste), history), dtype=np.int64)
    for u in range(len(taste)):
        cand = rng.choice(n_items, pool, replace=False) if pool < n_items else np.arange(n_items)
        logits = catalog["latent"][cand] @ taste[u] + logp[cand]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[u] = cand[rng.choice(pool, history, replace=False, p=p)]
    return out


def embedding_records(n_items: int, n_users: int, dims: int = 64, seed: int = 0, history: int = 20,
                      full_rank: float = 0.0):
    """Item and user records with vectors straight from the hidden model (projected to ``dims``):
    what the index and serving tests load when they need realistic vectors without training.

    The hidden model has 16 dimensions, so these vectors have rank 16 in ``dims``: each user's top
    items are full of near-ties. ``full_rank`` > 0 adds isotropic noise of that standard deviation
    (relative to the projected vectors' per-coordinate spread) in all ``dims`` dimensions, to both
    item and user vectors: the same catalog, facets and histories on vectors of full rank, where a
    graph's behaviour is less degenerate (the benchmarks report recall on both)."""
    catalog = generate_catalog(n_items, seed)
    users = generate_users(n_users, catalog, seed + 1, history)
    rng = np.random.default_rng(seed + 2)
    projection = rng.normal(size=(catalog["latent"].shape[1], dims)).astype(np.float32) / np.sqrt(dims)
    item_vectors = catalog["latent"] @ projection
    # Dot products in the projected space approximate the hidden ones: P P^T ~ I.
    user_vectors = users["taste"] @ projection
    if full_rank > 0:
        noise = np.random.default_rng(seed + 3)
        item_vectors = item_vectors + noise.normal(size=item_vectors.shape).astype(np.float32) * full_rank * item_vectors.std()
        user_vectors = user_vectors + noise.normal(size=user_vectors.shape).astype(np.float32) * full_rank * user_vectors.std()
    now = datetime.now(timezone.utc).isoformat()
    items = [{**item_record(catalog, i), "item_embed": item_vectors[i]} for i in range(n_items)]
    user_records = [{"user_id": str(users["user_id"][u]), "user_embed": user_vectors[u],
                     "seen_item_ids": [str(catalog["item_id"][j]) for j in users["history"][u]], "updated_at": now}
                    for u in range(n_users)]
    return items, user_records, item_vectors, user_vectors
