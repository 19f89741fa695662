"""Run a function in a forked child process and get its result back: its NumPy work off this process's GIL.

A thread that runs seconds of NumPy beside the request threads takes the GIL from them: a request that
gives it up (a NumPy call, a socket write) can wait up to the switch interval (5 ms) to get it back, and
a compaction's many short array statements hold it between their copies. Measured at scale
1.0 (`python -m bench.live_state compaction`, 2026-12-01): a day's compaction built in a thread took
request p99 from 1.9 to 13.5 ms and held one request 0.28 s; built in a child, p99 2.3-2.7 ms and the
longest 27-30 ms (mostly the fork). A forked child shares the parent's arrays copy-on-write
(nothing is copied to start it), computes with a GIL of its own, and sends the result through a pipe:
the parent's thread reads it into fresh arrays with `readinto`, which releases the GIL for each read.

The result is pickled (protocol 5) with its arrays' buffers out of band, so neither side copies them
through a bytes object. The child only runs `fn` and writes: it never logs, never touches a lock another
thread of the parent might hold, collects no garbage, stops at SIGTERM or SIGINT, and leaves with
`os._exit` (no cleanup of the parent's objects, whose sockets it shares). Linux only (`available()`);
callers fall back to a thread elsewhere.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_LEN = struct.Struct("<q")
_OK, _FAILED = b"R", b"E"
_PIPE_BYTES = 1 << 20  # a larger pipe: fewer reads (each takes the GIL back) for hundreds of MB


class ChildFailed(RuntimeError):
    """The child raised (its traceback is the message) or died before sending its result."""


def available() -> bool:
    # fork of a threaded process is safe for what the child does here on Linux (glibc resets malloc's
    # locks); macOS's system libraries are not fork-safe with threads, Windows has no fork
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def call_in_child(fn: Callable[[], T], timeout: float | None = None) -> T:
    """`fn()` computed in a forked child; its result (anything picklable: arrays, dataclasses of arrays)
    returned here. Raises `ChildFailed` if it raised there, the child died, or it ran longer than `timeout`
    seconds (then it is killed: a child stuck on a lock it inherited must not hold its caller forever);
    `OSError` if it could not fork."""
    read_fd, write_fd = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # the default pipe size works, with more reads
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child
        code = 0
        try:
            # no collection of the parent's garbage here: a finalizer could close a database connection
            # whose socket the parent still uses
            gc.disable()
            with suppress(ValueError, OSError):  # the server's handlers are the parent's: stop at a signal
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.close(read_fd)
            with io.FileIO(write_fd, "wb") as out:
                try:
                    result = fn()
                except BaseException:
                    out.write(_FAILED)
                    _write_all(out, traceback.format_exc().encode())
                    code = 1
                else:
                    _send(out, result)
        except BaseException:
            code = 2  # the parent is gone (broken pipe) or the result does not pickle
        finally:
            os._exit(code)
    os.close(write_fd)
    killed = threading.Event()

    def kill() -> None:  # the child is not reaped before the timer is cancelled: its pid is still its own
        killed.set()
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        with io.FileIO(read_fd, "rb") as inp:  # closed before the wait: a child still writing gets EPIPE
            result = _receive(inp)
    except ChildFailed as exc:
        if timer is not None:
            timer.cancel()
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        why = f"; killed after {timeout} s" if killed.is_set() else ""
        raise ChildFailed(f"{exc} (exit code {code}{why})") from None
    except BaseException:  # this side failed (out of memory, interrupted): the child's result is not wanted
        if timer is not None:
            timer.cancel()
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # not reaped yet: still its pid
        os.waitpid(pid, 0)  # no zombie
        raise
    if timer is not None:
        timer.cancel()
    os.waitpid(pid, 0)
    return result


def _write_all(out: io.FileIO, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        view = view[out.write(view):]


def _send(out: io.FileIO, result: object) -> None:
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    out.write(_OK)
    _write_all(out, _LEN.pack(len(meta)) + meta + _LEN.pack(len(buffers)))
    for buf in buffers:
        raw = buf.raw()
        _write_all(out, _LEN.pack(raw.nbytes))
        _write_all(out, raw)


def _read_into(inp: io.FileIO, view: memoryview) -> None:
    while len(view):
        n = inp.readinto(view)  # the GIL is released while the read waits and copies
        if not n:
            raise ChildFailed("the child process ended before sending its whole result")
        view = view[n:]


def _read(inp: io.FileIO, n: int) -> memoryview:
    # np.empty, not bytearray: no zero fill, so the pages are first touched by the read, off the GIL
    buf = np.empty(n, np.uint8)
    _read_into(inp, memoryview(buf))
    return memoryview(buf)


def _receive(inp: io.FileIO) -> object:
    head = inp.read(1)
    if head == _FAILED:
        raise ChildFailed("the child process raised:\n" + inp.readall().decode(errors="replace"))
    if head != _OK:
        raise ChildFailed("the child process ended without a result")
    meta = _read(inp, _LEN.unpack(_read(inp, _LEN.size))[0])
    count = _LEN.unpack(_read(inp, _LEN.size))[0]
    buffers = [_read(inp, _LEN.unpack(_read(inp, _LEN.size))[0]) for _ in range(count)]
    return pickle.loads(meta, buffers=buffers)
