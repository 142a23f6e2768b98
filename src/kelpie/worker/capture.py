"""The job's stdout and stderr, passed through to the worker's own and captured on the way.

Each stream is a pipe read by a thread of its own: every chunk read is first written, whole
and at once, to the worker's stream of the same name (the container's output, as if the job
wrote there itself), then handed to the sink. Reads take up to a megabyte at a time from a
pipe enlarged to a megabyte, and a reader that caught up naps 5 ms before it reads again,
so a burst or a chatty job costs a few hundred system calls, not one per line;
a reader never waits on anything but the job and the container's output, so neither the
bucket nor the event loop can slow the job.

The pipes change nothing else: the job's exit code and signals are the process's own
(`runner`), and each stream keeps its order because one thread carries it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("kelpie.worker")

STREAMS = ("stdout", "stderr")
READ_BYTES = 1 << 20
PIPE_BYTES = 1 << 20
GATHER_S = 0.005
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

Sink = Callable[[str, bytes], None]


class OutputCapture:
    """Two pipes for a job's stdout and stderr, and the threads that pump them."""

    def __init__(self, sink: Sink, targets: tuple[int, int] = (1, 2)) -> None:
        self._sink = sink
        self._targets = targets
        self._read_ends: list[int] = []
        self._write_ends: list[int] = []
        self._threads: list[threading.Thread] = []
        try:
            for _ in STREAMS:
                read_end, write_end = os.pipe()
                self._read_ends.append(read_end)
                self._write_ends.append(write_end)
                with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size
                    fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_BYTES)
        except BaseException:
            self.close()
            raise

    @property
    def child_fds(self) -> tuple[int, int]:
        """The write ends, for the job's stdout and stderr."""
        return self._write_ends[0], self._write_ends[1]

    def start(self) -> None:
        """The job has its copies of the write ends: close ours (so the readers see the end
        when the job's last process closes them) and start pumping."""
        self._close_write_ends()
        for stream, read_end, target in zip(STREAMS, self._read_ends, self._targets, strict=True):
            thread = threading.Thread(
                target=self._pump,
                args=(stream, read_end, target),
                name=f"job-{stream}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._read_ends = []

    def wait(self, timeout: float) -> bool:
        """Wait until both streams reached their end (every process of the job closed them);
        False if one is still open after `timeout` (a process that escaped holds it)."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def close(self) -> None:
        """Close what was never handed to a thread (the job could not be started)."""
        self._close_write_ends()
        for fd in self._read_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read_ends = []

    def _close_write_ends(self) -> None:
        for fd in self._write_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._write_ends = []

    def _pump(self, stream: str, read_end: int, target: int) -> None:
        passing = True
        try:
            while True:
                data = os.read(read_end, READ_BYTES)
                if not data:
                    return
                if passing:
                    passing = _write_all(target, data)
                try:
                    self._sink(stream, data)
                except Exception:
                    logger.exception("job %s: capturing a chunk failed", stream)
                if len(data) < READ_BYTES:
                    # Caught up: let a busy job's next writes gather in the pipe for a few
                    # milliseconds, so a stream of small writes costs a read per nap, not
                    # per write. What was read is already through; a quiet job waits in
                    # read() as before, and a flood gets full reads with no nap.
                    time.sleep(GATHER_S)
        except OSError as exc:
            logger.error("job %s: reading the job's output failed: %s", stream, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(read_end)


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False once `fd` cannot take more (closed, broken)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        except OSError as exc:
            logger.warning("the container's output refused the job's output: %s", exc)
            return False
        view = view[written:]
    return True
