"""The streaming user-vector update: real Spark Structured Streaming against the real node.

The pair (``events_pair``) is published with a seeded user tower exported like the nightly one, so
"the nightly job's vector for this history" is the eager tower's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from facetrec.events.apply import UserEvents
from facetrec.events.batch import Event, EventBatch
from facetrec.events.log import event_log_index
from facetrec.model.ties import tie_key
from facetrec.model.user_encoder import EncoderRegistry
from ingest.streaming.user_events_stream import event_batches, start_user_events_stream, stream_id

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def write_events(directory: Path, name: str, events: list[dict], age_s: float = 0.0) -> None:
    """As a shipper must: written under a hidden name, then renamed (Spark never reads a half file).
    Spark takes files oldest first (modification time): ``age_s`` back-dates one."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in events))
    mtime = time.time() - age_s
    os.utime(tmp, (mtime, mtime))
    tmp.replace(directory / name)


def user_source(es, settings, user_id: str) -> dict:
    return es.get(index=settings.user_alias, id=user_id,
                  source_includes=["user_embed", "seen_item_ids", "event_batch_ids"])["_source"]


def expected_history(before: list[str], sent: list[dict]) -> list[str]:
    """What the stream appends: the user's events in (time, item id) order."""
    def at(e):
        ts = e["ts"]
        return datetime.fromtimestamp(ts / 1000, timezone.utc) if isinstance(ts, int) else \
            datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return [*before, *(e["item_id"] for e in sorted(sent, key=lambda e: (at(e), e["item_id"])))]


# ---- pure: micro-batch rows -> per-user event batches -------------------------------------------------

def test_a_micro_batch_becomes_one_deterministic_batch_per_user_and_bad_rows_are_rejected_with_a_reason():
    rows = [{"user_id": "u2", "item_id": "b", "ts": "2026-11-24T11:00:02Z"},
            {"user_id": "u1", "item_id": "x", "ts": str(int((NOW - timedelta(minutes=1)).timestamp() * 1000))},
            {"user_id": "u2", "item_id": "a", "ts": "2026-11-24T11:00:01+00:00"},
            {"user_id": "u2", "item_id": "c", "ts": "2026-11-24T11:00:01Z"},       # tie: the seeded hash decides
            {"user_id": "u3", "item_id": "y", "ts": "2026-11-24T11:00:00"},        # no zone
            {"user_id": "u3", "item_id": "y", "ts": "2026-11-24T12:30:00Z"},       # 30 min ahead
            {"user_id": " u4", "item_id": "z", "ts": "2026-11-24T11:00:00Z"},      # padded id
            {"user_id": "u5", "item_id": None, "ts": "2026-11-24T11:00:00Z"},
            {"user_id": "u6", "item_id": "q", "ts": None}]
    batches, rejected = event_batches(rows, "s1", 7, NOW)
    tied = sorted(["a", "c"], key=lambda item: tie_key("u2", item))   # the ETL's order of a same-second burst
    assert [(b.user_id, b.batch_id, b.item_ids) for b in batches] == [("u1", "s1-7", ["x"]), ("u2", "s1-7", [*tied, "b"])]
    assert [(r["user_id"], r["field"]) for r in rejected] == [("u3", "ts"), ("u3", "ts"), (" u4", "user_id"),
                                                               ("u5", "item_id"), ("u6", "ts")]
    assert all(r["reason"] for r in rejected)
    again, _ = event_batches(list(reversed(rows)), "s1", 7, NOW)
    assert again == batches, "a re-run epoch (rows in any order) must build the same batches"


def test_the_stream_id_lives_with_the_checkpoint(tmp_path):
    first = stream_id(tmp_path / "cp")
    assert stream_id(tmp_path / "cp") == first
    assert stream_id(tmp_path / "other") != first


# ---- real Spark, real node ---------------------------------------------------------------------------

def test_the_stream_applies_each_micro_batch_once_and_the_vector_is_the_nightly_jobs(es, spark, events_pair, tmp_path):
    settings, _, items, users, model = events_pair
    source, checkpoint = tmp_path / "events", tmp_path / "checkpoint"
    picked = [u for u in users[20:26]]
    newcomer = f"stream-new-{uuid.uuid4().hex[:6]}"
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    sent: dict[str, list[dict]] = {}
    for f in range(3):
        lines = []
        for n, user in enumerate(picked):
            for k in range(2):
                ts = base + timedelta(seconds=f * 60 + n * 3 + k)
                event = {"user_id": user["user_id"], "item_id": items[300 + f * 40 + n * 3 + k]["item_id"],
                         "ts": ts.isoformat() if k else int(ts.timestamp() * 1000)}
                lines.append(event)
                sent.setdefault(user["user_id"], []).append(event)
        lines.append({"user_id": newcomer, "item_id": items[f]["item_id"], "ts": (base + timedelta(seconds=f)).isoformat()})
        sent.setdefault(newcomer, []).append(lines[-1])
        if f == 1:
            lines.append({"user_id": picked[0]["user_id"], "item_id": items[0]["item_id"], "ts": "yesterday"})
        write_events(source, f"part-{f}.json", lines, age_s=100 - f)

    events = UserEvents(es, settings, EncoderRegistry(settings.models_root))
    query, writer = start_user_events_stream(spark, source, checkpoint, events, available_now=True,
                                             max_files_per_trigger=1)
    query.awaitTermination(180)
    assert query.exception() is None
    assert writer.totals["epochs"] == 3 and writer.totals["events"] == 3 * 13 + 1
    assert writer.totals["rejected"] == 1 and writer.totals["applied"] == 3 * 7
    rejected = [json.loads(line) for f in (checkpoint / "rejected").glob("epoch-*.jsonl") for line in f.read_text().splitlines()]
    assert [(r["ts"], r["field"]) for r in rejected] == [("yesterday", "ts")]

    for user in picked:
        src = user_source(es, settings, user["user_id"])
        history = expected_history(user["seen_item_ids"], sent[user["user_id"]])[-len(src["seen_item_ids"]):]
        assert src["seen_item_ids"] == history
        np.testing.assert_allclose(src["user_embed"], model.user_vector(history), atol=1e-5)
        assert src["event_batch_ids"][-3:] == [f"{writer.stream}-{e}" for e in range(3)]
    src = user_source(es, settings, newcomer)
    assert src["seen_item_ids"] == [items[f]["item_id"] for f in range(3)]
    np.testing.assert_allclose(src["user_embed"], model.user_vector(src["seen_item_ids"]), atol=1e-5)
    es.indices.refresh(index=event_log_index(settings))
    logged = es.count(index=event_log_index(settings), query={"prefix": {"batch_id": writer.stream}})["count"]
    assert logged == 3 * 7, "every applied user batch is in the event log (what a swap replays)"

    # The same checkpoint again with one more file: only the new file is read; nothing is applied twice.
    extra = {"user_id": picked[1]["user_id"], "item_id": items[450]["item_id"], "ts": datetime.now(timezone.utc).isoformat()}
    write_events(source, "part-3.json", [extra])
    query, again = start_user_events_stream(spark, source, checkpoint, events, available_now=True)
    query.awaitTermination(180)
    assert again.stream == writer.stream and again.totals["events"] == 1 and again.totals["applied"] == 1
    src = user_source(es, settings, picked[1]["user_id"])
    expected = expected_history(picked[1]["seen_item_ids"], [*sent[picked[1]["user_id"]], extra])
    assert src["seen_item_ids"] == expected[-len(src["seen_item_ids"]):]


CRASH_AFTER_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from facetrec.events.apply import UserEvents

    write = UserEvents.apply_many

    def write_then_die(self, *args, **kwargs):
        result = write(self, *args, **kwargs)   # the micro-batch's writes are in the user index ...
        children = [p for t in Path("/proc/self/task").iterdir() for p in (t / "children").read_text().split()]
        Path(sys.argv[1]).write_text(" ".join(children))
        os.kill(os.getpid(), signal.SIGKILL)    # ... and Spark has not committed the epoch
        return result

    UserEvents.apply_many = write_then_die
    from facetrec_cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and "zombie" not in _state(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_a_stream_killed_between_its_writes_and_its_commit_applies_nothing_twice_on_restart(es, events_pair, tmp_path):
    """kill -9 of the driver after a micro-batch reached the user index but before Spark committed
    it: the restart runs that epoch again (same files, same batch ids) and every event is in each
    history exactly once (the remembered batch ids), then goes on with the rest."""
    settings, _, items, users, model = events_pair
    source, checkpoint = tmp_path / "events", tmp_path / "checkpoint"
    picked = users[30:34]
    base = datetime.now(timezone.utc) - timedelta(minutes=5)
    sent: dict[str, list[dict]] = {}
    for f in range(2):
        lines = [{"user_id": u["user_id"], "item_id": items[500 + f * 10 + n]["item_id"],
                  "ts": (base + timedelta(seconds=f * 10 + n)).isoformat()} for n, u in enumerate(picked)]
        for line in lines:
            sent.setdefault(line["user_id"], []).append(line)
        write_events(source, f"part-{f}.json", lines, age_s=100 - f)
    env = {**os.environ, "ES_URL": settings.es_url, "FACETREC_USER_ALIAS": settings.user_alias,
           "FACETREC_ITEM_ALIAS": settings.item_alias, "FACETREC_MODELS_ROOT": str(settings.models_root)}
    command = ["events", "stream", "--source", str(source), "--checkpoint", str(checkpoint), "--available-now",
               "--max-files-per-trigger", "1"]
    script = tmp_path / "crash_after_write.py"
    script.write_text(CRASH_AFTER_WRITE)
    jvm_pids = tmp_path / "jvm.pids"
    crashed = subprocess.run([sys.executable, str(script), str(jvm_pids), *command], env=env, capture_output=True,
                             text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert _gone([int(p) for p in jvm_pids.read_text().split()], 60), "the killed driver's JVM did not exit"
    after_crash = {u["user_id"]: user_source(es, settings, u["user_id"]) for u in picked}
    for user in picked:   # epoch 0 landed, epoch 1 never ran
        assert after_crash[user["user_id"]]["seen_item_ids"][-1] == sent[user["user_id"]][0]["item_id"]

    restarted = subprocess.run([sys.executable, "-m", "facetrec_cli", *command], env=env, capture_output=True,
                               text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    totals = json.loads(restarted.stdout.strip().splitlines()[-1])
    assert totals["epochs"] == 2 and totals["duplicate"] == len(picked) and totals["applied"] == len(picked), \
        "the restart must re-run the uncommitted epoch (all duplicates) and then apply the next one"
    for user in picked:
        src = user_source(es, settings, user["user_id"])
        history = expected_history(user["seen_item_ids"], sent[user["user_id"]])
        assert src["seen_item_ids"] == history[-len(src["seen_item_ids"]):], "an event was applied twice or lost"
        np.testing.assert_allclose(src["user_embed"], model.user_vector(src["seen_item_ids"]), atol=1e-5)


def test_a_batched_write_that_meets_an_api_write_retries_that_user_alone(es, events_pair):
    """Between the micro-batch's mget and its _bulk the API writes one of its users: that user's
    bulk write is a version conflict, re-read and applied on top; nobody's events are lost."""
    settings, _, items, users, model = events_pair
    stream_writer = UserEvents(es, settings, EncoderRegistry(settings.models_root))
    api = UserEvents(es, settings, EncoderRegistry(settings.models_root))
    a, b = users[36]["user_id"], users[37]["user_id"]
    now = datetime.now(timezone.utc)
    encoder = stream_writer.encoders.get("m-events")
    compute = encoder.user_interests   # what the micro-batch computes its users' vectors with

    def meanwhile(*args, **kwargs):
        encoder.user_interests = compute      # once
        api.submit(EventBatch(a, "api-meanwhile", (Event(items[600]["item_id"], now),)))
        return compute(*args, **kwargs)

    encoder.user_interests = meanwhile
    results = stream_writer.apply_many([EventBatch(a, "stream-x", (Event(items[601]["item_id"], now),)),
                                        EventBatch(b, "stream-x", (Event(items[602]["item_id"], now),))])
    assert [(r.user_id, r.status) for r in results] == [(a, "applied"), (b, "applied")]
    src = user_source(es, settings, a)
    assert src["seen_item_ids"][-2:] == [items[600]["item_id"], items[601]["item_id"]]
    assert src["event_batch_ids"][-2:] == ["api-meanwhile", "stream-x"]
    np.testing.assert_allclose(src["user_embed"], model.user_vector(src["seen_item_ids"]), atol=1e-5)
