"""A function run in a forked child process (`app.child_process`): what compactions are built with."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from app import child_process
from app.child_process import ChildFailed, call_in_child

pytestmark = pytest.mark.skipif(not child_process.available(), reason="fork: Linux only")


@dataclass
class _Result:
    counts: np.ndarray
    rows: np.ndarray
    label: str


def test_the_childs_arrays_come_back_equal_and_writable():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 2**40, size=3_000_000)  # 24 MB: many times the pipe's size
    packed = np.zeros(1000, np.dtype([("ts", np.int64), ("post", np.int32), ("kind", np.int8)]))
    packed["ts"] = np.arange(1000)
    parent = os.getpid()

    def work() -> tuple[_Result, dict[str, object]]:
        assert os.getpid() != parent  # it does run elsewhere
        return (_Result(np.cumsum(big), big[::3], "done"),  # a strided view: sent in band, still equal
                {"packed": packed, "empty": np.empty((0, 4), np.float32), "pid": os.getpid()})

    result, extra = call_in_child(work)
    np.testing.assert_array_equal(result.counts, np.cumsum(big))
    np.testing.assert_array_equal(result.rows, big[::3])
    assert result.label == "done" and extra["pid"] != parent
    np.testing.assert_array_equal(extra["packed"], packed)
    assert extra["packed"].dtype == packed.dtype and extra["empty"].shape == (0, 4)
    result.counts[0] = -1  # the parent owns the arrays it received
    assert result.counts[0] == -1


def test_an_error_in_the_child_is_raised_here_with_its_traceback():
    def work() -> None:
        raise ValueError("no such cut: 17")

    with pytest.raises(ChildFailed, match=r"(?s)ValueError: no such cut: 17.*exit code 1"):
        call_in_child(work)


def test_a_child_that_dies_before_its_result_is_an_error_not_a_hang():
    with pytest.raises(ChildFailed, match="ended without a result.*exit code 3"):
        call_in_child(lambda: os._exit(3))



def test_a_result_cut_short_is_an_error(tmp_path):
    """What the parent reads when the child dies mid-result (killed, out of memory): an error naming it."""
    import io

    path = tmp_path / "stream"
    with io.FileIO(path, "wb") as out:
        child_process._send(out, {"counts": np.arange(100_000)})
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with io.FileIO(path, "rb") as inp, pytest.raises(ChildFailed, match="before sending its whole result"):
        child_process._receive(inp)
    path.write_bytes(whole)
    with io.FileIO(path, "rb") as inp:
        np.testing.assert_array_equal(child_process._receive(inp)["counts"], np.arange(100_000))


def test_a_child_that_runs_past_its_timeout_is_killed():
    """A child stuck (on a lock it inherited, say) must not hold its caller: killed, and an error."""
    import time

    with pytest.raises(ChildFailed, match=r"exit code -9; killed after 0.5 s"):
        call_in_child(lambda: time.sleep(60), timeout=0.5)  # without the kill: None after 60 s, and no error
    assert call_in_child(lambda: 7, timeout=30) == 7  # a child in time is not killed


@pytest.mark.parametrize("failure", [OSError(12, "Cannot allocate memory"),  # fork under a strict overcommit
                                     ChildFailed("the child process raised: ... (exit code -9; killed after 600 s)")])
def test_the_follower_builds_in_a_thread_when_the_child_cannot(failure):
    from app.follower import _Building

    class Job:
        built_here = False

        def build_in_child(self, timeout: float | None = None) -> None:
            assert timeout is not None  # the follower never waits on a child forever
            raise failure

        def build(self) -> None:
            self.built_here = True

    job = Job()
    building = _Building(job, in_child=True)
    building.thread.join(10)
    assert job.built_here and building.error is None and not building.in_child


def test_a_failure_on_this_side_kills_the_child_and_reaps_it(monkeypatch, tmp_path):
    """If reading the result fails here (out of memory, say), the child is killed, not waited for."""
    import time

    finished = tmp_path / "finished"

    def work() -> None:
        time.sleep(3)
        finished.touch()  # only a child left to run to its end gets here

    def broken(_inp):
        raise MemoryError("reading the result")

    monkeypatch.setattr(child_process, "_receive", broken)
    with pytest.raises(MemoryError):
        call_in_child(work)
    assert not finished.exists()
