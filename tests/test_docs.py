"""The documentation against the code: the configuration tables (docs/configuration.md) are the
variables the code reads with their real defaults, the README stays the product's front door (at most
250 lines, every link resolves), and bench/plots.py draws real PNGs. Pure: no Elasticsearch."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from facetrec import settings as settings_module
from facetrec.settings import PACKAGE_ROOT as REPO_ROOT
from facetrec.settings import Settings

README = REPO_ROOT / "README.md"
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"
# Where the product reads its environment (benchmarks and tests set variables for it, not read new ones).
CODE = [REPO_ROOT / p for p in ("facetrec", "facetrec_cli", "app", "ingest", "dags")]
ENV_READ = re.compile(r"""(?:os\.environ\.get|os\.getenv|environ\.get)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                      r"""(?:\s*,\s*["']([^"']*)["'])?|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=])""")
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*$")
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def config_rows() -> dict[str, str]:
    """variable -> default cell, from every table of docs/configuration.md."""
    rows: dict[str, str] = {}
    for line in CONFIGURATION.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} has two rows in docs/configuration.md"
            assert m.group(3), f"{m.group(1)}: its row in docs/configuration.md says nothing about what it means"
            rows[m.group(1)] = m.group(2)
    return rows


def env_reads() -> dict[str, set[str | None]]:
    """variable -> the literal defaults it is read with (None: read without one), outside settings.py."""
    found: dict[str, set[str | None]] = {}
    for root in CODE:
        for path in ([root] if root.is_file() else sorted(root.rglob("*.py"))):
            if path == Path(settings_module.__file__):
                continue
            for m in ENV_READ.finditer(path.read_text()):
                name = m.group(1) or m.group(3)
                found.setdefault(name, set()).add(m.group(2) if m.group(1) else None)
    return found


def cell_value(cell: str) -> str | None:
    """A default cell: `value` (the backticks stripped) or `unset` (None)."""
    if cell == "unset":
        return None
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"a default cell is `value` or unset, not {cell!r}"
    return m.group(1)


def shown(default: object) -> str | None:
    """How the README states a Settings default."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, Path):
        return str(default.relative_to(REPO_ROOT)) if default.is_relative_to(REPO_ROOT) else str(default)
    return str(default)


def test_every_setting_has_a_row_with_its_real_default():
    rows = config_rows()
    names = settings_module._ENV_NAMES
    assert set(names) == {f.name for f in dataclasses.fields(Settings)}, "settings.py: _ENV_NAMES and the fields differ"
    for field in dataclasses.fields(Settings):
        var = names[field.name]
        assert var in rows, f"{var} (Settings.{field.name}) has no row in docs/configuration.md"
        stated, real = cell_value(rows[var]), shown(field.default)
        if isinstance(field.default, bool) and stated is not None:
            assert stated.lower() in (TRUE if field.default else FALSE), \
                f"{var}: docs/configuration.md says {stated!r}, default {real}"
        elif isinstance(field.default, (int, float)) and not isinstance(field.default, bool) and stated is not None:
            assert float(stated) == float(field.default), f"{var}: docs/configuration.md says {stated!r}, default {field.default!r}"
        else:
            assert stated == real, f"{var}: docs/configuration.md says {rows[var]!r}, the default is {real!r}"


def test_no_row_names_a_variable_the_code_does_not_read_and_every_read_has_a_row():
    rows = config_rows()
    settings_vars = set(settings_module._ENV_NAMES.values())
    reads = env_reads()
    assert "FACETREC_BIND" in reads and "SPARK_MASTER" in reads, "the scan of the code found nothing: fix the test"
    unread = sorted(set(rows) - settings_vars - set(reads))
    assert not unread, f"docs/configuration.md documents variables the code does not read: {unread}"
    undocumented = sorted(set(reads) - set(rows))
    assert not undocumented, f"the code reads variables docs/configuration.md does not list: {undocumented}"
    for var, defaults in reads.items():
        if var in settings_vars:
            continue  # its row states the Settings default (checked above)
        stated = cell_value(rows[var])
        for default in defaults:
            assert stated == default, f"{var}: docs/configuration.md says {rows[var]!r}, the code reads it with default {default!r}"


def test_the_readme_is_a_front_door_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "the README is the product's front door: at most 250 lines"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO_ROOT / target).exists(), f"the README links to {target}, which does not exist"


def test_the_checks_catch_a_setting_without_a_row(monkeypatch):
    monkeypatch.setitem(settings_module._ENV_NAMES, "es_url", "FACETREC_NOT_DOCUMENTED")
    with pytest.raises(AssertionError, match="FACETREC_NOT_DOCUMENTED"):
        test_every_setting_has_a_row_with_its_real_default()


# --- bench/plots.py ------------------------------------------------------------------------------

def _plots():
    spec = importlib.util.spec_from_file_location("facetrec_bench_plots", REPO_ROOT / "bench" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_png(path: Path) -> None:
    from matplotlib import image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0, f"{path} is blank"


SERVING = {"command": "python bench/serving_bench.py --items 1000 --index-types hnsw --rps 20 --json r.json",
           "items": 1000, "loads": {},
           "results": [{"index_type": "hnsw", "mode": "knn", "achieved_rps": 19.7, "p50_ms": 12.0, "p95_ms": 30.0,
                        "p99_ms": 41.0, "errors": 0, "service_p50_ms": 10.0, "direct_p50_ms": 9.0,
                        "overhead_ratio": 1.11, "es_took_p50_ms": 6.0,
                        "rows": {"for_you": {"search": "graph", "match_fraction": 0.4, "id_recall": 0.8,
                                             "score_recall": 0.99, "took_p50_ms": 3.0},
                                 "comedy": {"search": "exact scan", "match_fraction": 0.04, "id_recall": 1.0,
                                            "score_recall": 1.0, "took_p50_ms": 5.5}}}]}


def test_each_plot_writes_a_png_from_a_tiny_input(tmp_path):
    plots = _plots()
    frontier = {"title": "t", "source": "a test", "date": "today", "x_log": True,
                "points": [{"row": "a", "setting": "10", "cost_ms": 2.0, "id_recall": 0.7},
                           {"row": "a", "setting": "30", "cost_ms": 4.0, "id_recall": 0.9, "highlight": True},
                           {"row": "a", "setting": "exact", "cost_ms": 20.0, "id_recall": 1.0, "alone": True},
                           {"row": "b", "setting": "10", "cost_ms": 3.0, "id_recall": 0.95}]}
    _assert_png(plots.plot_frontier(frontier, tmp_path / "frontier.png"))
    bars = {"runs": [{"label": "x", "offered_rps": 50, "achieved_rps": 20.5, "p50_ms": 700, "p95_ms": 1100,
                      "p99_ms": 1300}, {"label": "y", "offered_rps": 50, "p50_ms": 500, "p95_ms": 800, "p99_ms": 900}]}
    _assert_png(plots.plot_latency(bars, tmp_path / "bars.png"))
    lines = {"runs": [{"label": "x", "offered_rps": r, "p50_ms": r, "p95_ms": 2 * r, "p99_ms": 3 * r}
                      for r in (10, 20, 40)]}
    _assert_png(plots.plot_latency(lines, tmp_path / "lines.png"))
    _assert_png(plots.plot_latency_cdf({"runs": [{"label": "x", "latencies_ms": [5.0, 7.0, 6.0, 30.0]}]},
                                       tmp_path / "cdf.png"))
    study = {"command": "python bench/model_study.py",
             "baselines": {"MostPop": {s: {"HR@10": 0.06, "NDCG@10": 0.03} for s in ("valid", "test")}},
             "runs": [{"variant": "default", "seed": seed, "valid": {"HR@10": 0.2 + seed / 100, "NDCG@10": 0.1},
                       "test": {"HR@10": 0.18, "NDCG@10": 0.09 + seed / 100}} for seed in (0, 1, 2)]}
    _assert_png(plots.plot_model_study(study, tmp_path / "study.png", date="today"))


def test_serving_bench_json_and_the_sweep_table_become_plot_inputs(tmp_path):
    plots = _plots()
    frontier = plots.frontier_from_serving(SERVING)
    assert {(p["row"], p["setting"], p["cost_ms"], p["id_recall"]) for p in frontier["points"]} == {
        ("for_you", "hnsw knn", 3.0, 0.8), ("comedy", "hnsw knn", 5.5, 1.0)}
    latency = plots.latency_from_serving(SERVING)
    assert latency["runs"] == [{"label": "hnsw knn", "offered_rps": 20.0, "achieved_rps": 19.7, "p50_ms": 12.0,
                                "p95_ms": 30.0, "p99_ms": 41.0}]
    sweep = plots.frontier_from_sweep("factor row           id recall score rec took p50\n"
                                      "    10 for_you           0.673    0.9800      4.0\n"
                                      " exact comedy            1.000    1.0000     16.0\n")
    assert [(p["setting"], p["row"], p["id_recall"], p["cost_ms"]) for p in sweep["points"]] == [
        ("10", "for_you", 0.673, 4.0), ("exact", "comedy", 1.0, 16.0)]
    serving = tmp_path / "results.json"
    serving.write_text(json.dumps(SERVING))
    assert plots.main(["frontier", "--serving", str(serving), "--out", str(tmp_path / "f.png")]) == 0
    _assert_png(tmp_path / "f.png")
    with pytest.raises(ValueError, match="lacks"):
        plots.plot_frontier({"points": [{"row": "a"}]}, tmp_path / "bad.png")


def test_the_pictures_in_docs_are_drawn_from_the_json_beside_them(tmp_path):
    plots = _plots()
    docs = REPO_ROOT / "docs"
    for name, draw in (("frontier_1m", plots.plot_frontier), ("latency_1m", plots.plot_latency),
                       ("model_study", plots.plot_model_study)):
        assert (docs / f"{name}.png").is_file(), f"docs/{name}.png is missing"
        _assert_png(draw(json.loads((docs / f"{name}.json").read_text()), tmp_path / f"{name}.png"))
