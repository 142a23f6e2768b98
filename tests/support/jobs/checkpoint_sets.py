"""Write a multi-file checkpoint set every STEP_S seconds in LAYOUT (see checkpoint_format).

Resumes from what CHECKPOINT_DIR holds: the set found is checked and logged (`start` with
`resumed` and `intact`), then steps continue from the next one. After each set is complete
it logs `complete` with the step. The log is CHECKPOINT_LOG, outside the synced folders.

With USE_COMMIT_FILE=1 the job touches $KELPIE_CHECKPOINT_COMMIT_FILE after each complete set
and waits for it to disappear before changing the folder again. SIGTERM: the current set
is finished, then the job exits 143 (with IGNORE_SIGTERM=1 it carries on, to be killed
mid-write). Stops after STEPS steps (exit 0). PAUSE_BETWEEN_FILES_S makes it pause after the
first file of each set (a job that computes between files). FAIL_AFTER_STEP=N: a job with a
bug, exiting 1 once set N is complete (marked with the commit file when it uses it).
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from tests.support.jobs.checkpoint_format import (
    NAMES,
    content,
    file_size,
    log,
    read_set,
    write_whole,
)

folder = Path(os.environ["CHECKPOINT_DIR"])
journal = Path(os.environ["CHECKPOINT_LOG"])
layout = os.environ.get("LAYOUT", "overwrite")
steps = int(os.environ.get("STEPS", "1000"))
step_s = float(os.environ.get("STEP_S", "0.5"))
size = int(os.environ.get("FILE_SIZE", str(256 * 1024)))
commit_file = os.environ.get("KELPIE_CHECKPOINT_COMMIT_FILE") or ""
use_commit_file = os.environ.get("USE_COMMIT_FILE") == "1"
pause_between_files = float(os.environ.get("PAUSE_BETWEEN_FILES_S", "0"))
fail_after_step = int(os.environ.get("FAIL_AFTER_STEP", "0"))
terminated = False


def on_sigterm(signum: int, frame: object) -> None:
    global terminated
    terminated = True


def write_set(step: int) -> None:
    if layout == "folder":
        target = folder / f"step-{step}"
        target.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            write_whole(target / name, content(name, step, file_size(name, size)))
            pause(name)
        previous = folder / f"step-{step - 1}"
        for name in NAMES:
            (previous / name).unlink(missing_ok=True)
        if previous.exists():
            previous.rmdir()
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        data = content(name, step, file_size(name, size))
        if layout == "aside":
            aside = folder / f"{name}.tmp"
            write_whole(aside, data)
            os.replace(aside, folder / name)
        else:
            write_whole(folder / name, data)
        pause(name)


def pause(name: str) -> None:
    if pause_between_files and name == NAMES[0]:
        time.sleep(pause_between_files)


def commit_now() -> None:
    marker = Path(commit_file)
    marker.touch()
    deadline = time.monotonic() + 60
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


if os.environ.get("IGNORE_SIGTERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_sigterm)
state = read_set(folder, layout, size)
log(journal, event="start", resumed=state.step, intact=state.intact, detail=state.detail)
if not state.intact:
    print(f"checkpoint_sets: torn checkpoint restored: {state.detail}", flush=True)
    sys.exit(3)
step = (state.step or 0) + 1
while step <= steps:
    write_set(step)
    log(journal, event="complete", step=step)
    if use_commit_file:
        commit_now()
    if step == fail_after_step:
        log(journal, event="fail", step=step)
        sys.exit(1)
    if terminated:
        log(journal, event="sigterm", step=step)
        sys.exit(143)
    time.sleep(step_s)
    step += 1
