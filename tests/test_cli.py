"""The command-line tools as a newcomer meets them (issue 23): complete --help, aligned tables,
errors as sentences, and a rollback that says why there is nothing to roll back to."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from facetrec_cli import build_parser, main
from facetrec_cli import es as es_cli

CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]*)+\b")   # NoPairToRollBackTo, ConnectionError, ...
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands(parser: argparse.ArgumentParser, path=(), help_text=None):
    """(path, parser, help in its parent's list) of every command under ``parser``, itself first."""
    yield path, parser, help_text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name), helps.get(name))


@pytest.mark.parametrize("program", ["facetrec", "facetrec-es"])
def test_every_command_and_option_has_help(program):
    parser = build_parser() if program == "facetrec" else es_cli.build_parser()
    commands = list(_commands(parser))
    assert len(commands) >= (15 if program == "facetrec" else 5), [c[0] for c in commands]
    for path, sub, help_text in commands:
        name = " ".join((program, *path))
        if path:
            assert help_text, f"{name}: no line in its parent's --help"
        assert sub.description, f"{name}: no description (its own --help says nothing)"
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}: no help"
        sub.format_help()   # every %(default)s renders


def test_facetrec_es_help_describes_all_four_commands(capsys):
    with pytest.raises(SystemExit):
        es_cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("start", "stop", "status", "build-classpath"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), (command, out)


def test_status_columns_line_up_whatever_the_widths():
    from facetrec_cli.index import status_lines

    long_model = "m" * 30
    pair = {"generation": "20260101-000002", "item_index": "item_index-20260101-000001", "model_version": long_model,
            "item_model_version": long_model, "state": "validated", "user_docs": 943, "item_docs": 1682, "live": True}
    status = {"pairs": [pair, {**pair, "generation": "20260101-000001", "model_version": "m1",
                               "item_model_version": "m1", "state": "rolled_back", "user_docs": 5,
                               "item_docs": 1234567, "live": False}],
              "item": [{"index": "item_index-20260101-000001", "docs": 1682, "state": "validated", "live": True,
                        "model_version": long_model}],
              "user": [{"index": "user_index-20260101-000002-with-a-long-suffix", "docs": 943, "state": "validated",
                        "live": True, "model_version": long_model}]}
    lines = status_lines(status, "item_index")
    header, first, second = lines[1:4]
    for column, values in (("model", (long_model, "m1")), ("state", ("validated", "rolled_back"))):
        assert first.index(values[0]) == second.index(values[1]) == header.index(column), column
    assert len(header) == len(first) == len(second)                 # right-aligned counts end together
    assert first.endswith(" 1682") and second.endswith(" 1234567")
    assert lines[4] == ""
    index_header, *index_rows = lines[5:]
    end = index_header.index("docs") + len("docs")
    assert index_rows[0].index(" 1682 ") + 5 == index_rows[1].index(" 943 ") + 4 == end
    assert index_rows[0].index("validated") == index_rows[1].index("validated") == index_header.index("state")


@pytest.fixture
def one_pair_env(es, es_settings, unique, monkeypatch):
    """What the demo leaves: one published pair (its model version 30 characters long)."""
    from facetrec.catalog.rows import RowCatalog
    from ingest.embedding.synthetic import embedding_records
    from ingest.indexing.reindex import run_reindex

    settings = es_settings.replace(item_alias=f"{unique}-item_index", user_alias=f"{unique}-user_index",
                                   index_type="flat", lock_lease_s=10.0)
    items, users, *_ = embedding_records(n_items=200, n_users=5, dims=64, seed=3)
    catalog = RowCatalog.load(os.path.join(REPO, "catalogs", "synthetic", "rows.yaml"))
    run_reindex(es, settings, catalog, items=items, users=users, model_version="two-tower-20260101-abcdef0123",
                generation="20260101-000001", progress=False, sample_users=3)
    for name, value in {"ES_URL": settings.es_url, "FACETREC_ITEM_ALIAS": settings.item_alias,
                        "FACETREC_USER_ALIAS": settings.user_alias}.items():
        monkeypatch.setenv(name, value)
    return settings


def test_rollback_right_after_one_publish_says_there_is_nothing_to_roll_back_to_and_why(one_pair_env, capsys):
    """Before: `facetrec: error: NoPairToRollBackTo: no earlier validated pair ...`."""
    assert main(["index", "rollback"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facetrec: nothing to roll back to: the live pair (user generation 20260101-000001"), err
    assert "the only validated one" in err and "make demo" in err and "facetrec pipeline run" in err
    assert not CLASS_NAME.search(err), err
    assert main(["index", "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if line.strip().startswith("live"))
    row = next(line for line in out if "two-tower-20260101-abcdef0123" in line and line.lstrip().startswith("*"))
    assert row.index("two-tower") == header.index("model") and row.index("validated") == header.index("state")


def test_the_reason_names_the_pairs_a_rollback_skips():
    from facetrec_cli.index import nothing_to_roll_back_to
    from ingest.indexing.generations import Pair

    def pair(generation, state, live=False):
        return Pair(generation, f"u-{generation}", f"i-{generation}", "m", "m", state, 1, 1, live)

    assert "no generation is published yet" in nothing_to_roll_back_to([])
    reason = nothing_to_roll_back_to([pair("1", "rolled_back"), pair("2", "broken"), pair("3", "validated", True)])
    assert "1 broken, 1 rolled_back" in reason and "never returns" in reason


@pytest.mark.parametrize("argv, words", [
    (["index", "publish", "--users", "/nonexistent/users.parquet", "--model-version", "m"], "no such file"),
    (["events", "replay", "--since", "2026-01-01T00:00:00Z"], "does not exist"),
])
def test_errors_are_sentences_without_class_names(one_pair_env, monkeypatch, capsys, argv, words):
    monkeypatch.setenv("FACETREC_USER_ALIAS", "no-such-alias")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("facetrec: error: ") and words in err.lower(), err
    assert not CLASS_NAME.search(err), err


def test_an_unreachable_cluster_and_a_bad_setting_are_sentences(monkeypatch, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("ES_URL", f"http://127.0.0.1:{closed}")
    assert main(["index", "status"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Elasticsearch" in err and not CLASS_NAME.search(err), err
    monkeypatch.setenv("FACETREC_SIMILARITY", "euclid")
    assert main(["index", "status"]) == 1
    err = capsys.readouterr().err
    assert "FACETREC_SIMILARITY='euclid'" in err and not CLASS_NAME.search(err), err


def test_an_elasticsearch_refusal_is_a_sentence():
    from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
    from elasticsearch import ApiError

    from facetrec_cli.errors import explain

    meta = ApiResponseMeta(status=403, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))
    exc = ApiError("security_exception", meta, {"error": {"type": "security_exception",
                                                          "reason": "action [indices:admin/aliases] is unauthorized"}})
    message = explain(exc)
    assert message.startswith("Elasticsearch refused the request (403 security_exception): action"), message
    assert not CLASS_NAME.search(message), message


def test_kibana_saved_objects_come_from_the_catalog_schema():
    """ops/kibana/facetrec.ndjson is what `facetrec kibana` writes for the synthetic catalog; another
    catalog gets a chart per filterable keyword, list and boolean facet, and nothing of the others."""
    from pathlib import Path

    from bookstore import CATALOG_YAML

    from catalogs import bundled_schema
    from facetrec.catalog.schema import CatalogSchema
    from facetrec_cli.kibana import ndjson, saved_objects

    committed = (Path(REPO) / "ops" / "kibana" / "facetrec.ndjson").read_text()
    assert committed == ndjson(saved_objects(bundled_schema("synthetic")))
    import yaml
    books = saved_objects(CatalogSchema.from_dict(yaml.safe_load(CATALOG_YAML)))
    charts = [o["id"] for o in books if o["type"] == "visualization"]
    assert charts == ["facetrec-items-by-generation", "facetrec-items-by-format", "facetrec-items-by-language",
                      "facetrec-items-by-in_stock", "facetrec-items-by-tags", "facetrec-items-by-author"]
    dashboard = books[-1]
    assert [r["id"] for r in dashboard["references"]] == charts
    assert books[0]["attributes"]["timeFieldName"] == "released"
