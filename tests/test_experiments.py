"""Experiment arms, the pure parts: assignment (stable, weighted, minimal movement), the experiment's
validation, and the readout's statistics. On the real node: tests/test_experiment_arms.py."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from facetrec.experiments import CONTROL, Arm, Experiment, ExperimentError, check_arm_name
from ingest.experiments.report import Impression, difference, read_impressions, readout, wilson

USERS = [f"user-{n}" for n in range(10_000)]


def _experiment(*weights: tuple[str, float], experiment_id: str = "exp-1") -> Experiment:
    experiment = Experiment(experiment_id)
    for name, weight in weights:
        experiment = experiment.with_weight(name, weight)
    return experiment


def _arms(experiment: Experiment) -> dict[str, str]:
    return {u: experiment.assign(u) for u in USERS}


@pytest.mark.parametrize("weights", [[("b", 0.1)], [("b", 0.3), ("c", 0.2)], [("b", 1.0)], [("b", 0.0)]])
def test_arms_get_their_weights_share_of_10000_users_within_sampling_error(weights):
    experiment = _experiment(*weights)
    counts = {name: 0 for name in experiment.arm_names}
    for arm in _arms(experiment).values():
        counts[arm] += 1
    for name in experiment.arm_names:
        p = experiment.weight(name)
        sigma = math.sqrt(len(USERS) * p * (1 - p))
        assert abs(counts[name] - len(USERS) * p) <= 4 * sigma + 1e-9, (name, counts)
    assert experiment.weight(CONTROL) == pytest.approx(1 - sum(w for _, w in weights))


def test_a_users_arm_is_the_same_on_every_call_and_process_and_depends_on_the_experiment():
    experiment = _experiment(("b", 0.5))
    first = [experiment.assign(u) for u in USERS[:2000]]
    again = Experiment.from_document(experiment.to_document())   # as another process reads it
    assert first == [again.assign(u) for u in USERS[:2000]]
    other = _experiment(("b", 0.5), experiment_id="exp-2")
    moved = sum(a != other.assign(u) for a, u in zip(first, USERS[:2000]))
    assert 800 < moved < 1200, "a new experiment draws users afresh (about half move at 50/50)"


def test_starting_reweighting_or_stopping_an_arm_moves_users_only_between_it_and_control():
    before = _experiment(("b", 0.3), ("c", 0.2))
    was = _arms(before)
    for changed, name in ((before.with_weight("d", 0.2), "d"), (before.with_weight("c", 0.4), "c"),
                          (before.with_weight("b", 0.1), "b"), (before.without("b"), "b")):
        now = _arms(changed)
        moves = {(was[u], now[u]) for u in USERS if was[u] != now[u]}
        assert moves and all({frm, to} == {name, CONTROL} for frm, to in moves), (name, moves)
    # The share that moves is what the weights say (b: 0.3 -> 0.1 of the users).
    shrunk = _arms(before.with_weight("b", 0.1))
    assert sum(was[u] != shrunk[u] for u in USERS) / len(USERS) == pytest.approx(0.2, abs=0.02)
    # Back to the old weight: the same users as before (the arm takes back the buckets it gave).
    assert _arms(before.with_weight("b", 0.1).with_weight("b", 0.3)) == was


def test_arm_names_weights_and_experiments_are_checked():
    for bad in ("", "B", "a b", "x" * 33, "../x", "a@b", None, 3):
        with pytest.raises(ExperimentError):
            check_arm_name(bad)
    assert check_arm_name("new-model_2") == "new-model_2"
    for bad in (1.5, float("nan"), -0.1, True, "0.5"):
        with pytest.raises(ExperimentError, match="weight"):
            Experiment("e").with_weight("b", bad)
    with pytest.raises(ExperimentError, match="start with 'control'"):
        Experiment("e", (Arm("b"), Arm(CONTROL)))
    with pytest.raises(ExperimentError, match="distinct"):
        Experiment("e", (Arm(CONTROL), Arm("b", (1,)), Arm("b", (2,))))
    with pytest.raises(ExperimentError, match="same bucket"):
        Experiment("e", (Arm(CONTROL), Arm("b", (1, 2)), Arm("c", (2,))))
    with pytest.raises(ExperimentError, match="experiment id"):
        Experiment("bad id!")
    with pytest.raises(ExperimentError, match="does not fit"):
        _experiment(("b", 0.7), ("c", 0.5))
    with pytest.raises(ExperimentError, match="weight the other arms leave"):
        Experiment("e").with_weight(CONTROL, 0.5)
    experiment = _experiment(("b", 0.25)).with_weight("b", 0.25, model_version="m-b", generation="g1")
    assert Experiment.from_document(experiment.to_document()) == experiment and experiment.weight(CONTROL) == 0.75


def test_wilson_and_difference_intervals_match_the_textbook_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    delta, low, high = difference(60, 100, 50, 100)
    assert delta == pytest.approx(0.1) and (low, high) == pytest.approx((0.1 - 0.1371, 0.1 + 0.1371), abs=1e-4)


def test_the_readout_counts_a_user_as_a_hit_only_for_a_later_event_on_an_item_of_their_pages_within_the_window():
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    impressions = [Impression("e", CONTROL, "u1", t0, frozenset({"a", "b"})),       # hit: b later
                   Impression("e", CONTROL, "u1", t0, frozenset({"b"})),            # the same user: one unit
                   Impression("e", CONTROL, "u2", t0, frozenset({"a"})),            # miss: a event came before
                   Impression("e", "new", "u3", t0, frozenset({"c"})),              # miss: c too late
                   Impression("e", "new", "u4", t0, frozenset({"d"})),              # miss: another item
                   Impression("e", "new", "u5", t0, frozenset({"e"})),              # hit
                   Impression("e", "new", "u6", t0, frozenset({"f"})),              # in two arms: left out
                   Impression("e", CONTROL, "u6", t0, frozenset({"f"})),
                   Impression("e", "new", "u7", t0 + timedelta(hours=2), frozenset({"g"}))]   # window still open
    events = {"u1": [(t0 + timedelta(minutes=5), "b")], "u2": [(t0 - timedelta(minutes=1), "a")],
              "u3": [(t0 + timedelta(hours=25), "c")], "u4": [(t0 + timedelta(minutes=1), "x")],
              "u5": [(t0 + timedelta(hours=23), "e")], "u6": [(t0 + timedelta(minutes=1), "f")],
              "u7": [(t0 + timedelta(hours=2, minutes=1), "g")]}
    result = readout(impressions, events, timedelta(hours=24), as_of=t0 + timedelta(hours=25))
    assert list(result["arms"]) == [CONTROL, "new"]
    assert result["pages_still_open"] == 1 and result["users_in_several_arms"] == 1
    assert (result["arms"][CONTROL]["users"], result["arms"][CONTROL]["hits"], result["arms"][CONTROL]["pages"]) == (2, 1, 3)
    assert (result["arms"]["new"]["users"], result["arms"]["new"]["hits"]) == (3, 1)
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
