"""A schema-driven fuzzer (schemathesis) against a service, in process (WSGI, no network).

``fuzz(app)`` loads the document the app itself serves at ``/openapi.yaml`` (generated for its live
catalog by app/openapi.py), generates positive (schema-valid) requests for every operation under
``/v1`` with Hypothesis, seeded and bounded, sends each to the app, and judges each answer:

* not a 5xx, except a 503 the document declares for that operation;
* accepted (2xx, schemathesis's ``positive_data_acceptance`` with 2xx as the only expected status):
  the document's request schemas describe a subset of what the service takes, so a schema-valid
  request is never refused. The one 4xx a valid request may get is the events' documented 409,
  and only where this run sent that batch_id for that user before with other events (state, not
  the request, makes it a conflict);
* conforms to the document (schemathesis's status code, content type, header and response schema
  conformance checks).

Every failure is collected with its request and the response's body; ``assert_clean`` fails with
all of them, readably.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.core import NOT_SET
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation import GenerationMode

# Every operation under /v1 but the item changes: they write the catalog every other test of the module
# reads (takedowns, new items). Their documented schemas are checked against the service in
# tests/test_items.py (examples sent and answers validated).
FUZZED = "^/v1/(?!items)"
SEED = 20260301
MAX_EXAMPLES = 300         # per operation: six operations, a few hundred requests per catalog
CONFORMANCE = [checks.status_code_conformance, checks.content_type_conformance, checks.response_headers_conformance,
               checks.response_schema_conformance]


@dataclass
class Finding:
    """One answer that broke a rule: which, the request that got it and what the service said."""

    operation: str
    rule: str
    request: str
    status: int
    body: str
    detail: str = ""

    def __str__(self) -> str:
        return (f"[{self.rule}] {self.operation}: {self.status}\n  request: {self.request}\n  response: {self.body}"
                + (f"\n  {self.detail}" if self.detail else ""))


@dataclass
class FuzzReport:
    findings: list[Finding] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)      # (operation, status) -> answers
    filtered: Counter = field(default_factory=Counter)      # operation -> generated bodies dropped (_distinct_rows)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.seconds:.1f} s, {sum(self.statuses.values())} requests"]
        for (operation, status), n in sorted(self.statuses.items()):
            lines.append(f"  {operation}: {status} x{n}")
        for operation, n in sorted(self.filtered.items()):
            lines.append(f"  {operation}: {n} generated bodies with a repeated row id dropped")
        return "\n".join(lines)


def _row_id(entry: Any) -> Any:
    return entry.get("id") if isinstance(entry, dict) else entry


def _distinct_rows(body: Any) -> bool:
    """Whether the row ids of a rows request are distinct. The JSON Schema cannot say it (``uniqueItems``
    compares whole items: ``"comedy"`` and ``{"id": "comedy"}`` differ, and ad-hoc rows' ids are free
    strings), and a repeated row id is a 400 by design: a ``filter_body`` hook drops such generated
    bodies (the one thing about a valid request the document leaves unsaid)."""
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        return True
    ids = [_row_id(entry) for entry in body["rows"]]
    return len(ids) == len(set(map(json.dumps, ids)))


def _describe(case: schemathesis.Case) -> str:
    query = "&".join(f"{k}={v}" for k, v in (case.query or {}).items())
    out = f"{case.method} {case.formatted_path}" + (f"?{query}" if query else "")
    if case.body is not None and case.body is not NOT_SET:
        out += " " + json.dumps(case.body, ensure_ascii=False)
    return out


def _failed_rows(response) -> list[str]:
    """The errors of a page's rows whose search failed (a page is served with the other rows)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return []
    rows = body.get("rows") if isinstance(body, dict) else None
    return [f"{row.get('id')}: {row.get('error_code')} {row['error']}" for row in rows or []
            if isinstance(row, dict) and "error" in row]


def _declares(case: schemathesis.Case, status: int) -> bool:
    return str(status) in case.operation.responses.status_codes


class _Judge:
    def __init__(self, report: FuzzReport, batches: dict[tuple[str, str], str]):
        self.report = report
        self.batches = batches    # (user, batch_id) -> the events first sent with it

    def _conflict_expected(self, case: schemathesis.Case) -> bool:
        """A 409 is the document's answer to a batch_id this run used before for the user with other events."""
        body = case.body if isinstance(case.body, dict) else {}
        key = (case.path_parameters.get("user_id"), body.get("batch_id"))
        events = json.dumps(body.get("events"), sort_keys=True)
        first = self.batches.setdefault(key, events) if key[1] is not None else events
        return first != events

    def __call__(self, case: schemathesis.Case) -> None:
        operation = case.operation.label
        conflict = case.method == "POST" and case.path.endswith("/events") and self._conflict_expected(case)
        response = case.call()
        status = response.status_code
        self.report.statuses[(operation, status)] += 1

        def found(rule: str, detail: str = "") -> None:
            self.report.findings.append(Finding(operation, rule, _describe(case), status,
                                                response.content.decode("utf-8", "replace")[:1000], detail[:2000]))

        declared_503 = status == 503 and _declares(case, 503)
        if status >= 500 and not declared_503:
            found("server error")
        elif not (200 <= status < 300 or declared_503 or (status == 409 and conflict)):
            found("schema-valid request refused")
        elif 200 <= status < 300 and _failed_rows(response):
            found("a row's search failed", "; ".join(_failed_rows(response)))
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            for failure in group.exceptions:
                found(f"conformance: {failure.title}", failure.message)
        except Failure as failure:
            found(f"conformance: {failure.title}", failure.message)


def load(app, report: FuzzReport | None = None) -> schemathesis.BaseSchema:
    """The app's own served document, its operations under /v1, rows requests with distinct row ids."""
    schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app, config=schemathesis.Config())
    schema = schema.include(path_regex=FUZZED)

    @schema.hook
    def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
        distinct = _distinct_rows(body)
        if not distinct and report is not None:
            report.filtered[context.operation.label] += 1
        return distinct

    return schema


def example_users(schema: schemathesis.BaseSchema) -> dict[str, str]:
    """Path -> the user id of its ``user_id`` parameter's first example (the document's known user)."""
    out = {}
    for path, item in schema.raw_schema["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "user_id" and parameter.get("examples"):
                    out[path] = next(iter(parameter["examples"].values()))["value"]
    return out


def fuzz(app, max_examples: int = MAX_EXAMPLES, seed: int = SEED,
         batches: dict[tuple[str, str], str] | None = None) -> FuzzReport:
    """Send ``max_examples`` positive cases of each operation under /v1 of ``app``'s served document.

    ``batches``: the event batches earlier runs sent to the same user index ((user, batch_id) -> events;
    filled in by this run): the user index remembers them, so a 409 may answer one sent again.

    Where a path names a user, about half the cases name the user the document's examples name (one
    the live generation holds, so personalized rows, ranking and the user's vector are reached), the
    rest a generated user id (nearly always unknown: popular rows, new users)."""
    report = FuzzReport()
    judge = _Judge(report, {} if batches is None else batches)
    started = time.perf_counter()
    schema = load(app, report)
    users = example_users(schema)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "GET /v1/users/{user_id}/homepage", "POST /v1/users/{user_id}/rows", "POST /v1/users/{user_id}/events",
        "GET /v1/rows", "GET /v1/facets", "GET /v1/sample-users"}, [op.label for op in operations]
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
        if operation.path in users:
            strategy = st.one_of(strategy, operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                                                 path_parameters={"user_id": users[operation.path]}))
        _fuzz_operation(operation.label, strategy, judge, max_examples, seed)
    report.seconds = time.perf_counter() - started
    return report


def _fuzz_operation(label: str, strategy, judge: _Judge, max_examples: int, seed: int) -> None:
    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=max_examples, database=None, deadline=None, phases=[Phase.generate],
                         print_blob=False, suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case):
        judge(case)

    run()


def assert_clean(report: FuzzReport) -> None:
    """No finding; the message lists each (the same rule, operation and status once, with a count)."""
    print(report.summary())
    if report.findings:
        seen: dict[tuple, list[Finding]] = {}
        for finding in report.findings:
            seen.setdefault((finding.rule, finding.operation, finding.status), []).append(finding)
        text = "\n\n".join(f"{len(group)}x {group[0]}" + "".join(f"\n  also: {f.request}" for f in group[1:4])
                           for group in seen.values())
        raise AssertionError(f"{len(report.findings)} fuzzed requests broke the contract:\n\n{text}\n\n"
                             + report.summary())
