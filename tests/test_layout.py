"""The layering the architecture doc promises (docs/architecture.md), read from the imports.

`facetrec/` is the shared core: the service (`app/`), the pipeline (`ingest/`) and the command
line (`facetrec_cli/`) build on it, so it must never import from them. Imports are read with `ast`, so
the lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# package -> top-level packages of this project it must not import
FORBIDDEN = {
    "facetrec": {"app", "ingest", "facetrec_cli", "dags", "bench", "tests"},
    "app": {"ingest", "facetrec_cli", "dags", "bench", "tests"},
    "ingest": {"app", "facetrec_cli", "dags", "bench", "tests"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name a file imports, with its line number (relative imports resolve
    within the file's own package, which is what the layering allows)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layering_violations(package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(REPO)}:{lineno} imports {module}")
    return out


def test_the_checker_sees_lazy_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from ingest.indexing import reindex\n    import app.server\n")
    assert imported_modules(module) == [(1, "os"), (4, "ingest.indexing"), (5, "app.server")]


def test_shared_core_imports_nothing_above_it():
    assert layering_violations("facetrec", FORBIDDEN["facetrec"]) == []


def test_service_and_pipeline_do_not_import_each_other():
    assert layering_violations("app", FORBIDDEN["app"]) == []
    assert layering_violations("ingest", FORBIDDEN["ingest"]) == []


def test_ingest_is_split_into_its_two_jobs():
    """Every ingest module lives in embedding/ or indexing/, except the three that drive both (the
    nightly steps, their Airflow tasks, and the served evaluation: model vectors -> publish -> rows)."""
    top = {p.name for p in (REPO / "ingest").glob("*.py")}
    assert top == {"__init__.py", "pipeline.py", "dag_tasks.py", "served_evaluation.py"}
    assert (REPO / "ingest" / "embedding" / "__init__.py").exists()
    assert (REPO / "ingest" / "indexing" / "__init__.py").exists()


def test_the_embedding_side_does_not_talk_to_elasticsearch():
    """Computing embeddings needs no Elasticsearch code: the index side consumes its files."""
    assert layering_violations("ingest/embedding", {"app", "facetrec_cli", "elasticsearch"}) == []
    offenders = [v for v in layering_violations("ingest/embedding", {"ingest", "facetrec"})
                 if "ingest.indexing" in v or "facetrec.es" in v or "facetrec.homepage" in v]
    assert offenders == []


def test_dags_only_call_the_airflow_task_functions():
    """DAG files stay thin: of this project they import only ingest.dag_tasks (inside tasks)."""
    project = {"facetrec", "app", "ingest", "facetrec_cli"}
    for path in sorted((REPO / "dags").glob("*.py")):
        tree = ast.parse(path.read_text())
        for lineno, module in imported_modules(path):
            if module.split(".")[0] not in project:
                continue
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == module
                     for a in n.names}
            assert (module, names) == ("ingest", {"dag_tasks"}), f"{path.name}:{lineno} imports {module} {names}"


def test_one_command_line_tree_holds_every_command():
    from facetrec_cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"index", "etl", "train", "rank", "evaluate", "embed", "pipeline", "demo", "events", "spark", "experiment"}
    assert parser.parse_args(["index", "status"]).func.__module__ == "facetrec_cli.index"
    assert parser.parse_args(["events", "replay", "--since", "2026-01-01T00:00:00Z"]).func.__module__ == "facetrec_cli.events"
    assert parser.parse_args(["demo", "stop"]).action == "stop"
