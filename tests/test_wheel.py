"""The built wheel is the product: installed into a fresh virtual environment and run from a directory
outside the checkout, it builds and starts its own local node, publishes a generation pair from
embedding parquet and serves homepages, the API document and the page, reading nothing from the
checkout (index templates, the launcher's sources, row configs and the page are package data; its
state goes under ``~/.local/share/facetrec``).

The fresh environment (``tests/venvs.py``) gets its third-party dependencies from the suite's own
environment instead of downloading them again, and cannot see the suite's editable install: every
facetrec module it imports is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from venvs import bare_venv

from facetrec.local.node import find_free_base_port

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".facetrec", "artifacts", "build", "data", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "spark-warehouse")

pytestmark = pytest.mark.slow


def _run(cmd, env, cwd, timeout=300):
    done = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        return response.status, response.read()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding only the built wheel, its environment, a run directory)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"   # built from a copy: the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist",
          source], env=os.environ, cwd=root)
    (wheel,) = (root / "dist").glob("facetrec-*.whl")
    python = bare_venv(root / "venv")
    venv = python.parents[1]
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel], env=os.environ, cwd=root)
    run_dir = root / "run"
    run_dir.mkdir()
    # Nothing of the suite's environment: no ES_URL, no PYTHONPATH, a HOME of its own (the state root).
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "HOME": str(root / "home"),
           "LANG": "C.UTF-8"}
    return python, env, run_dir


def test_the_wheel_carries_the_product_and_imports_nothing_from_the_checkout(installed):
    python, env, run_dir = installed
    shown = json.loads(_run([python, "-c", (
        "import json, facetrec, app, ingest, ingest.streaming, facetrec_cli;"
        "from facetrec.settings import CHECKOUT, STATE_ROOT, Settings; s = Settings();"
        "print(json.dumps({'modules': [m.__file__ for m in (facetrec, app, ingest, ingest.streaming, facetrec_cli)],"
        "'checkout': CHECKOUT and str(CHECKOUT), 'state': str(STATE_ROOT), 'models': str(s.models_root),"
        "'templates': sorted(p.name for p in s.templates_dir.glob('*.json')), 'rows': s.rows_config.is_file()}))")],
        env, run_dir))
    venv = python.parents[1]
    assert all(Path(m).is_relative_to(venv) for m in shown["modules"]), shown["modules"]
    assert shown["checkout"] is None
    assert shown["state"] == str(Path(env["HOME"]) / ".local" / "share" / "facetrec")
    assert Path(shown["models"]).is_relative_to(shown["state"])
    assert shown["templates"] == ["item_index.json", "user_events.json", "user_index.json"]
    assert shown["rows"]


def test_the_installed_wheel_starts_a_node_publishes_and_serves(installed):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingest.embedding.synthetic import embedding_records

    python, env, run_dir = installed
    bin_dir = python.parent
    items, users, _, _ = embedding_records(n_items=1500, n_users=50, dims=64, seed=3)

    def table(records):
        return pa.Table.from_pylist([{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()}
                                     for r in records])

    pq.write_table(table(items), run_dir / "items.parquet")
    pq.write_table(table(users), run_dir / "users.parquet")
    port = find_free_base_port()
    gunicorn = None
    try:
        started = _run([bin_dir / "facetrec-es", "start", "--port", port, "--heap", "512m"], env, run_dir)
        assert f"ES_URL=http://127.0.0.1:{port}" in started
        state = Path(env["HOME"]) / ".local" / "share" / "facetrec"
        assert (state / "launcher" / "classpath.txt").is_file() and (state / "es-local" / "cluster.json").is_file()

        published = _run([bin_dir / "facetrec", "index", "publish", "--items", "items.parquet", "--users",
                          "users.parquet", "--model-version", "wheel-test"], env, run_dir)
        assert '"status": "swapped"' in published

        bind = f"127.0.0.1:{find_free_base_port(start=18000, end=19000)}"
        gunicorn = subprocess.Popen([python, "-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app.wsgi:application"],
                                    env={**env, "FACETREC_BIND": bind, "FACETREC_WORKERS": "1"}, cwd=run_dir,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"http://{bind}/readyz")[0] == 200:
                    break
            except OSError:
                assert gunicorn.poll() is None, "the installed service exited"
                assert time.monotonic() < deadline, "the installed service never got ready"
                time.sleep(0.3)
        status, body = _get(f"http://{bind}/v1/users/u0/homepage")
        page = json.loads(body)
        assert status == 200 and page["user_id"] == "u0"
        assert page["rows"] and all(row["source"] == "personalized" for row in page["rows"])
        assert {i["id"] for row in page["rows"] for i in row["items"]} <= {r["item_id"] for r in items}
        assert _get(f"http://{bind}/openapi.yaml")[0] == 200 and b"openapi:" in _get(f"http://{bind}/openapi.yaml")[1]
        status, html = _get(f"http://{bind}/")
        assert status == 200 and b"<html" in html.lower()
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
            gunicorn.wait(timeout=30)
        subprocess.run([bin_dir / "facetrec-es", "stop"], env=env, cwd=run_dir, capture_output=True, timeout=120)
