"""The two-tower model.

Item tower: item id embedding + facet embeddings (multi-valued facets pooled) + hashed title
tokens, through an MLP (residual on the id embedding).
User tower: the user's recent items (through the SHARED item tower) + positions, a small causal
transformer, beside a causal mean of the same items (overall taste), + user features, through an MLP. The user vector after position t predicts item t+1.
Score: dot product. Loss, chosen by catalog size: a full softmax over every item where the catalog
is small, else a sampled softmax over in-batch positives and uniformly sampled extra negatives
(mixed negative sampling) with logQ correction; both with a temperature.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class ModelConfig:
    dim: int = 64
    hidden: int = 128
    max_len: int = 50            # the most recent items the user tower reads
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    temperature: float = 0.5
    # What the towers read besides item ids (chosen on validation, docs/model_study.md): facets and
    # title tokens help; user features (demographics) made the model overfit on MovieLens, so they
    # are off unless asked for. All off: an id-only sequence model (SASRec-like), the reference.
    item_facets: bool = True
    item_title: bool = True
    user_features: bool = False
    # The share of item ids hidden from the item tower while training (their id embedding left out), so
    # that title and facets alone make a usable vector: a new item's, until the next nightly run
    # (facetrec.model.item_encoder; docs/model_study.md measures what it costs the warm items).
    id_dropout: float = 0.0
    # Interest vectors per user (JD's multi-head query tower, MIND's interests): K projections of the
    # user state, trained so that the best of them explains the next item (max over interests). 1: one
    # user vector, the model as it was (docs/model_study.md measures K = 2 and 4).
    interests: int = 1


class ItemTower(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int, facet_sizes: dict[str, int], title_buckets: int,
                 item_facets: dict[str, torch.Tensor], item_titles: torch.Tensor):
        super().__init__()
        d = cfg.dim
        self.facet_names = list(facet_sizes) if cfg.item_facets else []
        self.use_title = cfg.item_title
        self.id_dropout = cfg.id_dropout
        self.id_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.facet_embs = nn.ModuleDict({f: nn.EmbeddingBag(n + 1, d, mode="mean", padding_idx=0)
                                         for f, n in facet_sizes.items() if f in self.facet_names})
        for f in self.facet_names:
            self.register_buffer(f"facet_{f}", item_facets[f], persistent=True)
        if self.use_title:
            self.title_emb = nn.EmbeddingBag(title_buckets + 1, d, mode="mean", padding_idx=0)
            self.register_buffer("titles", item_titles, persistent=True)
        width = d * (1 + len(self.facet_names) + int(self.use_title))
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, d))
        nn.init.normal_(self.id_emb.weight, std=0.05)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        facets = [getattr(self, f"facet_{f}")[flat] for f in self.facet_names]
        titles = self.titles[flat] if self.use_title else flat[:, None]
        shown = flat
        if self.training and self.id_dropout > 0:   # hide some ids: the content alone must make the vector
            shown = torch.where(torch.rand(flat.shape, device=flat.device) < self.id_dropout, torch.zeros_like(flat), flat)
        return self.encode(shown, facets, titles).reshape(*idx.shape, -1)

    def encode(self, ids: torch.Tensor, facets: list[torch.Tensor], titles: torch.Tensor) -> torch.Tensor:
        """(B, D) item vectors from item indices (0: an item the model has no id for, a new item's),
        each feature facet's value indices (B, k) in ``facet_names`` order, and title tokens (B, T)."""
        emb = self.id_emb(ids)
        parts = [emb]
        for name, values in zip(self.facet_names, facets):
            parts.append(self.facet_embs[name](values))
        if self.use_title:
            parts.append(self.title_emb(titles))
        return emb + self.mlp(torch.cat(parts, dim=-1))


class UserTower(nn.Module):
    def __init__(self, cfg: ModelConfig, user_feature_sizes: list[int]):
        super().__init__()
        d = cfg.dim
        if not cfg.user_features:
            user_feature_sizes = []
        self.heads = cfg.heads
        self.pos = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos.weight, std=0.02)  # the default N(0, 1) would drown the item signal
        layer = nn.TransformerEncoderLayer(d, cfg.heads, dim_feedforward=cfg.hidden, dropout=cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.features = nn.ModuleList(nn.Embedding(n + 1, d, padding_idx=0) for n in user_feature_sizes)
        self.out = nn.Sequential(nn.Linear(d * (3 if user_feature_sizes else 2), cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, d))
        self.skip = nn.Linear(d, d)
        self.interests = cfg.interests
        if cfg.interests > 1:   # each interest: the user state moved by its own projection
            self.interest_heads = nn.Linear(d, cfg.interests * d)

    def forward(self, seq: torch.Tensor, item_vectors: torch.Tensor, user_features: torch.Tensor) -> torch.Tensor:
        """seq (B, L) right-aligned item indices (0 = padding), item_vectors (B, L, D), user_features
        (B, F). Returns (B, L, D): the user vector after each position; with K > 1 interests
        (B, L, K, D): the K interest vectors after each position."""
        batch, length = seq.shape
        positions = torch.arange(length, device=seq.device)
        x = item_vectors + self.pos(positions)[None, :, :]
        # Causal, and never attend to padding (a padding query attends to itself, so no row is empty).
        causal = positions[None, :] > positions[:, None]                    # (L, L) key after query
        padding = (seq == 0)[:, None, :] & ~torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        blocked = causal[None] | padding                                     # (B, L, L)
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=seq.device).masked_fill(blocked, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)
        h = self.norm(self.encoder(x, mask=mask))
        # The causal mean of the items so far: the user's overall taste, beside the sequence model.
        real = (seq > 0).to(x.dtype)[..., None]
        pooled = torch.cumsum(item_vectors * real, dim=1) / torch.cumsum(real, dim=1).clamp(min=1.0)
        parts = [h, pooled]
        if len(self.features):
            feats = sum(emb(user_features[:, i]) for i, emb in enumerate(self.features))
            parts.append(feats[:, None, :].expand(-1, length, -1))
        state = self.skip(h) + self.out(torch.cat(parts, dim=-1))
        if self.interests == 1:
            return state
        return state[:, :, None, :] + self.interest_heads(state).view(batch, length, self.interests, -1)


def current_interest_first(interests: torch.Tensor, last_items: torch.Tensor) -> torch.Tensor:
    """(B, K, D) interests reordered so that the first is the *current* interest, the one with the
    largest dot product with the user's last item (``last_items`` (B, D); an empty history's padding
    vector scores every interest 0: the first stays first); the others keep their order. The first is
    what a row without an interest of its own is searched with (the ``user_embed`` of the user index);
    the nightly export and the exported encoder order them with this one function."""
    scores = torch.einsum("bkd,bd->bk", interests, last_items)
    chosen = scores.argmax(dim=1)
    rank = (torch.arange(interests.shape[1], device=interests.device)[None, :] != chosen[:, None]).long()
    order = torch.sort(rank, dim=1, stable=True).indices
    return interests.gather(1, order[:, :, None].expand(-1, -1, interests.shape[2]))


def interest_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Scores of ``items`` (N, D) for users (P, D), or for users of K interests (P, K, D): the best
    interest's (max over interests: what the multi-interest model is trained on). (P, N)."""
    scores = users @ items.T
    return scores.amax(dim=-2) if users.dim() == 3 else scores


class TwoTower(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int, facet_sizes: dict[str, int], title_buckets: int,
                 item_facets: dict[str, torch.Tensor], item_titles: torch.Tensor, user_feature_sizes: list[int]):
        super().__init__()
        self.cfg = cfg
        self.item_tower = ItemTower(cfg, n_items, facet_sizes, title_buckets, item_facets, item_titles)
        self.user_tower = UserTower(cfg, user_feature_sizes)

    def user_vectors(self, seq: torch.Tensor, user_features: torch.Tensor) -> torch.Tensor:
        """(B, L, D) user vectors after each position of right-aligned sequences."""
        return self.user_tower(seq, self.item_tower(seq), user_features)

    def last_user_vector(self, seq: torch.Tensor, user_features: torch.Tensor) -> torch.Tensor:
        """(B, D), or (B, K, D) for K interests: the user after the last position."""
        return self.user_vectors(seq, user_features)[:, -1]


class ContentItemEncoder(nn.Module):
    """What is exported for a new item's vector: the item tower over content given as tensors: the
    item's index (B,) (0: a new item), each feature facet's value indices (B, F, K) in the tower's
    facet order (0-padded), its title tokens (B, T)."""

    def __init__(self, item_tower: ItemTower):
        super().__init__()
        self.item_tower = item_tower

    def forward(self, ids: torch.Tensor, facets: torch.Tensor, titles: torch.Tensor) -> torch.Tensor:
        return self.item_tower.encode(ids, [facets[:, i, :] for i in range(len(self.item_tower.facet_names))],
                                      titles)


class SequenceUserEncoder(nn.Module):
    """What is exported for serving-time user vectors: the user tower with the item tower's
    outputs frozen into a table, so it needs neither the training code nor the item features."""

    def __init__(self, user_tower: UserTower, item_table: torch.Tensor):
        super().__init__()
        self.user_tower = user_tower
        self.register_buffer("item_table", item_table)

    def forward(self, seq: torch.Tensor, user_features: torch.Tensor) -> torch.Tensor:
        """(B, D) user vectors, or (B, K, D) interest vectors of a multi-interest model, the current
        interest first (``current_interest_first``)."""
        out = self.user_tower(seq, self.item_table[seq], user_features)[:, -1]
        if out.dim() == 2:
            return out
        return current_interest_first(out, self.item_table[seq[:, -1]])


def corrected_logits(user: torch.Tensor, pos_idx: torch.Tensor, pos_vecs: torch.Tensor, neg_idx: torch.Tensor,
                     neg_vecs: torch.Tensor, pos_log_q: torch.Tensor, neg_log_q: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Logits of the mixed-negative sampled softmax, (P, P + M); row i's positive is column i.

    Every logit is ``dot / temperature - log Q(candidate)``, where log Q is the log of the
    candidate's expected count in the candidate set (in-batch: P * p(item); uniform: M / N).
    Columns holding the row's own positive item anywhere but on the diagonal are masked out
    (accidental hits), so an item is never its own negative.
    """
    in_batch = interest_scores(user, pos_vecs) / temperature - pos_log_q[None, :]
    same = pos_idx[None, :] == pos_idx[:, None]
    in_batch = in_batch.masked_fill(same & ~torch.eye(len(pos_idx), dtype=torch.bool, device=user.device),
                                    float("-inf"))
    uniform = interest_scores(user, neg_vecs) / temperature - neg_log_q[None, :]
    uniform = uniform.masked_fill(neg_idx[None, :] == pos_idx[:, None], float("-inf"))
    return torch.cat([in_batch, uniform], dim=1)


def full_softmax_loss(user: torch.Tensor, targets: torch.Tensor, all_items: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Cross-entropy over the whole catalog (what a small catalog affords): no sampling, so no logQ.
    ``all_items`` is (N+1, D) with row 0 the padding item, which is never a candidate."""
    logits = interest_scores(user, all_items) / temperature
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def sampled_softmax_loss(logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def log_expected_counts(item_probs: torch.Tensor, pos_idx: torch.Tensor, n_positions: int, n_uniform: int,
                        n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log Q for in-batch positives (P * p(item)) and uniform negatives (M / N)."""
    pos_log_q = torch.log(item_probs[pos_idx] * n_positions + 1e-12)
    neg_log_q = torch.full((n_uniform,), math.log(n_uniform / n_items), device=item_probs.device)
    return pos_log_q, neg_log_q
