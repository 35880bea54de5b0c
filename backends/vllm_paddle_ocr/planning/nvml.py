"""What the GPUs this process will see hold right now, read from NVML (the only module that imports pynvml).

Every NVML call goes through one small object (`NvmlApi`): `PynvmlApi` talks to the driver through
nvidia-ml-py, `RecordedNvml` replays a recorded card snapshot (JSON), which is how tests and
`bench/vram_budget.py` drive the budget without a GPU. Failures become a `GpuSnapshot.error` sentence,
never a traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from pydantic import BaseModel, Field

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError
from vllm_paddle_ocr.plugin.records import GpuProcess

from ..sizes import format_bytes


class GpuInfo(BaseModel):
    """One GPU this process will see, in CUDA_VISIBLE_DEVICES order."""

    index: int  # NVML index of the card (what nvidia-smi shows); a MIG device carries its parent's
    uuid: str
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    reserved_bytes: int = 0  # held by driver/firmware; CUDA (and so vLLM) never sees it as total
    processes: list[GpuProcess] = Field(default_factory=list)
    is_mig: bool = False

    @property
    def cuda_total_bytes(self) -> int:
        """The total CUDA reports (cudaMemGetInfo), the base vLLM multiplies its fraction with."""
        return max(self.total_bytes - self.reserved_bytes, 0)

    def label(self) -> str:
        """How messages name this GPU: index, model and UUID."""
        return gpu_label(self.index, self.name, self.uuid, is_mig=self.is_mig)

    def holders(self) -> str:
        """The processes holding memory, largest first, as one readable phrase."""
        return describe_holders(self.processes)


def gpu_label(index: int, name: str, uuid: str, *, is_mig: bool = False) -> str:
    """How messages name a GPU: index, model and UUID."""
    kind = "MIG device" if is_mig else "GPU"
    return f"{kind} {index} ({name}, {uuid})"


def describe_holders(processes: list[GpuProcess]) -> str:
    """The processes holding memory on a GPU, largest first, as one readable phrase."""
    if not processes:
        return "no process listed by NVML"
    ordered = sorted(processes, key=lambda p: -(p.used_bytes or 0))
    return ", ".join(
        f"{p.name} (pid {p.pid}, {format_bytes(p.used_bytes) if p.used_bytes is not None else 'size unknown'})"
        for p in ordered
    )


class GpuSnapshot(BaseModel):
    """The visible GPUs at one moment, or why there are none."""

    gpus: list[GpuInfo] = Field(default_factory=list)
    error: str | None = None
    # True when GPUs exist but cannot be used as configured (a MIG card addressed as a whole, a
    # CUDA_VISIBLE_DEVICES entry that matches no GPU): starting vLLM would fail, so planning refuses.
    fatal: bool = False
    driver_version: str | None = None
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as read, None when unset
    notes: list[str] = Field(default_factory=list)

    @property
    def available(self) -> bool:
        """Whether at least one GPU is visible and usable."""
        return bool(self.gpus) and self.error is None


# ----------------------------------------------------------------------------------------------------
# The boundary: the handful of NVML calls this package makes.


class NvmlUnavailable(VllmPaddleOcrError):
    """NVML cannot be used: no library, no driver, or the driver refused to initialise."""


@dataclass(frozen=True)
class MemoryInfo:
    """NVML's memory figures for one device (v2 layout: used excludes reserved)."""

    total: int
    free: int
    used: int
    reserved: int = 0


class NvmlApi(Protocol):
    """The NVML calls a snapshot needs; replaced by `RecordedNvml` in tests."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str | None: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def uuid(self, handle: Any) -> str: ...
    def name(self, handle: Any) -> str: ...
    def memory(self, handle: Any) -> MemoryInfo: ...
    def processes(self, handle: Any) -> list[tuple[int, int | None]]: ...
    def process_name(self, pid: int) -> str | None: ...
    def mig_enabled(self, handle: Any) -> bool: ...
    def mig_devices(self, handle: Any) -> list[Any]: ...


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PynvmlApi:
    """NVML through nvidia-ml-py, imported only when a snapshot is taken."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def init(self) -> None:
        try:
            import pynvml  # nvidia-ml-py; optional: pip install 'vllm-paddle-ocr[gpu]'
        except ImportError as exc:
            raise NvmlUnavailable(
                "nvidia-ml-py is not installed (pip install 'vllm-paddle-ocr[gpu]' or nvidia-ml-py)"
            ) from exc
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(self._describe_init_error(exc)) from exc

    def _describe_init_error(self, exc: Exception) -> str:
        nvml = self._nvml
        if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
            return "NVIDIA driver not found (libnvidia-ml could not be loaded)"
        if isinstance(exc, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
            return "the NVIDIA driver is not loaded"
        if isinstance(exc, getattr(nvml, "NVMLError_NoPermission", ())):
            return "no permission to talk to the NVIDIA driver"
        return f"NVML failed to start ({exc})"

    def shutdown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass

    def driver_version(self) -> str | None:
        try:
            return _text(self._nvml.nvmlSystemGetDriverVersion())
        except self._nvml.NVMLError:
            return None

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def handle(self, index: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def uuid(self, handle: Any) -> str:
        return _text(self._nvml.nvmlDeviceGetUUID(handle))

    def name(self, handle: Any) -> str:
        return _text(self._nvml.nvmlDeviceGetName(handle))

    def memory(self, handle: Any) -> MemoryInfo:
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
                return MemoryInfo(int(info.total), int(info.free), int(info.used), int(info.reserved))
            except (nvml.NVMLError, TypeError, AttributeError):
                pass  # older driver: fall back to v1, where used includes reserved
        info = nvml.nvmlDeviceGetMemoryInfo(handle)
        return MemoryInfo(int(info.total), int(info.free), int(info.used), 0)

    def processes(self, handle: Any) -> list[tuple[int, int | None]]:
        nvml = self._nvml
        found: dict[int, int | None] = {}
        for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            getter = getattr(nvml, call, None)
            if getter is None:
                continue
            try:
                entries = getter(handle)
            except nvml.NVMLError:
                continue
            for entry in entries:
                used = getattr(entry, "usedGpuMemory", None)
                found.setdefault(int(entry.pid), int(used) if isinstance(used, int) else None)
        return list(found.items())

    def process_name(self, pid: int) -> str | None:
        try:
            return _text(self._nvml.nvmlSystemGetProcessName(pid))
        except self._nvml.NVMLError:
            return None

    def mig_enabled(self, handle: Any) -> bool:
        try:
            current, _pending = self._nvml.nvmlDeviceGetMigMode(handle)
        except (self._nvml.NVMLError, AttributeError):
            return False
        return bool(current)

    def mig_devices(self, handle: Any) -> list[Any]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except nvml.NVMLError:
            return []
        devices = []
        for i in range(count):
            try:
                devices.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
            except nvml.NVMLError:
                continue  # an empty slot
        return devices


class RecordedNvml:
    """NVML answers replayed from a recorded snapshot (see tests/unit/data/gpus/*.json)."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record

    @classmethod
    def from_file(cls, path: Path | str) -> "RecordedNvml":
        """Load a recorded snapshot from a JSON file."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def init(self) -> None:
        failure = self.record.get("init_error")
        if failure:
            raise NvmlUnavailable(str(failure))

    def shutdown(self) -> None:
        return None

    def driver_version(self) -> str | None:
        return self.record.get("driver_version")

    def _devices(self) -> Sequence[Mapping[str, Any]]:
        return self.record.get("devices", [])

    def device_count(self) -> int:
        return len(self._devices())

    def handle(self, index: int) -> Any:
        return self._devices()[index]

    def uuid(self, handle: Any) -> str:
        return str(handle["uuid"])

    def name(self, handle: Any) -> str:
        return str(handle["name"])

    def memory(self, handle: Any) -> MemoryInfo:
        mem = handle["memory"]
        total, reserved, used = int(mem["total"]), int(mem.get("reserved", 0)), int(mem["used"])
        free = int(mem.get("free", total - reserved - used))
        return MemoryInfo(total=total, free=free, used=used, reserved=reserved)

    def processes(self, handle: Any) -> list[tuple[int, int | None]]:
        return [(int(p["pid"]), p.get("used")) for p in handle.get("processes", [])]

    def process_name(self, pid: int) -> str | None:
        for device in self._devices():
            for holder in (device, *device.get("mig_devices", [])):
                for proc in holder.get("processes", []):
                    if int(proc["pid"]) == pid and proc.get("name"):
                        return str(proc["name"])
        return None

    def mig_enabled(self, handle: Any) -> bool:
        return bool(handle.get("mig_enabled", False))

    def mig_devices(self, handle: Any) -> list[Any]:
        return list(handle.get("mig_devices", []))


# ----------------------------------------------------------------------------------------------------
# The snapshot: which devices CUDA_VISIBLE_DEVICES selects, and what they hold.

NO_GPU = "no GPU visible"


def _visible_entries(value: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES split as CUDA reads it: CUDA stops at the first entry it cannot use."""
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        entries.append(entry)
    return entries


def _process_name(api: NvmlApi, pid: int) -> str:
    name = api.process_name(pid)
    if not name:
        try:
            import psutil

            name = psutil.Process(pid).name()
        except Exception:  # noqa: BLE001 - another PID namespace, gone, or no permission
            name = None
    return os.path.basename(name) if name else "?"


def _gpu_info(api: NvmlApi, handle: Any, index: int, *, is_mig: bool = False) -> GpuInfo:
    memory = api.memory(handle)
    processes = [
        GpuProcess(pid=pid, name=_process_name(api, pid), used_bytes=used)
        for pid, used in api.processes(handle)
    ]
    return GpuInfo(
        index=index,
        uuid=api.uuid(handle),
        name=api.name(handle),
        total_bytes=memory.total,
        free_bytes=memory.free,
        used_bytes=memory.used,
        reserved_bytes=memory.reserved,
        processes=processes,
        is_mig=is_mig,
    )


def _mig_refusal(index: int, name: str) -> str:
    return (
        f"GPU {index} ({name}) has MIG enabled, so CUDA sees its MIG instances, not the whole card; "
        "set CUDA_VISIBLE_DEVICES to a MIG device UUID (MIG-..., listed by `nvidia-smi -L`)"
    )


def _select(api: NvmlApi, entries: list[str] | None) -> tuple[list[GpuInfo], str | None]:
    """The GpuInfo for each selected device, or a refusal naming what cannot be used."""
    count = api.device_count()
    physical = [(i, api.handle(i)) for i in range(count)]
    if entries is None:
        chosen: list[tuple[int, Any, Any | None]] = [(i, h, None) for i, h in physical]
    else:
        chosen = []
        for entry in entries:
            found = _find(api, physical, entry)
            if found is None:
                seen = ", ".join(f"{i}={api.uuid(h)}" for i, h in physical) or "none"
                return [], f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU (NVML sees: {seen})"
            chosen.append(found)
    gpus = []
    for index, handle, mig_handle in chosen:
        if mig_handle is not None:
            gpus.append(_gpu_info(api, mig_handle, index, is_mig=True))
            continue
        if api.mig_enabled(handle):
            return [], _mig_refusal(index, api.name(handle))
        gpus.append(_gpu_info(api, handle, index))
    return gpus, None


def _find(api: NvmlApi, physical: list[tuple[int, Any]], entry: str) -> tuple[int, Any, Any | None] | None:
    """Resolve one CUDA_VISIBLE_DEVICES entry: an index, a GPU-UUID (or unique prefix), a MIG-UUID."""
    if entry.isdigit():
        index = int(entry)
        return (index, physical[index][1], None) if index < len(physical) else None
    wanted = entry if entry.startswith(("GPU-", "MIG-")) else f"GPU-{entry}"
    if wanted.startswith("MIG-"):
        for index, handle in physical:
            if not api.mig_enabled(handle):
                continue
            for mig in api.mig_devices(handle):
                if api.uuid(mig) == wanted:
                    return index, handle, mig
        return None
    matches = [(i, h) for i, h in physical if api.uuid(h).startswith(wanted)]
    if len(matches) != 1:
        return None
    index, handle = matches[0]
    return index, handle, None


def read_snapshot(env: Mapping[str, str] | None = None, *, api: NvmlApi | None = None) -> GpuSnapshot:
    """The GPUs this process will see (CUDA_VISIBLE_DEVICES, in its order) and what holds their memory."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    entries = None if visible is None else _visible_entries(visible)
    if entries == []:
        return GpuSnapshot(error=f"{NO_GPU}: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU", visible_devices=visible)
    api = PynvmlApi() if api is None else api
    try:
        api.init()
    except NvmlUnavailable as exc:
        return GpuSnapshot(error=f"{NO_GPU}: {exc}", visible_devices=visible)
    try:
        driver = api.driver_version()
        if api.device_count() == 0:
            return GpuSnapshot(error=f"{NO_GPU}: the NVIDIA driver reports no GPU", driver_version=driver, visible_devices=visible)
        gpus, refusal = _select(api, entries)
    except Exception as exc:  # noqa: BLE001 - any NVML failure mid-read is reported, not raised
        return GpuSnapshot(error=f"{NO_GPU}: NVML failed while reading the GPUs ({exc})", visible_devices=visible)
    finally:
        api.shutdown()
    if refusal is not None:
        return GpuSnapshot(error=refusal, fatal=True, driver_version=driver, visible_devices=visible)
    notes = []
    if (
        entries is not None
        and any(e.isdigit() for e in entries)
        and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
        and len({gpu.name for gpu in gpus}) > 1
    ):
        notes.append(
            "CUDA_VISIBLE_DEVICES uses indexes and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA may number "
            "mixed GPUs differently from NVML; set CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs"
        )
    return GpuSnapshot(gpus=gpus, driver_version=driver, visible_devices=visible, notes=notes)
