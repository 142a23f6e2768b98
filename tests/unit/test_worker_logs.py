"""The pieces of a job's logs: where they go, how they are cut and numbered, what a reader
makes of a listing, and the capture threads' pass-through."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kelpie.schemas import JobOut
from kelpie.storage import RemoteObject
from kelpie.worker.capture import OutputCapture
from kelpie.worker.logs import (
    LogSpool,
    attempt_listing,
    logs_location,
    parse_piece,
    piece_name,
    stderr_tail,
)
from tests.support.waiting import wait_for

BASE = {
    "id": "job-1",
    "user_id": "u",
    "status": "running",
    "created": "2026-01-01T00:00:00.000Z",
    "command": "true",
    "container_group_id": "g",
}


def entry(bucket: str, prefix: str) -> dict[str, str]:
    return {"bucket": bucket, "prefix": prefix, "local_path": "/x", "direction": "upload"}


def job(**fields: object) -> JobOut:
    return JobOut.model_validate({**BASE, **fields})


@pytest.mark.parametrize(
    ("fields", "bucket", "prefix"),
    [
        ({"output_bucket": "b", "output_prefix": "out/"}, "b", "out.kelpie-logs/job-1/"),
        ({"output_bucket": "b", "output_prefix": "runs/r1"}, "b", "runs/r1.kelpie-logs/job-1/"),
        ({"output_bucket": "b", "output_prefix": ""}, "b", ".kelpie-logs/job-1/"),
        (
            {"checkpoint_bucket": "c", "checkpoint_prefix": "ck/", "input_bucket": "i"},
            "c",
            "ck.kelpie-logs/job-1/",
        ),
        (
            {
                "output_bucket": "o",
                "output_prefix": "out/",
                "checkpoint_bucket": "c",
                "checkpoint_prefix": "ck/",
            },
            "o",
            "out.kelpie-logs/job-1/",
        ),
        (
            {
                "sync": {
                    "during": [entry("c", "ck/")],
                    "after": [entry("o", "res/")],
                }
            },
            "o",
            "res.kelpie-logs/job-1/",
        ),
        (
            {"sync": {"during": [entry("c", "ck/")]}},
            "c",
            "ck.kelpie-logs/job-1/",
        ),
    ],
)
def test_logs_go_next_to_the_first_place_the_job_writes(
    fields: dict[str, object], bucket: str, prefix: str
) -> None:
    location = logs_location(job(**fields))
    assert location is not None
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert location.attempt_prefix(12) == f"{prefix}attempt-12/"


def test_a_job_that_writes_nowhere_keeps_no_logs() -> None:
    assert logs_location(job(input_bucket="i", input_prefix="in/")) is None


def test_logs_prefix_of_the_job_wins() -> None:
    chosen = JobOut.model_validate(
        {**BASE, "output_bucket": "o", "output_prefix": "out/", "logs_prefix": "s3://L/logs/x/"}
    )
    location = logs_location(chosen)
    assert location is not None
    assert (location.bucket, location.prefix) == ("L", "logs/x/job-1/")
    unset = JobOut.model_validate({**BASE, "output_bucket": "o", "output_prefix": "o"})
    assert logs_location(unset) == logs_location(job(output_bucket="o", output_prefix="o"))


def test_piece_names_sort_in_number_order_and_parse_back() -> None:
    names = [piece_name(n, s) for n in (1, 2, 10, 100_000_000) for s in ("stdout", "stderr")]
    assert [parse_piece(n) for n in names] == [
        (n, s) for n in (1, 2, 10, 100_000_000) for s in ("stdout", "stderr")
    ]
    assert sorted(names[:6]) == sorted(names[:6], key=lambda n: parse_piece(n) or (0, ""))
    assert parse_piece("end.json") is None
    assert parse_piece("0001.stdout") is None


def test_spool_cuts_numbered_pieces_holding_each_stream_in_order(tmp_path: Path) -> None:
    cuts: list[int] = []
    spool = LogSpool(tmp_path, piece_bytes=10, on_piece=lambda: cuts.append(1))
    spool.write("stdout", b"a1\n")
    spool.write("stderr", b"e1\n")
    spool.cut()  # the timer: both streams, stdout first
    spool.write("stdout", b"a2\na3\na4\n")  # 9 bytes: waits
    spool.write("stdout", b"a5\n")  # 12 bytes: cut at once
    assert cuts == [1]
    spool.write("stderr", b"e2\n")
    spool.cut()
    pieces = spool.take_ready()
    assert [(p.number, p.stream, p.read()) for p in pieces] == [
        (1, "stdout", b"a1\n"),
        (2, "stderr", b"e1\n"),
        (3, "stdout", b"a2\na3\na4\na5\n"),
        (4, "stderr", b"e2\n"),
    ]
    for piece in pieces:
        spool.shipped(piece)
    spool.cut()
    assert spool.take_ready() == []  # nothing new, no empty piece
    assert spool.summary() == {
        "pieces": 4,
        "bytes": {"stdout": 15, "stderr": 6},
        "lost_bytes": {"stdout": 0, "stderr": 0},
    }


def test_spool_over_its_cap_drops_and_says_so_in_the_stream(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, piece_bytes=1000, cap_bytes=8)
    spool.write("stdout", b"12345\n")
    spool.write("stdout", b"dropped\n")  # 14 bytes would wait: over the cap
    spool.cut()
    (first,) = spool.take_ready()
    spool.shipped(first)
    spool.write("stdout", b"ok\n")
    spool.cut()
    (second,) = spool.take_ready()
    text = second.read()
    assert text.endswith(b"ok\n")
    assert b"8 bytes of stdout are missing here" in text
    assert spool.summary()["lost_bytes"] == {"stdout": 8, "stderr": 0}


def test_a_piece_that_cannot_be_uploaded_is_noted_in_the_next(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path)
    spool.write("stderr", b"lost line\n")
    spool.cut()
    (piece,) = spool.take_ready()
    spool.give_up(piece, "upload failed (bucket unreachable)")
    spool.write("stderr", b"next\n")
    spool.cut()
    (after,) = spool.take_ready()
    assert after.number == 2
    data = after.read()
    assert b"10 bytes of stderr are missing here: upload failed" in data
    assert data.endswith(b"next\n")


def test_past_its_memory_a_stream_waits_on_disk_and_keeps_its_order(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, piece_bytes=14, memory_bytes=20)
    lines = [f"line {i:02d}\n".encode() for i in range(12)]  # 8 bytes each: a piece per 2
    for line in lines:
        spool.write("stdout", line)  # never waits for the disk: up to 40 bytes in memory
    spool.cut()
    # the spill thread moves the newest waiting pieces to disk until 20 bytes are left
    wait_for(lambda: spool.in_memory("stdout") <= 20, "the spill to disk")
    pieces = spool.take_ready()
    assert [p.number for p in pieces] == list(range(1, len(pieces) + 1))
    assert b"".join(p.read() for p in pieces) == b"".join(lines)
    on_disk = [p.path for p in pieces if p.path is not None]
    assert on_disk and all(path.exists() for path in on_disk)
    assert pieces[0].path is None  # the oldest, next to go up, stays in memory
    for piece in pieces:
        spool.shipped(piece)
    assert not any(path.exists() for path in on_disk)
    assert spool.in_memory("stdout") == 0
    spool.write("stdout", b"back\n")
    spool.cut()
    (after,) = spool.take_ready()
    assert after.path is None and after.read() == b"back\n"
    spool.close()


def test_without_a_bucket_only_the_end_of_each_stream_is_kept() -> None:
    spool = LogSpool(None)
    for i in range(2000):
        spool.write("stderr", f"line {i}\n".encode())
    spool.cut()
    assert spool.take_ready() == []
    tail = spool.tail("stderr")
    assert len(tail) <= 4096 and tail.endswith(b"line 1999\n")


def test_stderr_tail_starts_at_a_line_and_keeps_the_last_2_kb() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(1000))
    tail = stderr_tail(data)
    assert tail.endswith("line 999")
    assert tail.startswith("line ") and len(tail.encode()) <= 2048
    assert stderr_tail(b"short\n") == "short"
    assert stderr_tail(b"\xff\xfebad bytes") == "\ufffd\ufffdbad bytes"
    assert stderr_tail(b"") == ""


def test_listing_gives_pieces_in_number_order_and_sees_the_end() -> None:
    prefix = "out.kelpie-logs/j/attempt-3/"
    objects = [
        RemoteObject(prefix + "00000010.stdout", 1),
        RemoteObject(prefix + "00000002.stderr", 1),
        RemoteObject(prefix + "00000001.stdout", 1),
        RemoteObject(prefix + "unrelated.txt", 1),
        RemoteObject("out.kelpie-logs/j/attempt-30/00000001.stdout", 1),
    ]
    listing = attempt_listing(objects, prefix)
    assert [(n, s) for n, s, _ in listing.pieces] == [(1, "stdout"), (2, "stderr"), (10, "stdout")]
    assert not listing.end
    assert attempt_listing([*objects, RemoteObject(prefix + "end.json", 2)], prefix).end


def test_capture_passes_each_stream_through_whole_and_in_order() -> None:
    captured: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    lock = threading.Lock()

    def sink(stream: str, data: bytes) -> None:
        with lock:
            captured[stream] += data

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    received = {out_r: bytearray(), err_r: bytearray()}

    def drain(fd: int) -> None:
        while chunk := os.read(fd, 65536):
            received[fd] += chunk

    drains = [threading.Thread(target=drain, args=(fd,)) for fd in (out_r, err_r)]
    for thread in drains:
        thread.start()
    capture = OutputCapture(sink, targets=(out_w, err_w))
    job_out, job_err = capture.child_fds
    # the "job": its own copies of the write ends, as a child process has them
    job_out, job_err = os.dup(job_out), os.dup(job_err)
    capture.start()
    expected_out = b"".join(f"out {i}\n".encode() for i in range(20000))
    expected_err = b"".join(f"err {i}\n".encode() for i in range(20000))
    os.write(job_err, b"")
    writer = threading.Thread(target=lambda: _write_all(job_out, expected_out))
    writer.start()
    _write_all(job_err, expected_err)
    writer.join()
    os.close(job_out)
    os.close(job_err)
    assert capture.wait(10)
    os.close(out_w)
    os.close(err_w)
    for thread in drains:
        thread.join(10)
    assert bytes(received[out_r]) == expected_out == bytes(captured["stdout"])
    assert bytes(received[err_r]) == expected_err == bytes(captured["stderr"])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:4096]) :]
