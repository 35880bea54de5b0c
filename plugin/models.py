"""The plain records plugins hand to the plugin manager."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Runtime(BaseModel):
    """A launchable runtime: its name and how a control plane finds its executable."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    # GPUStack 0.7 runs `<bin_dir>/vllm_<backend_version>`; 2.x runs the same command in an image.
    backend: str = "vllm"
    backend_version: str
    executable: str
