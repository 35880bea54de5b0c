"""`serve` holds the per-GPU start lock from the budget until vLLM is ready, and budgets again under it."""

import asyncio
import fcntl

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import gpu_lock, supervisor


class Plan:
    def __init__(self, uuids):
        self.gpu_uuids = uuids


def lock_is_held(lock_dir, uuid) -> bool:
    path = next(lock_dir.glob(f"*{uuid}*"))
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PADDLE_OCR_LOCK_DIR", str(tmp_path))
    return tmp_path


def test_lock_held_until_ready_and_plan_read_again_under_it(lock_dir, monkeypatch):
    plans = []
    seen = {}

    def fake_plan_launch(pm, request):
        plans.append(len(plans))
        return Plan(["GPU-aaaa"])

    async def fake_run(plan, *, on_ready=None):
        seen["before_ready"] = lock_is_held(lock_dir, "GPU-aaaa")
        on_ready()
        seen["after_ready"] = lock_is_held(lock_dir, "GPU-aaaa")
        return 0

    monkeypatch.setattr(supervisor, "plan_launch", fake_plan_launch)
    monkeypatch.setattr(supervisor, "run", fake_run)
    request = type("R", (), {"gpu_lock_timeout_s": 5.0})()
    assert supervisor.serve(None, request) == 0
    assert plans == [0, 1]  # budgeted once to learn the GPUs, then again holding their lock
    assert seen == {"before_ready": True, "after_ready": False}


def test_a_second_instance_times_out_with_a_message(lock_dir, monkeypatch):
    monkeypatch.setattr(supervisor, "plan_launch", lambda pm, request: Plan(["GPU-bbbb"]))
    monkeypatch.setattr(supervisor, "run", lambda plan, on_ready=None: asyncio.sleep(0, result=0))
    request = type("R", (), {"gpu_lock_timeout_s": 0.3})()
    with gpu_lock.gpu_start_lock(["GPU-bbbb"], timeout_s=1.0):
        with pytest.raises(gpu_lock.GpuLockTimeout, match="GPU-bbbb.*--gpu-lock-timeout"):
            supervisor.serve(None, request)


def test_no_gpu_means_no_lock(lock_dir, monkeypatch):
    monkeypatch.setattr(supervisor, "plan_launch", lambda pm, request: Plan([]))
    monkeypatch.setattr(supervisor, "run", lambda plan, on_ready=None: asyncio.sleep(0, result=0))
    assert supervisor.serve(None, type("R", (), {"gpu_lock_timeout_s": 0.1})()) == 0
    assert list(lock_dir.iterdir()) == []


@pytest.mark.parametrize(("device", "overlap"), [("cuda", False), ("cpu", True)])
def test_a_layout_model_on_the_gpu_loads_after_vllm_is_ready(monkeypatch, device, overlap):
    """vLLM measures free memory while it starts: a layout model loading on its GPU meanwhile would be counted as vLLM's."""
    import threading
    import time
    from types import SimpleNamespace

    events = []
    started = threading.Event()

    async def wait_ready(self):
        events.append("vllm starting")
        await asyncio.to_thread(started.wait, 0.5)  # on the CPU the layout model starts meanwhile
        events.append("vllm ready")

    def load(plan):
        started.set()
        events.append("layout loading")
        time.sleep(0.05)
        return "detector"

    monkeypatch.setattr(supervisor.Supervisor, "wait_ready", wait_ready)
    monkeypatch.setattr(supervisor, "_load_detector", load)
    plan = SimpleNamespace(proxy=SimpleNamespace(layout_dir="/layout", layout_device=device))
    assert asyncio.run(supervisor.Supervisor(plan).start_up()) == "detector"
    assert (events.index("layout loading") < events.index("vllm ready")) is overlap
