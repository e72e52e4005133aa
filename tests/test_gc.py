"""`aistack gc` against real PostgreSQL, Qdrant local mode and the real model."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from aistack.gc.job import GcBusy, run_gc
from aistack.gc.restore import Selection, restore
from aistack.stores.schema import GC_LOCK
from aistack.stores.solutions import COLLECTION, point_payload
from tests.learning import LearningStore


async def test_roadmap_a_40_day_old_low_value_row_is_gone(learning: LearningStore):
    old = await learning.add("How do I enable flakes?", 0.3, age_days=40)
    kept = await learning.add("How do I pin nixpkgs?", 0.3, age_days=5)
    result = await learning.run()
    assert await learning.row_ids() == [kept]
    assert result.done["expired"] == 1
    assert (await learning.archived())["expired"] == [old]
    assert old not in await learning.point_ids()


async def test_roadmap_five_vim_solutions_leave_the_best_one(learning: LearningStore):
    for score in (0.5, 0.6, 0.7, 0.8, 0.9):
        await learning.add("How to install vim", score, solution=f"solution scored {score}")
    await learning.run()
    rows = await learning.rows()
    assert list(rows.values()) == [("How to install vim", 0.9)]
    assert len(await learning.point_ids()) == 1


async def test_pruning_removes_exactly_the_fraction_ties_broken_by_age(learning: LearningStore):
    # 12 rows over max_solutions=10: floor(12 * 0.25) = 3 go. Scores tie at 0.6; of the
    # tied rows the oldest go first.
    low = await learning.add("cheapest answer about grub", 0.55, age_days=3)
    tied = [
        await learning.add(f"tied answer number {n} about topic {n}", 0.6, age_days=10 - n)
        for n in range(5)
    ]
    others = [
        await learning.add(f"good answer {n} on unrelated subject {n * 7}", 0.9, age_days=2)
        for n in range(6)
    ]
    result = await learning.run(max_solutions=10, prune_fraction=0.25)
    assert result.done["pruned"] == 3
    assert (await learning.archived())["pruned"] == sorted([low, tied[0], tied[1]])
    assert sorted(await learning.row_ids()) == sorted(tied[2:] + others)


async def test_nothing_is_pruned_at_or_under_max_solutions(learning: LearningStore):
    for n in range(10):
        await learning.add(f"answer {n} about subject {n * 13}", 0.55, age_days=3)
    result = await learning.run(max_solutions=10)
    assert result.done["pruned"] == 0 and len(await learning.row_ids()) == 10


async def test_newest_rows_are_protected_from_pruning(learning: LearningStore):
    fresh = [await learning.add(f"fresh answer {n} on area {n * 11}", 0.51) for n in range(4)]
    old = [
        await learning.add(f"old answer {n} on field {n * 17}", 0.8, age_days=2) for n in range(2)
    ]
    # 6 rows over max 2: floor(6 * 0.5) = 3 should go, but only 2 rows are past the grace.
    result = await learning.run(max_solutions=2, prune_fraction=0.5)
    assert result.done["pruned"] == 2
    assert sorted(await learning.row_ids()) == fresh
    assert (await learning.archived())["pruned"] == old


async def test_orphan_sweep_both_ways(learning: LearningStore):
    kept = await learning.add("how to set a static IP address", 0.8)
    lost = await learning.add("how to mount an NFS share", 0.8, age_days=1, with_point=False)
    young = await learning.add("a row written a moment ago", 0.8, with_point=False)
    await learning.add_point(999_001, "an orphan point left by a crash", age_days=1)
    await learning.add_point(999_002, "a point of a write still in flight", age_days=0)
    result = await learning.run()
    assert result.done["orphan_points"] == 1
    assert result.done["reembedded"] == 1
    points = await learning.point_ids()
    assert 999_001 not in points and 999_002 in points
    assert lost in points and kept in points and young not in points
    # The row that had lost its point is found by search again.
    vector = await learning.embedder.embed_query("how to mount an NFS share")
    hit = await learning.store.nearest(COLLECTION, vector, 0.9)
    assert hit is not None and hit.id == lost


async def mixed_store(learning: LearningStore) -> None:
    await learning.add("How do I enable flakes?", 0.3, age_days=40)
    await learning.add("How do I enable flakes?", 0.45, age_days=35)
    for score in (0.6, 0.7, 0.8):
        await learning.add("How to install vim", score, age_days=3)
    for n in range(6):
        await learning.add(f"answer {n} about subject {n * 13} of nixos", 0.5 + n / 20, age_days=4)
    await learning.add_point(888_001, "an orphan", age_days=2)


async def test_dry_run_prints_exactly_what_a_run_removes(learning: LearningStore):
    await mixed_store(learning)
    before = await learning.rows()
    points_before = await learning.point_ids()
    dry = await learning.run(dry_run=True, max_solutions=6, prune_fraction=0.2)
    assert await learning.rows() == before
    assert await learning.point_ids() == points_before
    assert dry.run_id is None
    real = await learning.run(max_solutions=6, prune_fraction=0.2)
    archived = await learning.archived()
    assert dry.plan.expired and dry.plan.pruned and dry.plan.duplicate
    assert archived == {
        "expired": dry.plan.expired,
        "pruned": dry.plan.pruned,
        "duplicate": dry.plan.duplicate,
    }
    assert real.plan.orphan_points == dry.plan.orphan_points == [888_001]


async def test_restore_puts_rows_and_search_results_back(learning: LearningStore):
    await mixed_store(learning)
    before = await learning.rows()
    result = await learning.run(max_solutions=6, prune_fraction=0.2)
    assert len(await learning.rows()) < len(before)
    vim = await learning.embedder.embed_query("How to install vim")
    restored = await restore(
        learning.config(), learning.store, learning.embedder, Selection(run_id=result.run_id), None
    )
    assert restored == sum(len(ids) for _, ids in result.plan.removals())
    assert await learning.rows() == before
    assert await learning.archived() == {"expired": [], "pruned": [], "duplicate": []}
    point_ids = await learning.point_ids()
    assert set(before) <= set(point_ids)
    hits = await learning.store.search(COLLECTION, vim, 10, 0)
    assert sum(1 for hit in hits if hit.score > 0.99) == 3


async def test_restore_by_reason_and_time(learning: LearningStore):
    await mixed_store(learning)
    result = await learning.run(max_solutions=6, prune_fraction=0.2)
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    restored = await restore(
        learning.config(),
        learning.store,
        learning.embedder,
        Selection(since=since, reason="duplicate"),
        None,
    )
    assert restored == len(result.plan.duplicate)
    archived = await learning.archived()
    assert archived["duplicate"] == [] and archived["expired"] == result.plan.expired


async def test_a_second_run_while_one_holds_the_lock_says_so(learning: LearningStore):
    holder = await asyncpg.connect(learning.dsn)
    try:
        # What a running pass holds for its whole length.
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK)
        with pytest.raises(GcBusy, match="in progress"):
            await learning.run()
        config = learning.config_file()
        await learning.close_store()
        result = aistack("gc", "run", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "another GC run or restore is in progress; nothing done" in result.stderr
        restored = aistack("gc", "restore", "--config", str(config), "--run", "1")
        assert restored.returncode == 1 and "in progress" in restored.stderr
    finally:
        await holder.close()
    learning.open_store()
    assert (await learning.run()).run_id is not None


def aistack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


async def test_killed_between_commit_and_qdrant_delete_next_run_finishes(
    learning: LearningStore,
):
    ids = [
        await learning.add(f"stale answer {n} on topic {n * 19}", 0.2, age_days=60)
        for n in range(7)
    ]
    kept = await learning.add("a good recent answer", 0.9)
    config = learning.config_file(batch_size=3)
    await learning.close_store()
    killed = aistack(
        "gc", "run", "--config", str(config), env={"AISTACK_FAILPOINTS": "gc.after_commit"}
    )
    assert killed.returncode == -9, killed.stderr
    learning.open_store()
    # The first batch is archived, its points are still in Qdrant: nothing is lost.
    archived = await learning.archived()
    assert archived["expired"] == ids[:3]
    assert sorted(await learning.row_ids()) == [*ids[3:], kept]
    assert set(ids) <= set(await learning.point_ids())
    assert await learning.db.fetchval("SELECT status FROM gc_runs WHERE id = 1") == "running"

    result = await learning.run()
    assert result.done["pending_finished"] == 3
    assert result.done["expired"] == 4
    assert await learning.row_ids() == [kept]
    assert await learning.point_ids() == [kept]
    assert (await learning.archived())["expired"] == ids
    assert await learning.db.fetchval("SELECT status FROM gc_runs WHERE id = 1") == "interrupted"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("deduplicate_similarity", 1.5, "gc.deduplicate_similarity: Input should be less than"),
        ("prune_fraction", 0, "gc.prune_fraction: Input should be greater than 0"),
        ("max_age_days", -1, "gc.max_age_days: Input should be greater than or equal to 1"),
        ("min_value_score", "high", "gc.min_value_score: Input should be a valid number"),
        ("batch_size", 0, "gc.batch_size"),
        ("archive_dayz", 3, "unknown key 'gc.archive_dayz'"),
    ],
)
def test_nonsense_thresholds_are_rejected(tmp_path, key, value, message):
    config = tmp_path / "aistack.json"
    config.write_text(json.dumps({"qdrant": {"path": str(tmp_path)}, "gc": {key: value}}))
    result = aistack("gc", "run", "--config", str(config), "--dry-run")
    assert result.returncode == 2
    assert message in result.stderr


async def test_incremental_runs_compare_new_rows_only(learning: LearningStore):
    # Rows a day old: none can be a write that committed late (see the test below).
    first = await learning.add("How do I rotate the journal logs?", 0.6, age_days=1)
    await learning.run()
    # Planted behind the run's back among already-checked rows: an incremental run does
    # not look at old pairs; a full scan does.
    await learning.db.execute(
        "UPDATE gc_dedup_state SET checked_through_id = checked_through_id + 1"
    )
    second = await learning.add("How do I rotate the journal logs?", 0.7, age_days=1)
    await learning.db.execute("UPDATE gc_dedup_state SET checked_through_id = $1", second)
    third = await learning.add("How do I rotate the journal logs?", 0.65, age_days=1)
    result = await learning.run()
    assert not result.plan.full_scan
    assert result.plan.duplicate == [third]
    assert result.plan.duplicate_of == {third: second}
    full = await learning.run(full_scan=True)
    assert full.plan.duplicate == [first]


async def test_rows_written_without_points_are_merged_by_the_second_run(
    learning: LearningStore,
):
    checked = await learning.add("How do I rotate the journal logs?", 0.6, age_days=2)
    assert (await learning.run()).plan.full_scan
    # As another writer leaves them: rows straight into PostgreSQL, no points, past the
    # grace a write in flight gets.
    copies = [
        await learning.add(query, score, age_days=1, with_point=False)
        for query, score in [
            ("How do I rotate the journal logs", 0.7),
            ("How can I rotate the journal logs?", 0.65),
        ]
    ]
    unrelated = await learning.add("How do I enable flakes?", 0.8, age_days=1, with_point=False)
    first = await learning.run()
    assert first.done["reembedded"] == 3 and first.plan.duplicate == []
    second = await learning.run()
    assert not second.plan.full_scan
    assert second.plan.duplicate_of == {checked: copies[0], copies[1]: copies[0]}
    assert await learning.row_ids() == [copies[0], unrelated]
    assert await learning.point_ids() == [copies[0], unrelated]
    assert second.plan.checked_through_id == unrelated


async def test_a_row_that_commits_after_a_higher_id_is_still_compared(learning: LearningStore):
    checked = await learning.add("How do I rotate the journal logs?", 0.6, age_days=2)
    await learning.run()
    # A learn transaction as the gateway's: the id is taken, the point written, and the
    # commit waits while a row with a higher id commits and a GC pass runs.
    writer = await asyncpg.connect(learning.dsn)
    try:
        late = writer.transaction()
        await late.start()
        row = await writer.fetchrow(
            "INSERT INTO solved_issues (query, solution, value_score)"
            " VALUES ('How can I rotate the journal logs?', 'late', 0.7) RETURNING id, created_at"
        )
        vector = await learning.embedder.embed_query("How can I rotate the journal logs?")
        await learning.store.upsert(
            COLLECTION, [row["id"]], [vector], [point_payload(0.7, row["created_at"])]
        )
        higher = await learning.add("How do I enable flakes?", 0.8, age_days=1)
        assert higher > row["id"]
        unseen = await learning.run()
        assert unseen.plan.duplicate == [] and unseen.plan.checked_through_id == higher
        await late.commit()
    finally:
        await writer.close()
    result = await learning.run()
    assert not result.plan.full_scan
    assert result.plan.duplicate_of == {checked: row["id"]}


async def test_a_row_that_never_gets_a_point_does_not_hold_incremental_runs_back(
    learning: LearningStore,
):
    lost = await learning.add("how to mount an NFS share", 0.8, age_days=1, with_point=False)
    later = await learning.add("How do I rotate the journal logs?", 0.6, age_days=1)
    # Without the sweep nothing gives it a point: later runs need not wait for it.
    assert (await learning.run(orphan_cleanup=False)).plan.checked_through_id == later
    # With the sweep it gets one in this run, and the next run compares it.
    swept = await learning.run()
    assert swept.done["reembedded"] == 1 and swept.plan.checked_through_id == lost - 1
    assert (await learning.run()).plan.checked_through_id == later


async def test_a_changed_similarity_triggers_a_full_scan(learning: LearningStore):
    await learning.add("How do I rotate the journal logs?", 0.6)
    assert (await learning.run()).plan.full_scan
    assert not (await learning.run()).plan.full_scan
    assert (await learning.run(deduplicate_similarity=0.9)).plan.full_scan


async def test_archive_is_purged_after_archive_days(learning: LearningStore):
    await learning.add("How do I enable flakes?", 0.3, age_days=40)
    await learning.run()
    assert (await learning.archived())["expired"]
    await learning.db.execute(
        "UPDATE solved_issues_archive SET archived_at = now() - interval '31 days'"
    )
    result = await learning.run(archive_days=30)
    assert result.done["archive_purged"] == 1
    assert (await learning.archived())["expired"] == []


async def test_cli_run_status_metrics_and_restore(learning: LearningStore, tmp_path):
    await mixed_store(learning)
    config = str(learning.config_file(max_solutions=6, prune_fraction=0.2))
    await learning.close_store()
    metrics = tmp_path / "textfile" / "aistack-gc.prom"
    dry = aistack("gc", "run", "--config", config, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["counts"]["expired"] == 2
    run = aistack("gc", "run", "--config", config, "--metrics-file", str(metrics))
    assert run.returncode == 0, run.stderr
    assert "gc: run 1 done" in run.stdout
    assert "expired           2" in run.stdout
    assert "event=gc.run" in run.stderr
    text = metrics.read_text()
    assert 'hybrid_gc_solutions_deleted_total{reason="expired"} 2.0' in text
    assert (
        f'hybrid_gc_solutions_deleted_total{{reason="duplicate"}} {plan["counts"]["duplicate"]}.0'
        in text
    )
    assert "hybrid_gc_vectors_cleaned_total" in text
    assert "hybrid_gc_storage_bytes" in text
    assert "aistack_gc_last_success_timestamp_seconds" in text
    assert oct(metrics.stat().st_mode & 0o777) == "0o644"
    status = aistack("gc", "status", "--config", config)
    assert status.returncode == 0, status.stderr
    assert "run 1" in status.stdout and "done" in status.stdout and "expired 2" in status.stdout
    back = aistack("gc", "restore", "--config", config, "--run", "1", "--reason", "expired")
    assert back.returncode == 0 and "restored 2 rows" in back.stdout
    again = aistack("gc", "restore", "--config", config, "--run", "1", "--reason", "expired")
    assert again.returncode == 2 and "no archived rows match run 1, reason expired" in again.stderr


async def test_json_prints_counts_and_the_ids_on_request(learning: LearningStore):
    await mixed_store(learning)
    config = str(learning.config_file(max_solutions=6, prune_fraction=0.2))
    await learning.close_store()
    counts = aistack("gc", "run", "--config", config, "--dry-run", "--json")
    assert counts.returncode == 0, counts.stderr
    plain = json.loads(counts.stdout)
    assert set(plain) == {"run", "dry_run", "seconds", "counts", "full_scan", "done"}
    assert plain["counts"]["expired"] == 2 and plain["counts"]["orphan_points"] == 1
    listed = aistack("gc", "run", "--config", config, "--dry-run", "--json", "--ids")
    assert listed.returncode == 0, listed.stderr
    dry = json.loads(listed.stdout)
    assert dry["counts"] == plain["counts"]
    assert len(dry["expired"]) == 2 and dry["orphan_points"] == [888_001]
    real = aistack("gc", "run", "--config", config, "--json", "--ids")
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    for key in ("expired", "pruned", "duplicate", "orphan_points", "rows_without_points"):
        assert done[key] == dry[key], key
    assert done["done"]["expired"] == 2 and done["run"] == 1
    learning.open_store()
    archived = await learning.archived()
    assert archived["duplicate"] == [entry["id"] for entry in done["duplicate"]]


async def test_text_shows_20_removed_ids_each_and_all_with_ids(learning: LearningStore):
    await learning.db.execute(
        "INSERT INTO solved_issues (query, solution, value_score, created_at)"
        " SELECT 'stale answer ' || n, 's', 0.2, now() - interval '60 days'"
        " FROM generate_series(1, 25) AS n"
    )
    config = str(learning.config_file())
    await learning.close_store()
    short = aistack("gc", "run", "--config", config, "--dry-run")
    assert short.returncode == 0, short.stderr
    assert "expired          25  " + " ".join(map(str, range(1, 21))) + " ...\n" in short.stdout
    full = aistack("gc", "run", "--config", config, "--dry-run", "--ids")
    assert "expired          25  " + " ".join(map(str, range(1, 26))) + "\n" in full.stdout


async def test_re_embedding_reports_its_progress(learning: LearningStore):
    # Rows another writer left without points, past the grace a write in flight gets.
    await learning.db.execute(
        "INSERT INTO solved_issues (query, solution, value_score, created_at)"
        " SELECT 'question ' || n || ' about option ' || md5(n::text), 's', 0.8,"
        " now() - interval '1 day' FROM generate_series(1, 600) AS n"
    )
    lines = io.StringIO()
    result = await run_gc(learning.config(), learning.store, learning.embedder, progress=lines)
    assert result.done["reembedded"] == 600
    progress = [line for line in lines.getvalue().splitlines() if "re-embedded" in line]
    # The first batch and the last are always reported; between them, one line a second.
    assert progress[0] == "gc: re-embedded 256/600"
    assert progress[-1] == "gc: re-embedded 600/600"
    assert len(await learning.point_ids()) == 600


async def test_gc_refuses_an_unmigrated_database(tmp_path, postgres, embedder):
    store = LearningStore(tmp_path, postgres, embedder)
    await store.open(migrated=False)
    try:
        config = str(store.config_file())
        await store.close_store()
        result = aistack("gc", "run", "--config", config)
        assert result.returncode == 1
        assert "run `aistack db migrate --config FILE` first" in result.stderr
        migrated = aistack("db", "migrate", "--config", config)
        assert migrated.returncode == 0 and "migrated to version 2" in migrated.stdout
        again = aistack("db", "migrate", "--config", config)
        assert again.returncode == 0 and "already at version 2" in again.stdout
        assert aistack("gc", "run", "--config", config).returncode == 0
        await store.db.execute("INSERT INTO aistack_schema (version) VALUES (99)")
        newer = aistack("gc", "status", "--config", config)
        assert newer.returncode == 1 and "newer than this aistack knows" in newer.stderr
    finally:
        await store.close()


def unreachable_postgres_config(tmp_path) -> Path:
    config = tmp_path / "aistack.json"
    config.write_text(
        json.dumps(
            {
                "qdrant": {"path": str(tmp_path / "q")},
                "postgres": {"dsn": "postgresql://postgres@127.0.0.1:9/aistack"},
            }
        )
    )
    return config


async def test_postgres_down_is_one_clear_line(tmp_path):
    config = unreachable_postgres_config(tmp_path)
    result = aistack("gc", "run", "--config", str(config))
    assert result.returncode == 1
    assert "PostgreSQL (postgresql://postgres@127.0.0.1:9/aistack)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "run_id", ["99999999999999999999", "9223372036854775808", "0", "-5", "seven"]
)
def test_restore_of_a_run_id_no_bigint_id_can_hold_is_bad_usage(tmp_path, run_id):
    config = unreachable_postgres_config(tmp_path)
    result = aistack("gc", "restore", "--config", str(config), "--run", run_id)
    assert result.returncode == 2
    assert f"argument --run: {run_id!r} is not a run id (1 to 9223372036854775807)" in result.stderr
    # Refused before anything is opened: the unreachable PostgreSQL is never blamed.
    assert "PostgreSQL" not in result.stderr and "Traceback" not in result.stderr


def test_restore_of_the_largest_run_id_goes_to_postgresql(tmp_path):
    config = unreachable_postgres_config(tmp_path)
    result = aistack("gc", "restore", "--config", str(config), "--run", "9223372036854775807")
    assert result.returncode == 1 and "PostgreSQL (postgresql://" in result.stderr


async def test_runs_do_not_overlap_in_one_process(learning: LearningStore):
    for n in range(3):
        await learning.add(f"stale answer {n}", 0.2, age_days=60)
    outcomes = await asyncio.gather(learning.run(), learning.run(), return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, GcBusy)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    # Either the second saw the first holding the lock, or it ran after the first ended;
    # never did both remove the same rows.
    assert len(done) + len(busy) == 2
    assert sum(r.done["expired"] for r in done) == 3
