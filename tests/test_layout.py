"""The layering the architecture doc promises (docs/architecture.md), read from the imports.

`facetrec/` is the shared core: the service (`app/`), the pipeline (`ingest/`) and the command
line (`facetrec_cli/`) build on it, so it must never import from them. No module of the project
imports itself back through others (no import cycle), nor does any subpackage. Imports are read
with `ast`, so the lazy imports inside functions count too.
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


PACKAGES = ("facetrec", "app", "ingest", "facetrec_cli")


def import_graph(root: Path = REPO, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the project's modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``;
    relative imports resolved; lazy imports inside functions included)."""
    modules = {module_name_in(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between subpackages (``facetrec.catalog``, ``ingest.indexing``, ...); a module
    directly under ``facetrec/`` or ``ingest/`` is a node of its own."""
    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] in ("facetrec", "ingest") and len(parts) > 1 else parts[0]
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(package(module), set()).update(package(t) for t in targets if package(t) != package(module))
    return out


def test_the_cycle_checker_finds_a_circle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "facetrec"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "settings.py").write_text("def thresholds():\n    from facetrec.sub import planner\n")
    (pkg / "sub" / "planner.py").write_text("from facetrec.sub.rows import Row\n")
    (pkg / "sub" / "rows.py").write_text("from facetrec import settings\n")
    graph = import_graph(tmp_path, ("facetrec",))
    assert cycles(graph) == [["facetrec.settings", "facetrec.sub.planner", "facetrec.sub.rows"]]
    assert cycles(package_graph(graph)) == [["facetrec.settings", "facetrec.sub"]]


def test_no_import_cycle_between_modules_or_subpackages():
    graph = import_graph()
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


def test_settings_and_errors_are_leaves():
    """Settings imports nothing of the project but the error family, which imports nothing of it."""
    graph = import_graph()
    assert graph["facetrec.errors"] == set()
    assert graph["facetrec.settings"] == {"facetrec.errors"}


def test_the_checker_sees_lazy_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from ingest.indexing import reindex\n    import app.server\n")
    assert imported_modules(module) == [(1, "os"), (4, "ingest.indexing"), (5, "app.server")]


def test_shared_core_imports_nothing_above_it():
    assert layering_violations("facetrec", FORBIDDEN["facetrec"]) == []


def test_service_and_pipeline_do_not_import_each_other():
    assert layering_violations("app", FORBIDDEN["app"]) == []
    assert layering_violations("ingest", FORBIDDEN["ingest"]) == []


def test_ingest_is_split_into_its_jobs():
    """Every ingest module lives in a package of its job (embedding/, indexing/, experiments/,
    streaming/), except the three that drive several (the nightly steps, their Airflow tasks, and the
    served evaluation: model vectors -> publish -> rows)."""
    top = {p.name for p in (REPO / "ingest").glob("*.py")}
    assert top == {"__init__.py", "pipeline.py", "dag_tasks.py", "served_evaluation.py"}
    for job in ("embedding", "indexing", "experiments", "streaming"):
        assert (REPO / "ingest" / job / "__init__.py").exists()


def test_the_core_is_in_subpackages_by_concept_each_saying_what_it_owns():
    top = {p.name for p in (REPO / "facetrec").glob("*.py")}
    assert top == {"__init__.py", "settings.py", "errors.py", "es.py", "metrics.py", "experiments.py"}
    for concept in ("catalog", "serving", "events", "model", "local", "items"):
        init = REPO / "facetrec" / concept / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"facetrec/{concept} says what it owns"


def test_the_wheel_names_every_package_of_the_checkout():
    """setuptools packages only what pyproject.toml lists: a subpackage missing there imports from a
    checkout and fails in the installed wheel."""
    import tomllib
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for pkg in PACKAGES for init in (REPO / pkg).rglob("__init__.py")}
    assert on_disk - listed == set()
    data_dirs = {name: REPO / path for name, path in tool["package-dir"].items()}
    assert set(data_dirs) == {"facetrec.index_templates", "facetrec.catalogs"} and set(data_dirs) <= listed
    assert all(d.is_dir() for d in data_dirs.values())


def test_the_top_level_keeps_the_product_s_shape():
    for path in ("app", "index_templates", "catalogs", "ingest", "dags", "tests", "terraform", "pyproject.toml",
                 "README.md"):
        assert (REPO / path).exists(), path


def test_the_embedding_side_does_not_talk_to_elasticsearch():
    """Computing embeddings needs no Elasticsearch code: the index side consumes its files."""
    assert layering_violations("ingest/embedding", {"app", "facetrec_cli", "elasticsearch"}) == []
    offenders = [v for v in layering_violations("ingest/embedding", {"ingest", "facetrec"})
                 if "ingest.indexing" in v or "facetrec.es" in v or "facetrec.serving" in v]
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
    assert set(commands) == {"index", "etl", "train", "rank", "evaluate", "embed", "pipeline", "demo", "events", "spark", "experiment",
                             "kibana", "items"}
    assert parser.parse_args(["index", "status"]).func.__module__ == "facetrec_cli.index"
    assert parser.parse_args(["events", "replay", "--since", "2026-01-01T00:00:00Z"]).func.__module__ == "facetrec_cli.events"
    assert parser.parse_args(["demo", "stop"]).action == "stop"
