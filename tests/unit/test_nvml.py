"""The NVML snapshot: which GPUs CUDA_VISIBLE_DEVICES selects, what they hold, and clear no-GPU results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import nvml
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.nvml import NvmlUnavailable, RecordedNvml, read_snapshot

CARDS = Path(__file__).parent / "data" / "gpus"
GiB = 1024**3
MiB = 1024**2


def recorded(name: str) -> RecordedNvml:
    return RecordedNvml.from_file(CARDS / f"{name}.json")


def test_every_recorded_card_is_consistent():
    """Each card file adds up: free = total - reserved - used, and processes fit in used."""
    files = sorted(CARDS.glob("*.json"))
    assert len(files) >= 6
    for path in files:
        card = json.loads(path.read_text())
        assert card["card"] and card["source"], path.name
        for device in card["devices"]:
            for holder in (device, *device.get("mig_devices", [])):
                mem = holder["memory"]
                assert mem["free"] == mem["total"] - mem["reserved"] - mem["used"], path.name
                held = sum(p["used"] for p in holder.get("processes", []) if p.get("used") is not None)
                assert held <= mem["used"], path.name


def test_empty_h100_reads_as_one_idle_gpu():
    snap = read_snapshot({}, api=recorded("h100_80gb_empty"))
    assert snap.available and snap.error is None
    (gpu,) = snap.gpus
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid.startswith("GPU-")
    assert gpu.total_bytes == 81559 * MiB
    assert round(gpu.cuda_total_bytes / GiB, 2) == 79.19  # the total vLLM prints for this card
    assert gpu.free_bytes == gpu.total_bytes - gpu.reserved_bytes - gpu.used_bytes
    assert gpu.processes == []
    assert not gpu.is_mig
    assert snap.driver_version == "550.54.15"


def test_shared_card_lists_the_process_holding_memory():
    snap = read_snapshot({}, api=recorded("a100_40gb_shared"))
    (gpu,) = snap.gpus
    (proc,) = gpu.processes
    assert (proc.pid, proc.name, proc.used_bytes) == (28113, "python3", 30 * GiB)
    assert round(gpu.free_bytes / GiB, 2) == 9.39
    assert "python3 (pid 28113, 30.00 GiB)" in gpu.holders()


def test_desktop_processes_are_listed_largest_first():
    snap = read_snapshot({}, api=recorded("rtx5060_8gb_desktop"))
    (gpu,) = snap.gpus
    assert [p.name for p in gpu.processes] == ["Xorg", "gnome-shell", "firefox"]
    assert gpu.holders().split(",")[0].startswith("Xorg")
    assert round(gpu.free_bytes / GiB, 2) == 6.77 and round(gpu.cuda_total_bytes / GiB, 2) == 7.96


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("1,0", ["GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90", "GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46"]),
        ("1", ["GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90"]),
        ("GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90", ["GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90"]),
        ("GPU-a7e4,GPU-c19b", ["GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46", "GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90"]),
        ("0,-1,1", ["GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46"]),  # CUDA stops at the first invalid entry
        (" 1 , 0 ", ["GPU-c19b3e5d-82f4-4a60-9e1b-7d5c2a8f3e90", "GPU-a7e4f0d3-61c2-4e89-b5a0-9d3f7c2e1b46"]),
    ],
)
def test_visible_devices_choose_and_order_the_gpus(visible, expected):
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": visible}, api=recorded("l4_x2_one_busy"))
    assert snap.error is None
    assert [gpu.uuid for gpu in snap.gpus] == expected
    assert snap.visible_devices == visible


def test_unset_visible_devices_shows_every_gpu_in_nvml_order():
    snap = read_snapshot({}, api=recorded("l4_x2_one_busy"))
    assert [gpu.index for gpu in snap.gpus] == [0, 1]
    assert snap.gpus[1].processes[0].name == "vllm"
    assert snap.visible_devices is None


@pytest.mark.parametrize("visible", ["", "-1", ",0"])
def test_visible_devices_that_hide_everything_say_so(visible):
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": visible}, api=recorded("l4_x2_one_busy"))
    assert not snap.available and snap.gpus == []
    assert snap.error.startswith("no GPU visible")
    assert "CUDA_VISIBLE_DEVICES" in snap.error
    assert not snap.fatal


@pytest.mark.parametrize("visible", ["2", "GPU-ffff", "GPU-", "MIG-0000"])
def test_an_entry_matching_no_gpu_is_refused_with_what_nvml_sees(visible):
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": visible}, api=recorded("l4_x2_one_busy"))
    assert snap.fatal and snap.gpus == []
    assert repr(visible) in snap.error
    assert "0=GPU-a7e4f0d3" in snap.error and "1=GPU-c19b3e5d" in snap.error


def test_mig_device_by_uuid_is_read_from_its_own_memory():
    mig = "MIG-8e2f6a3b-7c1d-5e9f-a0b1-2c3d4e5f6a7b"
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": mig}, api=recorded("a100_80gb_mig"))
    assert snap.error is None
    (gpu,) = snap.gpus
    assert gpu.is_mig and gpu.uuid == mig and gpu.index == 0
    assert gpu.total_bytes == 40192 * MiB
    assert gpu.processes[0].pid == 7321
    assert gpu.label().startswith("MIG device 0")


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "GPU-9b2e4f6a"}])
def test_a_mig_card_addressed_as_a_whole_is_refused_with_what_to_do(env):
    snap = read_snapshot(env, api=recorded("a100_80gb_mig"))
    assert snap.fatal and not snap.available
    assert "MIG enabled" in snap.error
    assert "MIG device UUID" in snap.error and "nvidia-smi -L" in snap.error


def test_missing_driver_is_a_sentence_not_a_traceback():
    snap = read_snapshot({}, api=RecordedNvml({"init_error": "NVIDIA driver not found (libnvidia-ml could not be loaded)"}))
    assert snap.error == "no GPU visible: NVIDIA driver not found (libnvidia-ml could not be loaded)"
    assert snap.gpus == [] and not snap.fatal


def test_a_driver_with_no_gpu_says_so():
    snap = read_snapshot({}, api=RecordedNvml({"driver_version": "550.54.15", "devices": []}))
    assert snap.error == "no GPU visible: the NVIDIA driver reports no GPU"


class _Breaks(RecordedNvml):
    def memory(self, handle):
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")


def test_an_nvml_failure_mid_read_is_reported_and_nvml_is_shut_down():
    calls = []

    class Tracking(_Breaks):
        def shutdown(self):
            calls.append("shutdown")

    snap = read_snapshot({}, api=Tracking(json.loads((CARDS / "l4_24gb_empty.json").read_text())))
    assert snap.error.startswith("no GPU visible: NVML failed") and "GPU_IS_LOST" in snap.error
    assert calls == ["shutdown"]


def test_process_names_fall_back_when_nvml_cannot_tell(monkeypatch):
    record = json.loads((CARDS / "a100_40gb_shared.json").read_text())
    del record["devices"][0]["processes"][0]["name"]
    snap = read_snapshot({}, api=RecordedNvml(record))
    assert snap.gpus[0].processes[0].name  # psutil's name for that pid, or "?" when there is none
    assert snap.gpus[0].processes[0].used_bytes == 30 * GiB


def test_mixed_gpus_by_index_warn_about_cuda_device_order():
    record = json.loads((CARDS / "l4_x2_one_busy.json").read_text())
    record["devices"][1]["name"] = "NVIDIA A10"
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": "0,1"}, api=RecordedNvml(record))
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in note for note in snap.notes)
    snap = read_snapshot({"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, api=RecordedNvml(record))
    assert snap.notes == []


def test_the_real_nvml_on_this_machine_gives_gpus_or_a_clear_no_gpu_result():
    """The real pynvml edge: without a driver (or without nvidia-ml-py) the answer is a sentence."""
    snap = read_snapshot({})
    if snap.available:
        assert all(gpu.total_bytes > 0 and gpu.uuid for gpu in snap.gpus)
    else:
        assert snap.error.startswith("no GPU visible: ")
        assert snap.gpus == []


def test_pynvml_is_imported_only_when_a_snapshot_is_taken():
    code = (
        "import sys; import vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.vram as v; "
        "print('pynvml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_nvidia_ml_py_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(NvmlUnavailable, match=r"nvidia-ml-py is not installed .*vllm-paddle-ocr\[gpu\]"):
        nvml.PynvmlApi().init()
    snap = read_snapshot({})
    assert snap.error.startswith("no GPU visible: nvidia-ml-py is not installed")
