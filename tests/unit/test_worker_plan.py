"""The transfers plan: what moves where, and which local folders a job may name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kelpie.schemas import JobOut
from kelpie.worker.config import WorkerSettings
from kelpie.worker.plan import (
    CheckpointTarget,
    Download,
    InvalidJob,
    check_local_path,
    plan_transfers,
)

ROOTS = (Path("/work/input"), Path("/work/checkpoint"), Path("/work/output"))
CWD = Path("/work/input")


def settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "api_url": "http://127.0.0.1:1",
        "api_key": "k",
        "machine_id": "m",
        "container_group_id": "g",
        "input_dir": ROOTS[0],
        "checkpoint_dir": ROOTS[1],
        "output_dir": ROOTS[2],
        **overrides,
    }
    return WorkerSettings.model_validate(values)


def job(**fields: Any) -> JobOut:
    return JobOut.model_validate(
        {
            "id": "j1",
            "user_id": "u",
            "status": "running",
            "created": "2024-01-01T00:00:00Z",
            "command": "true",
            "container_group_id": "g",
            **fields,
        }
    )


def sync_entry(local_path: str, direction: str, **extra: Any) -> dict[str, Any]:
    return {
        "bucket": "b",
        "prefix": "p/",
        "local_path": local_path,
        "direction": direction,
        **extra,
    }


def test_legacy_pairs_map_to_the_three_dirs() -> None:
    plan = plan_transfers(
        job(
            input_bucket="b",
            input_prefix="in/",
            checkpoint_bucket="b",
            checkpoint_prefix="ck",
            output_bucket="o",
            output_prefix="out/",
        ),
        settings(),
    )
    assert [(d.prefix, d.local_dir, d.warn_if_empty) for d in plan.downloads] == [
        ("in/", ROOTS[0], True),
    ]
    [checkpoint] = plan.checkpoints
    assert (checkpoint.index, checkpoint.bucket, checkpoint.prefix) == (0, "b", "ck/")
    assert (checkpoint.local_dir, checkpoint.area) == (ROOTS[1], "ck/.kelpie/")
    assert checkpoint.plain_restore == Download("b", "ck", ROOTS[1], None, warn_if_empty=False)
    assert [(t.prefix, t.local_dir) for t in plan.live_outputs] == [("out/", ROOTS[2])]
    assert plan.after == plan.live_outputs


def test_a_job_without_storage_moves_nothing() -> None:
    plan = plan_transfers(job(), settings())
    assert (plan.downloads, plan.checkpoints, plan.live_outputs, plan.after) == ((), (), (), ())
    assert plan.local_dirs == ROOTS


def test_job_environment_moves_the_dirs_within_the_roots() -> None:
    plan = plan_transfers(job(environment={"INPUT_DIR": "/work/input/sub/"}), settings())
    assert plan.dirs.input == Path("/work/input/sub")


def test_job_environment_cannot_point_a_dir_outside_the_roots() -> None:
    with pytest.raises(InvalidJob, match=r"environment.OUTPUT_DIR '/etc' is outside"):
        plan_transfers(job(environment={"OUTPUT_DIR": "/etc"}), settings())


def test_sync_entries_become_downloads_and_targets_with_patterns() -> None:
    plan = plan_transfers(
        job(
            compression=True,
            sync={
                "before": [sync_entry("/work/input/data", "download", pattern=r"\.txt$")],
                "during": [sync_entry("/work/checkpoint", "upload")],
                "after": [sync_entry("/work/output/logs", "upload", pattern=r"\.log$")],
            },
        ),
        settings(),
    )
    assert plan.compress
    assert plan.downloads[0].local_dir == Path("/work/input/data")
    assert not plan.downloads[0].warn_if_empty
    assert [(c.index, c.local_dir, c.plain_restore) for c in plan.checkpoints] == [
        (0, Path("/work/checkpoint"), None)
    ]
    assert plan.live_outputs == ()
    target = plan.after[0]
    assert target.key_for(Path("/work/output/logs/a/train.log")) == "p/a/train.log"
    assert target.key_for(Path("/work/output/logs/a/train.trace")) is None
    assert target.key_for(Path("/work/output/other.log")) is None
    assert Path("/work/output/logs") in plan.local_dirs


def test_every_sync_during_entry_is_a_checkpoint_target_numbered_as_the_api_does() -> None:
    plan = plan_transfers(
        job(
            sync={
                "before": [
                    sync_entry("/work/checkpoint/b", "download", prefix="b", pattern=r"\.pt$"),
                    sync_entry("/work/input/copy", "download", prefix="a/"),
                ],
                "during": [
                    sync_entry("/work/checkpoint/a", "upload", prefix="a/"),
                    sync_entry("/work/checkpoint/b", "upload", prefix="b/", pattern=r"\.pt$"),
                ],
            }
        ),
        settings(),
    )
    first, second = plan.checkpoints
    assert (first.index, first.prefix, first.plain_restore) == (0, "a/", None)
    # the same bucket, prefix and folder as a `before` entry: that entry is how the folder
    # restored before it had generations, so it is no plain download any more
    assert (second.index, second.prefix) == (1, "b/")
    assert second.plain_restore is not None
    assert second.plain_restore.local_dir == Path("/work/checkpoint/b")
    assert [d.local_dir for d in plan.downloads] == [Path("/work/input/copy")]


def test_two_checkpoint_folders_on_one_prefix_are_refused() -> None:
    with pytest.raises(InvalidJob, match=r"sync.during\[1\] and sync.during\[0\] both upload"):
        plan_transfers(
            job(
                sync={
                    "during": [
                        sync_entry("/work/checkpoint/a", "upload", prefix="p"),
                        sync_entry("/work/checkpoint/b", "upload", prefix="p/"),
                    ]
                }
            ),
            settings(),
        )


def test_checkpoint_files_are_named_relative_to_their_folder() -> None:
    target = CheckpointTarget(
        0, "b", "", Path("/work/checkpoint"), re.compile(r"\.(pt|json)$"), None
    )
    assert target.area == ".kelpie/"
    assert target.relative_path(Path("/work/checkpoint/step-3/model.pt")) == "step-3/model.pt"
    assert target.relative_path(Path("/work/checkpoint/notes.txt")) is None  # pattern
    assert target.relative_path(Path("/work/checkpoint/.kelpie/x.pt")) is None  # kelpie's own
    assert target.relative_path(Path("/work/checkpoint/a/.kelpie/x.pt")) == "a/.kelpie/x.pt"
    assert target.relative_path(Path("/work/output/model.pt")) is None
    assert target.relative_path(Path("/work/checkpoint")) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("/etc", "'/etc' is outside the folders this worker may use"),
        ("/", "outside the folders this worker may use"),
        ("/work/input/../../etc", r"\(that is /etc\) is outside"),
        ("/work/input/..", r"\(that is /work\) is outside"),
        ("../../etc", r"'../../etc' \(that is /etc\) is outside"),
        ("..", r"\(that is /work\) is outside"),
        ("/work/inputs-not-a-root", "outside"),
    ],
)
def test_bad_local_paths_are_refused(raw: str, message: str) -> None:
    with pytest.raises(InvalidJob, match=message):
        check_local_path(raw, ROOTS, "sync.before[0].local_path", CWD)


@pytest.mark.parametrize(
    ("raw", "resolved"),
    [
        ("checkpoints/", "/work/input/checkpoints"),
        ("./checkpoints", "/work/input/checkpoints"),
        (".", "/work/input"),
        ("a/../b", "/work/input/b"),
        ("../output/logs", "/work/output/logs"),
        ("/work/checkpoint/x/../y", "/work/checkpoint/y"),
    ],
)
def test_relative_and_dotted_paths_resolve_from_the_working_dir(raw: str, resolved: str) -> None:
    assert check_local_path(raw, ROOTS, "x", CWD) == Path(resolved)


def test_a_symlink_out_of_a_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    with pytest.raises(InvalidJob, match="outside"):
        check_local_path(str(root / "escape" / "cron.d"), [root], "x", tmp_path)
    with pytest.raises(InvalidJob, match=r"'escape/cron.d' \(that is /etc/cron.d\) is outside"):
        check_local_path("escape/cron.d", [root], "x", root)
    assert check_local_path(str(root / "a" / "b"), [root], "x", tmp_path) == root / "a" / "b"


def test_dotdot_after_a_symlink_is_read_as_the_kernel_reads_it(tmp_path: Path) -> None:
    # root/link/.. is root to the eye, but the kernel follows the link first: outside/.
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    root.mkdir()
    (root / "link").symlink_to(outside / "deep")
    with pytest.raises(InvalidJob, match=f"that is {outside / 'x'}"):
        check_local_path("link/../x", [root], "x", root)


def test_relative_sync_paths_name_folders_under_the_working_dir(tmp_path: Path) -> None:
    app = tmp_path / "app"
    plan = plan_transfers(
        job(
            sync={
                "before": [sync_entry("inputs/", "download")],
                "during": [sync_entry("checkpoints/", "upload")],
                "after": [sync_entry("./outputs", "upload")],
            }
        ),
        settings(sync_roots=[app]),
        working_dir=app,
    )
    assert plan.working_dir == app
    assert plan.downloads[0].local_dir == app / "inputs"
    assert plan.checkpoints[0].local_dir == app / "checkpoints"
    assert plan.after[0].local_dir == app / "outputs"
    assert plan.checkpoints[0].relative_path(app / "checkpoints" / "step-1.pt") == "step-1.pt"


def test_the_working_dir_is_the_workers_own_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = plan_transfers(
        job(sync={"during": [sync_entry("ckpt", "upload")]}), settings(sync_roots=[tmp_path])
    )
    assert plan.working_dir == tmp_path
    assert plan.checkpoints[0].local_dir == tmp_path / "ckpt"


def test_relative_sync_path_outside_the_roots_says_where_it_leads() -> None:
    with pytest.raises(InvalidJob, match=r"'checkpoints/' \(that is /srv/app/checkpoints\)"):
        plan_transfers(
            job(sync={"during": [sync_entry("checkpoints/", "upload")]}),
            settings(),
            working_dir=Path("/srv/app"),
        )


def test_relative_dir_in_the_job_environment_is_given_to_the_job_absolute() -> None:
    plan = plan_transfers(job(environment={"OUTPUT_DIR": "../output/run1"}), settings(), CWD)
    assert plan.dirs.output == Path("/work/output/run1")
    assert plan.dirs.as_env()["OUTPUT_DIR"] == "/work/output/run1"


def test_sync_roots_widen_what_a_job_may_name() -> None:
    wide = settings(sync_roots=[Path("/models")])
    plan = plan_transfers(job(sync={"before": [sync_entry("/models/llama", "download")]}), wide)
    assert plan.downloads[0].local_dir == Path("/models/llama")
    # the container's own dirs stay allowed
    plan_transfers(job(sync={"during": [sync_entry("/work/checkpoint", "upload")]}), wide)


def test_bad_sync_path_names_the_entry() -> None:
    with pytest.raises(InvalidJob, match=r"sync.during\[1\].local_path '/tmp/x'"):
        plan_transfers(
            job(
                sync={
                    "during": [
                        sync_entry("/work/checkpoint", "upload"),
                        sync_entry("/tmp/x", "upload"),
                    ]
                }
            ),
            settings(),
        )
