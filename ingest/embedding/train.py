"""Train the two-tower model: seeded and deterministic on the CPU, early stopping on validation
HR@10 (= Recall@10), checkpoint with its configs and the data version."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ingest.embedding.evaluate import evaluate, model_scorer
from ingest.embedding.features import TrainingData, left_pad, load_training_data
from ingest.embedding.model import (
    ModelConfig,
    TwoTower,
    corrected_logits,
    full_softmax_loss,
    log_expected_counts,
    sampled_softmax_loss,
)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    uniform_negatives: int = 512
    max_positions: int = 4096
    patience: int = 8
    seed: int = 42
    eval_users: int = 0          # 0: all users; else a fixed random subset for validation speed
    threads: int = 0             # 0: torch's default
    loss: str = "auto"           # full | sampled | auto (full softmax up to full_softmax_max_items)
    full_softmax_max_items: int = 20_000
    positions: str = "all"       # all: predict the next item after every position; last: only the last
    ranker_holdout: int = 5      # the last N items of each training sequence are left to the ranker
                                 # (ingest.embedding.ranker_training): the towers never fit them; 0: no ranker


LOSSES = ("auto", "full", "sampled")
POSITIONS = ("all", "last")


def loss_kind(cfg: TrainConfig, n_items: int) -> str:
    """The loss a run uses: ``full`` softmax where the catalog is small, ``sampled`` (logQ) beyond."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {cfg.loss!r}")
    if cfg.loss != "auto":
        return cfg.loss
    return "full" if n_items <= cfg.full_softmax_max_items else "sampled"


def build_model(data: TrainingData, cfg: ModelConfig) -> TwoTower:
    return TwoTower(cfg, data.n_items, data.facet_sizes, data.title_buckets,
                    {f: torch.from_numpy(m) for f, m in data.item_facets.items()},
                    torch.from_numpy(data.item_titles), data.user_feature_sizes)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def _crop(seq: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of ``length + 1`` items (input + shifted target) from a long history."""
    if len(seq) <= length + 1:
        return seq
    end = int(rng.integers(length + 1, len(seq) + 1))
    return seq[end - length - 1:end]


def tower_sequences(data: TrainingData, holdout: int) -> list[np.ndarray]:
    """What the towers fit: each training sequence without the ranker's holdout (its last items)."""
    if not holdout:
        return data.train_seqs
    return [s[:max(len(s) - holdout, 1)] for s in data.train_seqs]


def train_epoch(model: TwoTower, data: TrainingData, cfg: TrainConfig, optimizer, rng: np.random.Generator,
                item_probs: torch.Tensor, progress: bool, loss_name: str = "sampled") -> tuple[float, int]:
    model.train()
    sequences = tower_sequences(data, cfg.ranker_holdout)
    users = np.array([u for u, s in enumerate(sequences) if len(s) >= 2])
    rng.shuffle(users)
    total, samples = 0.0, 0
    batches = range(0, len(users), cfg.batch_size)
    for start in tqdm(batches, desc="train", leave=False, disable=not progress, file=sys.stderr):
        rows = users[start:start + cfg.batch_size]
        windows = [_crop(sequences[u], model.cfg.max_len, rng) for u in rows]
        inputs = torch.from_numpy(left_pad([w[:-1] for w in windows], model.cfg.max_len))
        targets = torch.from_numpy(left_pad([w[1:] for w in windows], model.cfg.max_len))
        feats = torch.from_numpy(data.user_features[rows])
        user_vecs = model.user_vectors(inputs, feats)
        valid = targets > 0
        if cfg.positions == "last":
            valid = torch.zeros_like(valid)
            valid[:, -1] = True
        positions = valid.nonzero()
        if len(positions) > cfg.max_positions:
            keep = torch.from_numpy(rng.choice(len(positions), cfg.max_positions, replace=False))
            positions = positions[keep]
        u = user_vecs[positions[:, 0], positions[:, 1]]
        pos_idx = targets[positions[:, 0], positions[:, 1]]
        if loss_name == "full":
            loss = full_softmax_loss(u, pos_idx, model.item_tower(torch.arange(data.n_items + 1)),
                                     model.cfg.temperature)
        else:
            neg_idx = torch.from_numpy(rng.integers(1, data.n_items + 1, cfg.uniform_negatives))
            pos_log_q, neg_log_q = log_expected_counts(item_probs, pos_idx, len(pos_idx), cfg.uniform_negatives,
                                                       data.n_items)
            logits = corrected_logits(u, pos_idx, model.item_tower(pos_idx), neg_idx, model.item_tower(neg_idx),
                                      pos_log_q, neg_log_q, model.cfg.temperature)
            loss = sampled_softmax_loss(logits)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        total += float(loss.detach()) * len(pos_idx)
        samples += len(pos_idx)
    return total / max(samples, 1), samples


def train(data: TrainingData, model_cfg: ModelConfig, cfg: TrainConfig, out_dir: str | Path | None = None,
          progress: bool = True, log=print) -> dict:
    """Train with early stopping; returns a summary and (with ``out_dir``) writes checkpoint.pt."""
    if cfg.uniform_negatives < 1:
        raise ValueError("uniform_negatives must be at least 1 (mixed negative sampling)")
    if cfg.ranker_holdout < 0:
        raise ValueError("ranker_holdout must be 0 (no ranker) or more")
    if cfg.positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {cfg.positions!r}")
    loss_name = loss_kind(cfg, data.n_items)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(data, model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    counts = torch.from_numpy(data.train_counts).float() + 1.0
    counts[0] = 0.0
    item_probs = counts / counts.sum()
    eval_rows = None
    if cfg.eval_users and cfg.eval_users < len(data.user_ids):
        eval_rows = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(data.user_ids), cfg.eval_users,
                                                                       replace=False))
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    history = []
    started = time.perf_counter()
    total_samples = 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        loss, samples = train_epoch(model, data, cfg, optimizer, rng, item_probs, progress, loss_name)
        total_samples += samples
        metrics = evaluate(model_scorer(model, data), data, "valid", users=eval_rows)
        history.append({"epoch": epoch, "loss": round(loss, 4), **{k: round(v, 4) for k, v in metrics.items()}})
        log(f"epoch {epoch:>3}  loss {loss:.4f}  valid HR@10 {metrics['HR@10']:.4f}  NDCG@10 {metrics['NDCG@10']:.4f}"
            f"  ({samples / (time.perf_counter() - epoch_start):,.0f} samples/s)")
        if metrics["HR@10"] > best:
            best, best_epoch, stale = metrics["HR@10"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                log(f"early stop: no validation improvement for {cfg.patience} epochs (best epoch {best_epoch})")
                break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    summary = {"best_epoch": best_epoch, "valid_HR@10": best, "epochs_run": len(history), "seconds": round(seconds, 1),
               "samples_per_s": round(total_samples / seconds, 1), "loss": loss_name, "data_version": data.data_version,
               "model_config": dataclasses.asdict(model_cfg), "train_config": dataclasses.asdict(cfg),
               "history": history}
    if out_dir is not None:
        save_checkpoint(model, data, summary, Path(out_dir))
    summary["model"] = model
    return summary


def model_version(summary: dict) -> str:
    """The model's identity: its data, its architecture (a short hash of the model config: two models
    of one data set and seed that differ in, say, their interests or id dropout must never share a
    version, which names their registered encoders), its seed, its best epoch, its ranker holdout."""
    holdout = summary["train_config"].get("ranker_holdout", 0)   # towers that left positions to a ranker differ
    architecture = hashlib.sha1(json.dumps(summary["model_config"], sort_keys=True).encode()).hexdigest()[:6]
    return (f"two-tower-{summary['data_version']}-m{architecture}-s{summary['train_config']['seed']}"
            f"-e{summary['best_epoch']}" + (f"-h{holdout}" if holdout else ""))


def save_checkpoint(model: TwoTower, data: TrainingData, summary: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "checkpoint.pt"
    meta = {k: v for k, v in summary.items() if k != "model"}
    meta["model_version"] = model_version(summary)
    meta["title_buckets"] = data.title_buckets
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    (out_dir / "train_summary.json").write_text(json.dumps(meta, indent=2))
    return path


# What a checkpoint made before a ModelConfig field existed was trained with (the field's old
# behaviour), so an older checkpoint still loads as the model it is, whatever today's default.
LEGACY_MODEL_FIELDS = {"item_facets": True, "item_title": True, "user_features": True}


def model_config_of(meta: dict) -> ModelConfig:
    return ModelConfig(**{**LEGACY_MODEL_FIELDS, **meta["model_config"]})


def load_checkpoint(path: str | Path, data: TrainingData) -> tuple[TwoTower, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    meta = blob["meta"]
    if meta["data_version"] != data.data_version:
        raise ValueError(f"checkpoint {path} was trained on data version {meta['data_version']}, "
                         f"the ETL output is {data.data_version}: retrain (`facetrec train`)")
    model = build_model(data, model_config_of(meta))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta


def train_from_etl(etl_dir, out_dir, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
                   progress: bool = True) -> dict:
    data = load_training_data(etl_dir)
    return train(data, model_cfg or ModelConfig(), cfg or TrainConfig(), out_dir, progress=progress)
