"""Checkpoint generations without I/O: key layout, what is reused, quiet-moment decisions,
final-generation rules, restore reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from kelpie.storage import FileStamp
from kelpie.worker.checkpoints import ExitKind, Fallback, RestoreReport, explicit_only
from kelpie.worker.checkpoints.generations import (
    KnownFile,
    StoredFile,
    manifest,
    plan_generation,
    same_as,
)
from kelpie.worker.checkpoints.layout import attempt_of, is_job_id, object_key
from kelpie.worker.checkpoints.quiet import (
    BLOCKED_POLL_MAX_S,
    BLOCKED_POLL_MIN_S,
    Look,
    Scan,
    judge,
    next_blocked_poll,
    next_look,
    settled_at,
    snapshot_is_consistent,
)
from kelpie.worker.plan import CheckpointTarget

MODEL = (0, "model.pt")
STEP = (0, "step.json")


def stamp(
    inode: int = 1, size: int = 10, mtime_ns: int = 1_000, ctime_ns: int = 1_000
) -> FileStamp:
    return FileStamp(device=1, inode=inode, size=size, mtime_ns=mtime_ns, ctime_ns=ctime_ns)


def known(s: FileStamp, key: str) -> KnownFile:
    return KnownFile(s, StoredFile("b", key, s.size, "0" * 64))


def target(prefix: str) -> CheckpointTarget:
    return CheckpointTarget(0, "b", prefix, Path("/ck"), None, None)


# -- layout -----------------------------------------------------------------------------------


JOB = "3f0c9a7e-5b1d-4c8e-9a51-2f7d6c1e8b40"
OTHER_JOB = "6a1e2c9b-0d3f-4e57-8c21-9b4f3a7d5e60"


@pytest.mark.parametrize(
    ("prefix", "compress", "key"),
    [
        ("run/ck/", False, f"run/ck/.kelpie/{JOB}/a12/g3/step-3/model.pt"),
        ("run/ck/", True, f"run/ck/.kelpie/{JOB}/a12/g3/step-3/model.pt.gz"),
        ("", False, f".kelpie/{JOB}/a12/g3/step-3/model.pt"),
    ],
)
def test_a_file_is_uploaded_in_its_jobs_area_under_its_attempt_and_generation(
    prefix: str, compress: bool, key: str
) -> None:
    assert object_key(target(prefix), JOB, 12, 3, "step-3/model.pt", compress=compress) == key
    assert attempt_of(target(prefix), JOB, key) == 12


@pytest.mark.parametrize(
    "key",
    [
        "run/ck/model.pt",  # a plain object, outside the area
        f"run/ck/.kelpie/{JOB}/notes.txt",
        f"run/ck/.kelpie/{JOB}/a12/model.pt",
        f"run/ck/.kelpie/{JOB}/ax/g1/model.pt",
        f"run/ck/.kelpie/{JOB}/a12/g3/",
        f"run/ck/.kelpie/{OTHER_JOB}/a12/g3/model.pt",  # another job's area: never ours
        "run/ck/.kelpie/a12/g3/model.pt",  # the layout before job areas
        f"other/.kelpie/{JOB}/a12/g3/model.pt",
    ],
)
def test_keys_kelpie_did_not_lay_out_in_the_jobs_area_have_no_attempt(key: str) -> None:
    assert attempt_of(target("run/ck/"), JOB, key) is None


@pytest.mark.parametrize(
    ("name", "is_job"),
    [(JOB, True), (JOB.upper(), False), ("a12", False), (JOB[:-1], False), ("", False)],
)
def test_only_job_ids_name_job_areas(name: str, is_job: bool) -> None:
    assert is_job_id(name) is is_job


# -- what a generation uploads ----------------------------------------------------------------


def test_an_untouched_file_keeps_its_object_and_a_touched_one_is_uploaded() -> None:
    committed = {MODEL: known(stamp(inode=1), "g1/model"), STEP: known(stamp(inode=2), "g1/step")}
    now = {MODEL: stamp(inode=1), STEP: stamp(inode=2, mtime_ns=2_000), (0, "new.bin"): stamp(3)}

    plan = plan_generation(now, committed)

    assert dict(plan.reuse) == {MODEL: committed[MODEL].stored}
    assert dict(plan.upload) == {STEP: now[STEP], (0, "new.bin"): now[(0, "new.bin")]}


@pytest.mark.parametrize(
    "changed",
    [
        stamp(inode=9),  # a new file renamed over the old one, even with the same times
        stamp(size=11),
        stamp(mtime_ns=1_001),
        stamp(ctime_ns=1_001),  # touched back to the old mtime: ctime still tells
    ],
)
def test_any_difference_in_the_stamp_means_an_upload(changed: FileStamp) -> None:
    plan = plan_generation({MODEL: changed}, {MODEL: known(stamp(), "g1/model")})
    assert MODEL in plan.upload and not plan.reuse


def test_an_object_uploaded_for_an_abandoned_attempt_is_reused_when_still_valid() -> None:
    uploaded = {MODEL: known(stamp(mtime_ns=5), "a1/g2/model")}
    committed = {MODEL: known(stamp(mtime_ns=1), "a1/g1/model")}
    assert plan_generation({MODEL: stamp(mtime_ns=5)}, uploaded, committed).reuse == {
        MODEL: uploaded[MODEL].stored
    }
    assert plan_generation({MODEL: stamp(mtime_ns=1)}, uploaded, committed).reuse == {
        MODEL: committed[MODEL].stored
    }


def test_the_folders_match_the_committed_generation_only_file_for_file() -> None:
    committed = {MODEL: known(stamp(), "k")}
    assert same_as({MODEL: stamp()}, committed)
    assert not same_as({MODEL: stamp(mtime_ns=2)}, committed)
    assert not same_as({MODEL: stamp(), STEP: stamp()}, committed)  # a file more
    assert not same_as({}, committed)  # the job deleted its checkpoint
    assert same_as({}, {})


def test_the_manifest_lists_files_by_target_then_path() -> None:
    files = manifest(
        {
            (1, "a"): StoredFile("b", "k1", 1, "1" * 64),
            (0, "z"): StoredFile("b", "k2", 2, "2" * 64),
            (0, "b/c"): StoredFile("b", "k3", 3, "3" * 64),
        }
    )
    assert [(f.target, f.path, f.key, f.size) for f in files] == [
        (0, "b/c", "k3", 3),
        (0, "z", "k2", 2),
        (1, "a", "k1", 1),
    ]


# -- quiet moments ----------------------------------------------------------------------------


def test_folders_holding_the_committed_generation_need_nothing() -> None:
    committed = {MODEL: known(stamp(), "k")}
    scan = Scan({MODEL: stamp()}, events_before=3)
    assert judge(scan, previous=None, committed=committed, explicit=False) is Look.COMMITTED
    assert judge(scan, previous=None, committed=committed, explicit=True) is Look.COMMITTED


def test_changes_announced_by_events_are_a_candidate_once_settled() -> None:
    previous = Scan({MODEL: stamp()}, events_before=3)
    scan = Scan({MODEL: stamp(mtime_ns=2)}, events_before=5)
    assert judge(scan, previous=previous, committed={}, explicit=False) is Look.CANDIDATE


def test_a_change_no_event_announced_must_settle_first() -> None:
    """A write through a memory mapping changes the stamp without any inotify event."""
    previous = Scan({MODEL: stamp()}, events_before=3)
    scan = Scan({MODEL: stamp(mtime_ns=2)}, events_before=3)
    assert judge(scan, previous=previous, committed={}, explicit=False) is Look.UNEXPLAINED
    # the look after: the same stamps as the scan before it
    again = Scan({MODEL: stamp(mtime_ns=2)}, events_before=3)
    assert judge(again, previous=scan, committed={}, explicit=False) is Look.CANDIDATE


def test_the_commit_file_needs_no_settling() -> None:
    previous = Scan({MODEL: stamp()}, events_before=3)
    scan = Scan({MODEL: stamp(mtime_ns=2)}, events_before=3)
    assert judge(scan, previous=previous, committed={}, explicit=True) is Look.CANDIDATE


def look_at(
    *,
    explicit: bool = False,
    explicit_only: bool = False,
    events_pending: bool = False,
    sweep_due: bool = False,
    recheck_at: float | None = None,
) -> float:
    return next_look(
        100.0,
        settle=0.5,
        explicit=explicit,
        explicit_only=explicit_only,
        events_pending=events_pending,
        last_change=99.8,
        sweep_due=sweep_due,
        recheck_at=recheck_at,
    )


def test_changes_are_looked_at_once_they_have_settled() -> None:
    assert look_at(events_pending=True) == 100.3
    assert look_at() == float("inf")  # nothing happened: wait to be woken


def test_neither_a_sweep_nor_a_recheck_looks_amid_a_burst_of_writes() -> None:
    """Between two files of a set no file may be open, yet the set is half written."""
    assert look_at(events_pending=True, sweep_due=True) == 100.3
    assert look_at(events_pending=True, recheck_at=100.1) == 100.3
    assert look_at(sweep_due=True) == 100.0
    assert look_at(recheck_at=100.1) == 100.1


def test_the_commit_file_is_looked_at_at_once() -> None:
    assert look_at(explicit=True, events_pending=True) == 100.0
    assert look_at(explicit=True, recheck_at=100.05) == 100.05  # a file still open


def test_a_job_that_commits_explicitly_gets_no_automatic_look() -> None:
    assert look_at(explicit_only=True, events_pending=True, sweep_due=True) == float("inf")


def test_settled_means_settle_seconds_after_the_last_change() -> None:
    assert settled_at(10.0, 0.5) == 10.5
    assert settled_at(None, 0.5) == float("-inf")


@pytest.mark.parametrize(
    ("opened", "rescan", "consistent"),
    [
        ({MODEL: stamp()}, Scan({MODEL: stamp(), STEP: stamp(2)}, 4), True),
        ({MODEL: stamp(inode=7)}, Scan({MODEL: stamp(), STEP: stamp(2)}, 4), False),
        ({MODEL: stamp()}, Scan({MODEL: stamp(), STEP: stamp(2)}, 5), False),  # an event
        ({MODEL: stamp()}, Scan({MODEL: stamp()}, 4), False),  # a file went away
        ({MODEL: stamp()}, Scan({MODEL: stamp(), STEP: stamp(2, size=1)}, 4), False),
    ],
)
def test_a_snapshot_must_show_one_moment(
    opened: dict[tuple[int, str], FileStamp], rescan: Scan, consistent: bool
) -> None:
    scan = Scan({MODEL: stamp(), STEP: stamp(2)}, 4)
    assert snapshot_is_consistent(scan, opened, rescan) is consistent


def test_a_held_file_is_polled_quickly_then_less_often() -> None:
    delays = [next_blocked_poll(None)]
    for _ in range(10):
        delays.append(next_blocked_poll(delays[-1]))
    assert delays[0] == BLOCKED_POLL_MIN_S
    assert delays == sorted(delays)
    assert delays[-1] == BLOCKED_POLL_MAX_S


# -- the end of a job -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "signal", "terminated", "kind"),
    [
        (0, None, False, ExitKind.SUCCEEDED),
        (0, None, True, ExitKind.SUCCEEDED),
        (143, None, True, ExitKind.HANDED_BACK),  # saved on SIGTERM, exited by itself
        (1, None, False, ExitKind.FAILED),
        (143, 15, True, ExitKind.KILLED),  # no handler: the signal killed it
        (137, 9, True, ExitKind.KILLED),  # SIGKILL after the stop grace
        (137, 9, False, ExitKind.KILLED),  # the OOM killer
    ],
)
def test_how_a_job_ended(
    exit_code: int, signal: int | None, terminated: bool, kind: ExitKind
) -> None:
    assert ExitKind.of(exit_code, signal, terminated_by_worker=terminated) is kind


def test_only_a_job_that_ended_on_its_own_terms_has_its_folders_committed_as_they_are() -> None:
    assert [k for k in ExitKind if k.folders_are_final] == [
        ExitKind.SUCCEEDED,
        ExitKind.HANDED_BACK,
    ]


def test_a_job_asks_for_explicit_generations_in_its_environment() -> None:
    assert explicit_only({"KELPIE_CHECKPOINT_MODE": "explicit"})
    assert explicit_only({"KELPIE_CHECKPOINT_MODE": " Explicit "})
    assert not explicit_only({"KELPIE_CHECKPOINT_MODE": "auto"})
    assert not explicit_only({})


# -- restore reports --------------------------------------------------------------------------


def test_a_fallback_names_the_generation_the_file_and_the_reason() -> None:
    fallback = Fallback(7, "its SHA-256 does not match", 0, "model.pt")
    report = RestoreReport(6, 7, 3, 100, plain=False, fallbacks=(fallback,))
    assert report.warnings == [
        "checkpoint generation 7 could not be restored (target 0, model.pt): "
        "its SHA-256 does not match",
        "restored the older checkpoint generation 6",
    ]


def test_a_restore_with_nothing_readable_says_the_job_starts_empty() -> None:
    report = RestoreReport(None, 2, 0, 0, plain=False, fallbacks=(Fallback(2, "gone"),))
    assert report.warnings[-1].startswith("no checkpoint generation could be restored")
    assert RestoreReport(None, None, 4, 10, plain=True).warnings == []
    assert RestoreReport(3, 3, 4, 10, plain=False).warnings == []
