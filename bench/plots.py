"""Benchmark pictures: PNGs under docs/ drawn with matplotlib (Agg backend) from benchmark JSON.

    python bench/plots.py model-study                      # docs/model_study.json -> docs/model_study.png
    python bench/plots.py frontier docs/frontier_1m.json   # -> docs/frontier_1m.png
    python bench/plots.py latency docs/latency_1m.json     # -> docs/latency_1m.png
    python bench/plots.py latency-cdf RUNS.json --out docs/latency_cdf.png
    python bench/plots.py frontier --serving results.json --out docs/frontier.png   # serving_bench --json
    python bench/plots.py latency --serving results.json --out docs/latency.png

Every picture carries its ``title`` and, at the bottom, its ``source`` (the command that measured
the numbers) and ``date`` (when), both optional keys of every shape below; other extra keys are
ignored. The functions take these JSON shapes:

frontier (``plot_frontier``): the recall-cost frontier per row, one line per row, points in the
order given, each labelled by its setting::

    {"title": "...", "source": "python bench/profile_homepage.py ... (2026-12-01)",
     "points": [{"row": "for_you", "setting": "10", "cost_ms": 4.0, "id_recall": 0.673}, ...]}

  ``cost_ms`` is Elasticsearch's cost for the row (e.g. its ``took`` p50), ``id_recall`` the row's
  id recall@size against the exact answer. Optional: a point with ``"alone": true`` is a star not
  joined to its row's line (e.g. the exact scan), ``"highlight": true`` rings it (e.g. the setting
  as shipped); the document may set ``x_log``, ``x_label``, ``y_label``, ``highlight_label`` and
  ``alone_label``. ``frontier_from_serving`` makes one point per row and
  result from ``bench/serving_bench.py --json`` (``took_p50_ms`` and ``id_recall`` of each row;
  the setting is ``"<index_type> <mode>"`` unless given); ``frontier_from_sweep`` reads the table
  ``bench/profile_homepage.py --sweep`` prints (``factor row id-recall score-recall took-p50``).

latency (``plot_latency``): latency under load, p50 / p95 / p99 per run::

    {"title": "...", "source": "...",
     "runs": [{"label": "hnsw knn", "offered_rps": 50, "achieved_rps": 20.5,
               "p50_ms": 745, "p95_ms": 1141, "p99_ms": 1348}, ...]}

  Where a label has runs at two or more offered rates, each percentile is a line against offered
  rps; where every label has one run, the runs are grouped bars (one group per label, achieved rps
  written above it). ``latency_from_serving`` reads ``bench/serving_bench.py --json`` (label
  ``"<index_type> <mode>"``; offered rps from the JSON's ``offered_rps`` or its command's ``--rps``).

latency CDF (``plot_latency_cdf``): the distribution of one or more runs' request latencies::

    {"title": "...", "source": "...", "runs": [{"label": "hnsw knn", "latencies_ms": [12.1, ...]}]}

model study (``plot_model_study``): the JSON ``bench/model_study.py`` writes
(``docs/model_study.json``: ``baselines`` {name: {split: {"HR@10", "NDCG@10"}}} and ``runs``
[{variant, seed, valid, test}]): HR@10 and NDCG@10 per variant, validation and test, bars at the
mean over seeds with the standard deviation as error bars (baselines have none).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401

DOCS = Path(__file__).resolve().parents[1] / "docs"
PERCENTILES = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))


def _need(entry: dict, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}: {entry!r}"[:300])


def _finish(fig, doc: dict, out: Path) -> Path:
    source = " ".join(str(doc[k]) if k == "source" else f"({doc[k]})" for k in ("source", "date") if doc.get(k))
    if source:
        fig.text(0.01, 0.01, f"source: {source}", fontsize=7, color="0.35", ha="left", va="bottom", wrap=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


# --- the recall-cost frontier -------------------------------------------------------------------

def plot_frontier(doc: dict, out: Path) -> Path:
    """x: Elasticsearch cost per row (ms), y: id recall; one line per row, points labelled by setting
    (points may name a ``group``: the rows of one group, e.g. a row and its peer, share a colour)."""
    points = doc.get("points") or []
    if not points:
        raise ValueError("frontier: no points")
    by_row: dict[str, list[dict]] = {}
    for p in points:
        _need(p, ("row", "setting", "cost_ms", "id_recall"), "frontier point")
        by_row.setdefault(p["row"], []).append(p)
    fig, ax = plt.subplots(figsize=(9.5, 6.5))
    groups: dict[str, str] = {}   # points of one "group" (a row and its peer's line) share a colour
    for row, pts in by_row.items():
        groups.setdefault(pts[0].get("group", row), f"C{len(groups) % 10}")
    for row, pts in by_row.items():
        color = groups[pts[0].get("group", row)]
        joined = [p for p in pts if not p.get("alone")]
        ax.plot([p["cost_ms"] for p in joined], [p["id_recall"] for p in joined], marker="o", color=color, label=row)
        for p in pts:
            if p.get("alone"):
                ax.plot([p["cost_ms"]], [p["id_recall"]], marker="*", markersize=11, color=color, linestyle="none")
            if p.get("highlight"):
                ax.plot([p["cost_ms"]], [p["id_recall"]], marker="o", markersize=13, markerfacecolor="none",
                        markeredgecolor="black", linestyle="none")
            ax.annotate(str(p["setting"]), (p["cost_ms"], p["id_recall"]), textcoords="offset points",
                        xytext=(5, -9 if p.get("alone") else 3), fontsize=7, color=color)
    if any(p.get("highlight") for p in points):
        ax.plot([], [], marker="o", markersize=10, markerfacecolor="none", markeredgecolor="black", linestyle="none",
                label=doc.get("highlight_label", "highlighted"))
    if any(p.get("alone") for p in points):
        ax.plot([], [], marker="*", markersize=10, color="0.4", linestyle="none",
                label=doc.get("alone_label", "not on the line"))
    if doc.get("x_log"):
        ax.set_xscale("log")
        label = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "125" else "")
        ax.xaxis.set_major_formatter(label)
        ax.xaxis.set_minor_formatter(label)
        ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.set_xlabel(doc.get("x_label", "Elasticsearch cost per row, ms (took p50)"))
    ax.set_ylabel(doc.get("y_label", "id recall@10"))
    ax.set_title(doc.get("title", "recall-cost frontier per row"))
    ax.grid(True, alpha=0.3)
    ax.legend(title="row", fontsize=8)
    fig.subplots_adjust(bottom=0.14)
    return _finish(fig, doc, out)


def frontier_from_serving(doc: dict, setting: str | None = None, title: str | None = None,
                          source: str | None = None) -> dict:
    """One frontier point per row and result of ``bench/serving_bench.py --json``."""
    points = []
    for result in doc.get("results", []):
        label = setting or f"{result.get('index_type', '?')} {result.get('mode', '?')}"
        for row_id, q in result.get("rows", {}).items():
            _need(q, ("took_p50_ms", "id_recall"), f"serving row {row_id}")
            points.append({"row": row_id, "setting": label, "cost_ms": q["took_p50_ms"], "id_recall": q["id_recall"]})
    if title is None:
        items = doc.get("items")
        title = f"recall-cost per row, {items:,} items" if isinstance(items, int) else "recall-cost per row"
    return {"title": title, "source": source or doc.get("command", ""), "points": points}


_SWEEP_LINE = re.compile(r"^\s*(\S+)\s+(\S+)\s+(\d+(?:\.\d+)?)\s+(\S+)\s+(\d+(?:\.\d+)?)\s*$")


def frontier_from_sweep(text: str, title: str = "recall-cost frontier per row", source: str = "") -> dict:
    """The points of the table ``bench/profile_homepage.py --sweep`` prints (factor, row, id recall,
    score recall, took p50); other lines are skipped."""
    points = []
    for line in text.splitlines():
        m = _SWEEP_LINE.match(line)
        if m and m.group(1) != "factor":
            points.append({"row": m.group(2), "setting": m.group(1), "cost_ms": float(m.group(5)),
                           "id_recall": float(m.group(3))})
    return {"title": title, "source": source, "points": points}


# --- latency under load ---------------------------------------------------------------------------

def plot_latency(doc: dict, out: Path) -> Path:
    """p50/p95/p99 against offered rps (lines), or grouped bars where each label has one run."""
    runs = doc.get("runs") or []
    if not runs:
        raise ValueError("latency: no runs")
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        _need(r, ("label", "offered_rps", "p50_ms", "p95_ms", "p99_ms"), "latency run")
        by_label.setdefault(r["label"], []).append(r)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if any(len(rs) > 1 for rs in by_label.values()):
        styles = {"p50_ms": "-", "p95_ms": "--", "p99_ms": ":"}
        for i, (label, rs) in enumerate(by_label.items()):
            rs = sorted(rs, key=lambda r: r["offered_rps"])
            color = f"C{i % 10}"
            for key, name in PERCENTILES:
                ax.plot([r["offered_rps"] for r in rs], [r[key] for r in rs], styles[key], marker="o", color=color,
                        label=f"{label} {name}")
        ax.set_xlabel("offered rps")
    else:
        labels = list(by_label)
        width = 0.8 / len(PERCENTILES)
        for j, (key, name) in enumerate(PERCENTILES):
            xs = [i + (j - 1) * width for i in range(len(labels))]
            ax.bar(xs, [by_label[lb][0][key] for lb in labels], width, label=name, color=f"C{j}")
        for i, lb in enumerate(labels):
            r = by_label[lb][0]
            top = max(r[k] for k, _ in PERCENTILES)
            note = f"{r['achieved_rps']:.1f} of {r['offered_rps']:g} rps" if "achieved_rps" in r else \
                f"{r['offered_rps']:g} rps offered"
            ax.annotate(note, (i, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(0, 1.1 * max(r[k] for rs in by_label.values() for r in rs for k, _ in PERCENTILES))
    ax.set_ylabel("latency, ms")
    ax.set_title(doc.get("title", "latency under load"))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    return _finish(fig, doc, out)


def latency_from_serving(doc: dict, offered_rps: float | None = None, title: str | None = None,
                         source: str | None = None) -> dict:
    """The runs of ``bench/serving_bench.py --json``: one per index type and mode."""
    if offered_rps is None:
        offered_rps = doc.get("offered_rps")
    if offered_rps is None:
        argv = shlex.split(doc.get("command", ""))
        if "--rps" in argv[:-1]:
            offered_rps = float(argv[argv.index("--rps") + 1])
    if offered_rps is None:
        raise ValueError("latency_from_serving: the JSON names no offered rps (pass offered_rps)")
    runs = [{"label": f"{r['index_type']} {r['mode']}", "offered_rps": r.get("offered_rps", offered_rps),
             "achieved_rps": round(r["achieved_rps"], 1), "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
             "p99_ms": r["p99_ms"]} for r in doc.get("results", [])]
    return {"title": title or "latency under load", "source": source or doc.get("command", ""), "runs": runs}


def plot_latency_cdf(doc: dict, out: Path) -> Path:
    """The cumulative distribution of each run's request latencies."""
    runs = doc.get("runs") or []
    if not runs:
        raise ValueError("latency CDF: no runs")
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in runs:
        _need(r, ("label", "latencies_ms"), "latency CDF run")
        xs = sorted(r["latencies_ms"])
        if not xs:
            raise ValueError(f"latency CDF: run {r['label']!r} has no latencies")
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=f"{r['label']} (n={len(xs):,})")
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="0.7", linewidth=0.8, linestyle=":")
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("share of requests")
    ax.set_title(doc.get("title", "latency distribution"))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.14)
    return _finish(fig, doc, out)


# --- the model study ----------------------------------------------------------------------------

def plot_model_study(doc: dict, out: Path, date: str | None = None) -> Path:
    """HR@10 and NDCG@10 per variant (validation and test), mean over seeds with sd error bars
    (none for the baselines and single-seed variants); ``date`` is written beside the source."""
    _need(doc, ("runs",), "model study")
    # A run with a ranker is two bars: its towers alone, and the same towers + ranker.
    doc = {**doc, "runs": [*doc["runs"], *({**r[extra], "variant": f"{r['variant']} + {label}", "seed": r.get("seed")}
                                           for extra, label in (("hydrated", "hydrated"), ("ranked", "ranker"))
                                           for r in doc["runs"] if extra in r)]}
    names: list[str] = []
    stats: dict[tuple[str, str, str], tuple[float, float]] = {}
    for name, splits in (doc.get("baselines") or {}).items():
        names.append(name)
        for split in ("valid", "test"):
            for metric in ("HR@10", "NDCG@10"):
                stats[name, split, metric] = (splits[split][metric], float("nan"))
    for run in doc["runs"]:
        _need(run, ("variant", "valid", "test"), "model study run")
        if run["variant"] not in names:
            names.append(run["variant"])
    for variant in names:
        mine = [r for r in doc["runs"] if r["variant"] == variant]
        for split in ("valid", "test"):
            for metric in ("HR@10", "NDCG@10"):
                if mine:
                    values = [r[split][metric] for r in mine]
                    stats[variant, split, metric] = (statistics.mean(values),
                                                     statistics.stdev(values) if len(values) > 1 else float("nan"))
    if not names:
        raise ValueError("model study: no baselines and no runs")
    seeds = sorted({r.get("seed") for r in doc["runs"] if r.get("seed") is not None})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
        for j, split in enumerate(("valid", "test")):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(names))]
            means = [stats[n, split, metric][0] for n in names]
            sds = [stats[n, split, metric][1] for n in names]
            ax.bar(xs, means, 0.38, yerr=sds, capsize=3, label="validation" if split == "valid" else "test",
                   color=f"C{j}")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(doc.get("title", f"model study, MovieLens-100k: mean ± sd over seeds {seeds}"))
    fig.subplots_adjust(bottom=0.22, wspace=0.2)
    return _finish(fig, {"source": doc.get("source") or doc.get("command", ""), "date": date or doc.get("date")}, out)


# --- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("model-study", help="HR@10 / NDCG@10 per variant from bench/model_study.py's JSON")
    p.add_argument("--json", type=Path, default=DOCS / "model_study.json")
    p.add_argument("--out", type=Path, default=None, help="default: the JSON's path with .png")
    p.add_argument("--date", help="when the study ran, written beside its command")
    for kind, help_ in (("frontier", "recall-cost frontier per row"), ("latency", "p50/p95/p99 under load"),
                        ("latency-cdf", "latency distribution of runs")):
        p = sub.add_parser(kind, help=help_)
        p.add_argument("json", type=Path, nargs="?", help="a JSON of this plot's shape (see the module's doc)")
        if kind != "latency-cdf":
            p.add_argument("--serving", type=Path, help="read bench/serving_bench.py --json output instead")
        p.add_argument("--out", type=Path, default=None, help="default: the JSON's path with .png")
    args = parser.parse_args(argv)

    if args.kind == "model-study":
        source = args.json
        doc = json.loads(source.read_text())
        made = plot_model_study(doc, args.out or source.with_suffix(".png"), date=args.date)
    else:
        source = getattr(args, "serving", None) or args.json
        if source is None:
            parser.error(f"{args.kind}: give a JSON file" + (" or --serving" if args.kind != "latency-cdf" else ""))
        doc = json.loads(source.read_text())
        if getattr(args, "serving", None):
            doc = (frontier_from_serving if args.kind == "frontier" else latency_from_serving)(doc)
        draw = {"frontier": plot_frontier, "latency": plot_latency, "latency-cdf": plot_latency_cdf}[args.kind]
        made = draw(doc, args.out or source.with_suffix(".png"))
    print(f"wrote {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
