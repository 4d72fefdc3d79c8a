"""The README's "Try the API" examples, run as written (real curl) against a real service over the
catalog they name (MovieLens, as `make demo` serves it): each response must have the status, the
content type and the SHAPE the README shows (the same keys, the same JSON types; a list may show
fewer or other elements, each of the shape of the service's, but is empty only where the service's is)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading

import pytest

from app import create_app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DEMO_URL = "http://127.0.0.1:8000"
SECTION = "## Try the API"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)


def readme_examples(text: str) -> list[tuple[str, int, dict, object]]:
    """(curl command, status, headers, JSON body) of each example of the section: a ```bash block
    with one curl command, then an ```http block with the status line, headers, a blank line, the body."""
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    blocks = FENCE.findall(text[start:end if end != -1 else None])
    assert blocks and len(blocks) % 2 == 0, "the section alternates ```bash and ```http blocks"
    examples = []
    for (lang, command), (response_lang, response) in zip(blocks[::2], blocks[1::2]):
        assert lang == "bash" and response_lang == "http", (lang, response_lang)
        head, _, body = response.partition("\n\n")
        status_line, *header_lines = head.splitlines()
        status = int(status_line.split()[1])
        headers = dict(line.split(": ", 1) for line in header_lines)
        examples.append((command.strip(), status, headers, json.loads(body)))
    return examples


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def shape_differences(shown, actual, where: str = "$") -> list[str]:
    """Where ``actual`` does not have the shape ``shown`` (the README's trimmed response) shows."""
    if json_type(shown) != json_type(actual):
        return [f"{where}: the README shows {json_type(shown)}, the service says {json_type(actual)}"]
    if isinstance(shown, dict):
        problems = [f"{where}: the service also says {sorted(set(actual) - set(shown))}"] if set(actual) - set(shown) \
            else []
        problems += [f"{where}.{k}: the service does not say it" for k in shown if k not in actual]
        for key in shown:
            if key in actual:
                problems += shape_differences(shown[key], actual[key], f"{where}.{key}")
        return problems
    if isinstance(shown, list):   # trimmed or of another length: its elements have the service's shape
        if bool(shown) != bool(actual):
            return [f"{where}: the README shows {len(shown)} elements, the service {len(actual)}"]
        return [p for i, s in enumerate(shown)
                for p in shape_differences(s, actual[min(i, len(actual) - 1)], f"{where}[{i}]")]
    return []


def run_curl(command: str, url: str) -> tuple[int, dict, object]:
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "curl" and "-si" in argv, command
    argv = [a.replace(DEMO_URL, url) for a in argv]
    assert any(a.startswith(url) for a in argv), f"{command}: not against the demo's {DEMO_URL}"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.splitlines()
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.fixture(scope="module")
def service(movielens, tmp_path_factory):
    """The demo's service over the MovieLens pair, with a ranker registered for its model as the
    demo's publish registers one (in a copy of the models root)."""
    from conftest import MOVIELENS_MODEL
    from werkzeug.serving import make_server

    from catalogs import movielens_ranker
    from facetrec.model import ranker as ranking

    settings, catalog, items, users = movielens
    root = tmp_path_factory.mktemp("readme") / "models"
    shutil.copytree(settings.models_root / MOVIELENS_MODEL, root / MOVIELENS_MODEL)
    ranking.register(movielens_ranker(items, users, tmp_path_factory.mktemp("ranker"), MOVIELENS_MODEL),
                     root / MOVIELENS_MODEL)
    settings = settings.replace(es_request_timeout_s=5.0, models_root=root)
    httpd = make_server("127.0.0.1", 0, create_app(settings, catalog), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_the_section_sits_after_the_two_commands_and_shows_each_kind_of_example():
    text = open(README).read()
    assert text.index("## Two commands") < text.index(f"\n{SECTION}\n") < text.index("\n## ", text.index(SECTION) + 5)
    commands = [c for c, *_ in readme_examples(text)]
    assert 5 <= len(commands) <= 9, commands
    assert any("/homepage" in c and "someone-new" in c for c in commands)          # an unknown user
    assert any("/rows" in c and '"ad_hoc": true' in c for c in commands)           # an ad-hoc row
    events = next(i for i, c in enumerate(commands) if "/events" in c)
    assert any("/homepage" in c for c in commands[events + 1:])                   # the homepage after an event
    assert any(status == 400 for _, status, _, _ in readme_examples(text))        # a 400
    assert any("-X DELETE" in c and "/v1/items/" in c for c in commands)          # a takedown
    assert any("-X PUT" in c and "/v1/items/" in c for c in commands)             # a new item


def test_shapes_are_compared_strictly():
    assert shape_differences({"a": [1, 2]}, {"a": [3, 4, 5]}) == []
    assert shape_differences({"a": 1}, {"a": "1"}) == ["$.a: the README shows number, the service says string"]
    assert shape_differences({"a": 1}, {"a": 1, "b": 2}) == ["$: the service also says ['b']"]
    assert shape_differences({"a": 1, "c": None}, {"a": 1}) == ["$.c: the service does not say it"]
    assert shape_differences({"a": [1, 2]}, {"a": [1]}) == []                  # values of another length
    assert shape_differences({"a": []}, {"a": [1]}) and shape_differences({"a": [1]}, {"a": []})
    assert shape_differences({"a": [{"x": 1}, {"y": 1}]}, {"a": [{"x": 2}, {"x": 3}]}) == ["$.a[1]: the service also "
                                                                                            "says ['x']",
                                                                                            "$.a[1].y: the service "
                                                                                            "does not say it"]
    assert shape_differences({"a": None}, {"a": "x"})


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_every_readme_example_answers_as_the_readme_shows(service):
    examples = readme_examples(open(README).read())
    for command, status, headers, shown in examples:     # in order: the event comes before the homepage after it
        actual_status, actual_headers, body = run_curl(command, service)
        assert actual_status == status, (command, actual_status, body)
        assert actual_headers["content-type"] == headers["Content-Type"], command
        assert shape_differences(shown, body) == [], (command, json.dumps(body)[:2000])
