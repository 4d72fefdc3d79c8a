"""Experiment arms, the pure parts: assignment (stable, weighted, minimal movement), the experiment's
validation, and the readout's statistics. On the real node: tests/test_experiment_arms.py."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from facetrec.experiments import CONTROL, Arm, Experiment, ExperimentError, assign, check_arm_name
from ingest.indexing.experiment_report import Impression, difference, read_impressions, readout, wilson
from ingest.indexing.experiments import _with_weights

USERS = [f"user-{n}" for n in range(10_000)]


def _shares(experiment_id: str, weights: list[tuple[str, float]]) -> dict[str, int]:
    counts = {name: 0 for name, _ in weights}
    for user in USERS:
        counts[assign(experiment_id, user, weights)] += 1
    return counts


@pytest.mark.parametrize("weights", [[(CONTROL, 0.9), ("b", 0.1)], [(CONTROL, 0.5), ("b", 0.3), ("c", 0.2)],
                                     [(CONTROL, 0.0), ("b", 1.0)]])
def test_arms_get_their_weights_share_of_10000_users_within_sampling_error(weights):
    counts = _shares("exp-1", weights)
    total = sum(w for _, w in weights)
    for name, weight in weights:
        p = weight / total
        sigma = math.sqrt(len(USERS) * p * (1 - p))
        assert abs(counts[name] - len(USERS) * p) <= 4 * sigma + 1e-9, (name, counts)


def test_a_users_arm_is_the_same_on_every_call_and_depends_on_the_experiment():
    weights = [(CONTROL, 0.5), ("b", 0.5)]
    first = [assign("exp-1", u, weights) for u in USERS[:2000]]
    assert first == [assign("exp-1", u, weights) for u in USERS[:2000]]
    experiment = Experiment("exp-1", (Arm(CONTROL, 0.5), Arm("b", 0.5)))
    assert first == [experiment.assign(u) for u in USERS[:2000]]
    other = [assign("exp-2", u, weights) for u in USERS[:2000]]
    moved = sum(a != b for a, b in zip(first, other))
    assert 800 < moved < 1200, "a new experiment draws users afresh (about half move at 50/50)"


def test_changing_one_weight_moves_only_users_into_or_out_of_that_arm():
    before = {u: assign("exp-1", u, [(CONTROL, 0.5), ("b", 0.3), ("c", 0.2)]) for u in USERS}
    after = {u: assign("exp-1", u, [(CONTROL, 0.5), ("b", 0.3), ("c", 0.4)]) for u in USERS}
    moves = {(before[u], after[u]) for u in USERS if before[u] != after[u]}
    assert moves and all(to == "c" for _, to in moves), moves        # only into c, from either arm
    shrunk = {u: assign("exp-1", u, [(CONTROL, 0.5), ("b", 0.1), ("c", 0.2)]) for u in USERS}
    moves = {(before[u], shrunk[u]) for u in USERS if before[u] != shrunk[u]}
    assert moves and all(frm == "b" for frm, _ in moves), moves      # only out of b
    # The share that moves is what the weights say: b goes from 0.3/1.0 to 0.1/0.8 of the users.
    moved = sum(before[u] != shrunk[u] for u in USERS) / len(USERS)
    assert moved == pytest.approx(0.3 - 0.1 / 0.8, abs=0.02)


def test_arm_names_weights_and_experiments_are_checked():
    for bad in ("", "B", "a b", "x" * 33, "../x", "a@b", None, 3):
        with pytest.raises(ExperimentError):
            check_arm_name(bad)
    assert check_arm_name("new-model_2") == "new-model_2"
    with pytest.raises(ExperimentError, match="weight"):
        Arm("b", 1.5)
    with pytest.raises(ExperimentError, match="weight"):
        Arm("b", float("nan"))
    with pytest.raises(ExperimentError, match="start with 'control'"):
        Experiment("e", (Arm("b", 0.5), Arm(CONTROL, 0.5)))
    with pytest.raises(ExperimentError, match="distinct"):
        Experiment("e", (Arm(CONTROL, 0.5), Arm("b", 0.2), Arm("b", 0.3)))
    with pytest.raises(ExperimentError, match="experiment id"):
        Experiment("bad id!", (Arm(CONTROL, 1.0),))
    assert _with_weights("e", "", [Arm("b", 0.25), Arm("c", 0.25)]).arms[0] == Arm(CONTROL, 0.5)
    with pytest.raises(ExperimentError, match="add up to 1.2"):
        _with_weights("e", "", [Arm("b", 0.7), Arm("c", 0.5)])
    experiment = Experiment("e", (Arm(CONTROL, 0.5), Arm("b", 0.5, "m-b", "g1")), "2026-12-01T00:00:00+00:00")
    assert Experiment.from_document(experiment.to_document()) == experiment


def test_wilson_and_difference_intervals_match_the_textbook_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    delta, low, high = difference(60, 100, 50, 100)
    assert delta == pytest.approx(0.1) and (low, high) == pytest.approx((0.1 - 0.1371, 0.1 + 0.1371), abs=1e-4)


def test_the_readout_counts_a_page_as_a_hit_only_for_a_later_event_on_one_of_its_items_within_the_window():
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    impressions = [Impression("e", CONTROL, "u1", t0, frozenset({"a", "b"})),       # hit: b later
                   Impression("e", CONTROL, "u2", t0, frozenset({"a"})),            # miss: a event came before
                   Impression("e", "new", "u3", t0, frozenset({"c"})),              # miss: c too late
                   Impression("e", "new", "u4", t0, frozenset({"d"})),              # miss: another item
                   Impression("e", "new", "u5", t0, frozenset({"e"}))]              # hit
    events = {"u1": [(t0 + timedelta(minutes=5), "b")], "u2": [(t0 - timedelta(minutes=1), "a")],
              "u3": [(t0 + timedelta(hours=25), "c")], "u4": [(t0 + timedelta(minutes=1), "x")],
              "u5": [(t0 + timedelta(hours=23), "e")]}
    result = readout(impressions, events, timedelta(hours=24))
    assert list(result["arms"]) == [CONTROL, "new"]
    assert result["arms"][CONTROL]["pages"] == 2 and result["arms"][CONTROL]["hits"] == 1
    assert result["arms"]["new"]["pages"] == 3 and result["arms"]["new"]["hits"] == 1
    assert result["arms"]["new"]["vs_control"]["difference"] == pytest.approx(1 / 3 - 1 / 2)
    assert not result["arms"]["new"]["vs_control"]["significant"]


def test_impressions_are_read_from_a_json_log_among_other_lines_and_pinned_pages_are_left_out():
    lines = ['{"ts": "2026-12-01T10:00:00.120Z", "event": "access", "status": 200}',
             'not json at all',
             '{"ts": "2026-12-01T10:00:01.000Z", "event": "impression", "experiment": "e", "arm": "b", '
             '"pinned": false, "user_id": "u1", "items": ["i1", "i2"]}',
             '{"ts": "2026-12-01T10:00:02.000Z", "event": "impression", "experiment": "e", "arm": "b", '
             '"pinned": true, "user_id": "u1", "items": ["i1"]}']
    (only,) = read_impressions(lines)
    assert only.arm == "b" and only.items == {"i1", "i2"} and only.at.second == 1 and only.at.tzinfo is not None
    other = lines + ['{"ts": "2026-12-01T10:00:03.000Z", "event": "impression", "experiment": "f", "arm": "b", '
                     '"user_id": "u2", "items": []}']
    with pytest.raises(ValueError, match="several experiments"):
        read_impressions(other)
    assert [i.user_id for i in read_impressions(other, "f")] == ["u2"]
