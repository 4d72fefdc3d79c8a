import json, collections
import pytest
import fuzz_support
from app import create_app

@pytest.fixture(scope="module")
def app(events_pair):
    s, c, *_ = events_pair
    return create_app(s.replace(es_request_timeout_s=5.0), c)

def test_probe(app):
    stats = collections.Counter()
    orig = fuzz_support._Judge.__call__
    def spy(self, case):
        orig(self, case)
    import schemathesis
    real_call = schemathesis.Case.call
    def call(case, *a, **k):
        r = real_call(case, *a, **k)
        if case.path.endswith(("homepage", "}/rows")) and r.status_code == 200:
            body = json.loads(r.content)
            stats[(case.path, "known" if body["user_generation"] else "unknown")] += 1
            if case.path.endswith("}/rows") and isinstance(case.body, dict):
                for row in case.body.get("rows") or []:
                    if isinstance(row, dict) and row.get("ad_hoc"):
                        stats["ad_hoc"] += 1
                        stats["ad_hoc_filters"] += len(row.get("filter") or []) + len(row.get("must_not") or [])
                stats["filters"] += len(case.body.get("filters") or {})
            if case.path.endswith("homepage"):
                stats[("query", tuple(sorted(case.query or {})))] += 1
        if case.path.endswith("events"):
            stats[("events", r.status_code, json.loads(r.content).get("status"))] += 1
        return r
    schemathesis.Case.call = call
    try:
        fuzz_support.assert_clean(fuzz_support.fuzz(app, max_examples=100))
    finally:
        schemathesis.Case.call = real_call
    for k, v in sorted(stats.items(), key=str): print(k, v)
