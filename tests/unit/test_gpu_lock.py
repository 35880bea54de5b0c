"""The per-GPU start lock: a second instance on the same GPU waits its turn, with a timeout and a message."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import gpu_lock
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.gpu_lock import GpuLockTimeout, gpu_start_lock

GPU_A = "GPU-5c3b9e2a-7f41-4d0e-9a63-2f8e1b6d4c70"
GPU_B = "GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46"


class FakeClock:
    """A clock the lock's waiting loop advances instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.05)


def test_an_uncontended_lock_is_taken_at_once_and_records_its_holder(tmp_path):
    with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=tmp_path) as held:
        assert held.uuids == [GPU_A] and held.directory == tmp_path
        assert held.waited_s < 1
        text = (tmp_path / f"{GPU_A}.lock").read_text()
        assert text.startswith(f"pid {os.getpid()} since ")


def test_a_second_instance_on_the_same_gpu_times_out_with_what_to_do(tmp_path, caplog):
    clock = FakeClock()
    with gpu_start_lock([GPU_A], timeout_s=60, lock_dir=tmp_path):
        with caplog.at_level(logging.WARNING, logger=gpu_lock.__name__):
            with pytest.raises(GpuLockTimeout) as caught:
                with gpu_start_lock([GPU_A], timeout_s=5, lock_dir=tmp_path, clock=clock, sleep=clock.sleep):
                    pytest.fail("the lock was taken twice")
    message = str(caught.value)
    assert GPU_A in message and f"pid {os.getpid()}" in message
    assert "--gpu-lock-timeout" in message and str(tmp_path) in message
    assert 5 <= clock.now < 6  # gave up at the timeout, not before
    waiting = [r.getMessage() for r in caplog.records]
    assert waiting and "waiting for another vllm_paddle_ocr instance" in waiting[0] and GPU_A in waiting[0]


def test_a_lock_on_another_gpu_does_not_wait(tmp_path):
    with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=tmp_path):
        with gpu_start_lock([GPU_B], timeout_s=0.5, lock_dir=tmp_path) as held:
            assert held.uuids == [GPU_B]


def test_the_lock_is_free_again_after_release_and_after_an_error(tmp_path):
    with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=tmp_path):
        pass
    with pytest.raises(RuntimeError):
        with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=tmp_path):
            raise RuntimeError("vLLM failed to start")
    with gpu_start_lock([GPU_A], timeout_s=0.5, lock_dir=tmp_path) as held:
        assert held.uuids == [GPU_A]


def test_locks_are_taken_in_sorted_order_and_all_released_on_timeout(tmp_path):
    clock = FakeClock()
    with gpu_start_lock([GPU_B], timeout_s=1, lock_dir=tmp_path):
        with pytest.raises(GpuLockTimeout, match=GPU_B):
            # Asked as [B, A]: A (first in order) is taken, then B blocks until the timeout.
            with gpu_start_lock([GPU_B, GPU_A], timeout_s=2, lock_dir=tmp_path, clock=clock, sleep=clock.sleep):
                pass
    # A was released when waiting for B gave up.
    with gpu_start_lock([GPU_A], timeout_s=0.5, lock_dir=tmp_path):
        pass


def test_no_gpus_means_no_lock(tmp_path):
    with gpu_start_lock([], timeout_s=0, lock_dir=tmp_path) as held:
        assert held.uuids == []
    with gpu_start_lock([None], timeout_s=0, lock_dir=tmp_path) as held:  # a --gpu-total card has no UUID
        assert held.uuids == []
    assert list(tmp_path.iterdir()) == []


def test_the_lock_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_lock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    assert gpu_lock.default_lock_dir() == tmp_path / "locks"
    with gpu_start_lock([GPU_A], timeout_s=1):
        assert (tmp_path / "locks" / f"{GPU_A}.lock").exists()
    monkeypatch.delenv(gpu_lock.LOCK_DIR_ENV)
    assert gpu_lock.default_lock_dir().name == "vllm_paddle_ocr-gpu-locks"


def test_an_unusable_lock_dir_says_what_to_do(tmp_path):
    not_a_dir = tmp_path / "locks"
    not_a_dir.write_text("")
    with pytest.raises(gpu_lock.GpuLockError, match=f"{gpu_lock.LOCK_DIR_ENV} to a directory") as caught:
        with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=not_a_dir):
            pytest.fail("locked inside a file")
    assert str(not_a_dir) in str(caught.value)


def test_a_created_lock_dir_is_shared_by_every_user(tmp_path):
    directory = tmp_path / "shared"
    with gpu_start_lock([GPU_A], timeout_s=1, lock_dir=directory):
        pass
    assert directory.stat().st_mode & 0o1777 == 0o1777
    assert (directory / f"{GPU_A}.lock").stat().st_mode & 0o666 == 0o666


def _hold_then_release(lock_dir: str, started, release) -> None:
    with gpu_start_lock([GPU_A], timeout_s=5, lock_dir=Path(lock_dir)):
        started.set()
        release.wait(10)


def test_a_second_process_waits_its_turn_then_starts(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_then_release, args=(str(tmp_path), started, release))
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(GpuLockTimeout):
            with gpu_start_lock([GPU_A], timeout_s=0.3, lock_dir=tmp_path):
                pass
        release.set()
        with gpu_start_lock([GPU_A], timeout_s=10, lock_dir=tmp_path) as held:
            assert held.uuids == [GPU_A]
    finally:
        release.set()
        holder.join(10)


def test_a_holder_that_dies_leaves_no_stale_lock(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_then_release, args=(str(tmp_path), started, release))
    holder.start()
    assert started.wait(10)
    holder.kill()
    holder.join(10)
    with gpu_start_lock([GPU_A], timeout_s=5, lock_dir=tmp_path) as held:  # a stale lock would time out
        assert held.uuids == [GPU_A]
