"""Our GPUStack manifests against a real GPUStack 2.3 server (and GPUStack 0.7.1's own catalog code).

One server per module: PostgreSQL in a temp dir, gpustack==2.3.0 in its own venv ($GPUSTACK_VENV, else
made here), started with our generated 2.x catalog. No worker registers, so an evaluation that passes
every model check ends at "Unable to find a schedulable worker for the model."
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from tests.integration.gpustack_server import (
    GPUSTACK_VERSION,
    ApiError,
    GPUStackServer,
    gpustack_venv,
    running_gpustack,
)
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy import manifests
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.gpustack_install import install, link_name
from vllm_paddle_ocr.plugin.manager import catalog_entries, get_plugin_manager, get_runtime

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

NO_WORKER = "Unable to find a schedulable worker for the model."
GPUSTACK_07_VERSION = "0.7.1"
VENV_07_ENV_VAR = "GPUSTACK07_VENV"


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return manifests.generate()


@pytest.fixture(scope="module")
def backend_doc(files) -> dict:
    return yaml.safe_load(files[manifests.PATHS["backend"]])


@pytest.fixture(scope="module")
def catalog_doc(files) -> dict:
    return yaml.safe_load(files[manifests.PATHS["catalog_2x"]])


@pytest.fixture(scope="module")
def gpustack(files, tmp_path_factory) -> GPUStackServer:
    catalog = tmp_path_factory.mktemp("catalog") / "catalog-2.x.yaml"
    catalog.write_text(files[manifests.PATHS["catalog_2x"]])
    with running_gpustack(catalog) as server:
        print(f"GPUStack {GPUSTACK_VERSION} answered /healthz after {server.startup_s:.1f} s")
        yield server


@pytest.fixture(scope="module")
def imported_backend(gpustack, files) -> dict:
    """Our backend.yaml, imported once for the module."""
    return gpustack.request("POST", "/v2/inference-backends/from-yaml", {"content": files[manifests.PATHS["backend"]]})


def gpustack_python(venv: Path, code: str, *args: str, timeout: float = 300) -> dict:
    """Run code with GPUStack's own interpreter and modules; it prints one JSON object."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"GPUStack's code failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- checks, also run against broken documents below -----------------------------------------------


def assert_backend_round_trip(server: GPUStackServer, text: str) -> dict:
    """Import the YAML and read it back: every field we wrote comes back as we wrote it."""
    sent = yaml.safe_load(text)
    answer = server.request("POST", "/v2/inference-backends/from-yaml", {"content": text})
    stored = server.request("GET", f"/v2/inference-backends/{answer['id']}")
    listed = server.request("GET", "/v2/inference-backends?perPage=100")["items"]
    assert [item["id"] for item in listed if item["backend_name"] == sent["backend_name"]] == [answer["id"]]
    for read in (answer, stored):
        for key, value in sent.items():
            if key == "version_configs":
                assert set(read[key]) == set(value)
                for version, config in value.items():
                    assert {k: read[key][version][k] for k in config} == config, version
            else:
                assert read.get(key) == value, key
        assert read["backend_source"] == "custom" and read["enabled"] is True
    return stored


def gpustack_model_sets(server: GPUStackServer) -> dict[str, dict]:
    """The server's model sets by name, each with its specs."""
    sets = server.request("GET", "/v2/model-sets?perPage=100")["items"]
    found = {}
    for item in sets:
        specs = server.request("GET", f"/v2/model-sets/{item['id']}/specs?perPage=100")["items"]
        found[item["name"]] = {**item, "specs": specs}
    return found


def assert_catalog_served(served: dict[str, dict], catalog: dict) -> None:
    """Every model set and spec we wrote is served with the fields we wrote."""
    ours = {model_set["name"]: model_set for model_set in catalog["model_sets"]}
    assert set(served) == set(ours)
    for name, model_set in ours.items():
        got = served[name]
        for key, value in model_set.items():
            if key != "specs":
                assert got[key] == value, (name, key)
        assert len(got["specs"]) == len(model_set["specs"]), name
        for spec, got_spec in zip(model_set["specs"], got["specs"]):
            for key, value in spec.items():
                assert got_spec[key] == value, (name, key)


# --- GPUStack 2.3 server ---------------------------------------------------------------------------


def test_backend_yaml_imports_and_reads_back_field_for_field(gpustack, imported_backend, backend_doc):
    stored = gpustack.request("GET", f"/v2/inference-backends/{imported_backend['id']}")
    assert stored["backend_name"] == "vllm-paddle-ocr-custom"
    for key, value in backend_doc.items():
        if key == "version_configs":
            for version, config in value.items():
                assert {k: stored[key][version][k] for k in config} == config
        else:
            assert stored[key] == value, key
    # The deploy form's pre-fill carries the budget as the bytes GPUStack's scheduler books, and no fraction.
    assert int(stored["default_env"]["GPUSTACK_MODEL_VRAM_CLAIM"]) > 0
    assert not [p for p in stored["default_backend_param"] if p.startswith("--gpu-memory-utilization")]


def test_broken_backend_yaml_fails_the_round_trip(gpustack, backend_doc):
    # A field GPUStack does not know is dropped on import: the read-back no longer matches what we sent.
    broken = dict(backend_doc, backend_name="vllm-paddle-ocr-broken-custom")
    broken["health_path"] = broken.pop("health_check_path")
    with pytest.raises(AssertionError):
        assert_backend_round_trip(gpustack, yaml.safe_dump(broken))
    # A name without GPUStack's required suffix is refused outright.
    with pytest.raises(ApiError) as refused:
        assert_backend_round_trip(gpustack, yaml.safe_dump(dict(backend_doc, backend_name="vllm-paddle-ocr-2")))
    assert refused.value.status == 400


def test_run_command_renders_with_gpustacks_own_code(gpustack, files, tmp_path):
    backend = tmp_path / "backend.yaml"
    backend.write_text(files[manifests.PATHS["backend"]])
    rendered = gpustack_python(
        gpustack.venv,
        """
        import json, sys, yaml
        from gpustack.schemas.inference_backend import InferenceBackend, VersionConfig, VersionConfigDict
        doc = yaml.safe_load(open(sys.argv[1]))
        doc["version_configs"] = VersionConfigDict(root={k: VersionConfig(**v) for k, v in doc["version_configs"].items()})
        backend = InferenceBackend(**doc)
        version = doc["default_version"]
        command = backend.replace_command_param(
            version=version, model_path="/var/lib/gpustack/cache/huggingface/PaddlePaddle/PaddleOCR-VL",
            port=40017, worker_ip="10.1.2.3", model_name="ocr", gpu_count=1, gpu_ids=[0])
        print(json.dumps({"command": command, "image": backend.get_image_name(version)[0],
                          "entrypoint": backend.get_container_entrypoint(version),
                          "env": backend.get_backend_env(version)}))
        """,
        str(backend),
    )
    runtime = get_runtime(get_plugin_manager(), manifests.BUILTIN_RUNTIME)
    assert rendered["command"].split() == [
        runtime.executable, "serve", "/var/lib/gpustack/cache/huggingface/PaddlePaddle/PaddleOCR-VL",
        "--host", "0.0.0.0", "--port", "40017", "--served-model-name", "ocr",
    ]  # fmt: skip
    assert rendered["image"] == manifests.image_variants(manifests.package_version())[-1].image_name
    # No entrypoint: the image's (empty) ENTRYPOINT runs the command as given.
    assert rendered["entrypoint"] is None
    assert rendered["env"] == yaml.safe_load(files[manifests.PATHS["backend"]])["default_env"]


def test_catalog_sets_and_specs_are_served_as_written(gpustack, catalog_doc):
    served = gpustack_model_sets(gpustack)
    assert_catalog_served(served, catalog_doc)
    assert {name for name in served} == {entry.name for entry in catalog_entries(get_plugin_manager())}
    for model_set in served.values():
        for spec in model_set["specs"]:
            assert spec["backend"] == "vllm-paddle-ocr-custom"
            assert int(spec["env"]["GPUSTACK_MODEL_VRAM_CLAIM"]) > 0
            assert not [p for p in spec["backend_parameters"] if p.startswith("--gpu-memory-utilization")]


@pytest.mark.parametrize("catalog_key", ["catalog_2x", "catalog_2x_modelscope"])
def test_catalog_passes_gpustacks_strict_loader_and_a_broken_entry_does_not(gpustack, files, tmp_path, catalog_key):
    catalog_doc = yaml.safe_load(files[manifests.PATHS[catalog_key]])
    code = """
        import json, sys
        from gpustack.schemas.catalog_source import _load_catalog
        text = open(sys.argv[1]).read()
        try:
            _load_catalog(text, strict=True)
            strict = None
        except ValueError as exc:
            strict = str(exc)
        lenient = _load_catalog(text, strict=False)
        print(json.dumps({"strict_error": strict,
                          "sets": [s.model_dump(mode="json", exclude_none=True) for s in lenient.model_sets]}))
    """
    good = tmp_path / "good.yaml"
    good.write_text(files[manifests.PATHS[catalog_key]])
    loaded = gpustack_python(gpustack.venv, code, str(good))
    assert loaded["strict_error"] is None
    assert_catalog_served({s["name"]: s for s in loaded["sets"]}, catalog_doc)

    broken_doc = json.loads(json.dumps(catalog_doc))
    broken_doc["model_sets"][0]["specs"] = [dict(spec, backend_parameters="--trust-remote-code") for spec in broken_doc["model_sets"][0]["specs"]]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(broken_doc))
    loaded = gpustack_python(gpustack.venv, code, str(broken))
    assert loaded["strict_error"] is not None
    with pytest.raises(AssertionError):
        assert_catalog_served({s["name"]: s for s in loaded["sets"]}, catalog_doc)


def _realistic_repo(dest: Path, version: str, with_remote_code: bool = True) -> Path:
    """A repo shaped like the published one: config.json with auto_map and the remote configuration module."""
    repo = write_fake_vlm_config(dest, version=version, layout="root")
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_paddleocr_vl.PaddleOCRVLConfig",
        "AutoModel": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_paddleocr_vl.PaddleOCRVLForConditionalGeneration",
    }
    (repo / "config.json").write_text(json.dumps(config, indent=2))
    if with_remote_code:
        (repo / "configuration_paddleocr_vl.py").write_text(
            textwrap.dedent(
                '''
                from transformers.configuration_utils import PretrainedConfig


                class PaddleOCRVisionConfig(PretrainedConfig):
                    model_type = "paddleocr_vl"

                    def __init__(self, hidden_size=1152, patch_size=14, spatial_merge_size=2, **kwargs):
                        super().__init__(**kwargs)
                        self.hidden_size = hidden_size
                        self.patch_size = patch_size
                        self.spatial_merge_size = spatial_merge_size


                class PaddleOCRVLConfig(PretrainedConfig):
                    model_type = "paddleocr_vl"
                    sub_configs = {"vision_config": PaddleOCRVisionConfig}

                    def __init__(self, vision_config=None, hidden_size=1024, num_hidden_layers=18,
                                 num_attention_heads=16, num_key_value_heads=2, head_dim=128, **kwargs):
                        if isinstance(vision_config, dict):
                            vision_config = PaddleOCRVisionConfig(**vision_config)
                        self.vision_config = vision_config or PaddleOCRVisionConfig()
                        self.hidden_size = hidden_size
                        self.num_hidden_layers = num_hidden_layers
                        self.num_attention_heads = num_attention_heads
                        self.num_key_value_heads = num_key_value_heads
                        self.head_dim = head_dim
                        super().__init__(**kwargs)
                '''
            )
        )
    return repo


def _evaluate(server: GPUStackServer, spec: dict) -> dict:
    results = server.request("POST", "/v2/model-evaluations", {"model_specs": [spec]}, timeout=180)["results"]
    assert len(results) == 1
    return results[0]


def _spec_on(repo: Path, catalog_spec: dict, name: str, pinned: bool) -> dict:
    """The catalog spec pointed at a local repo; unpinned leaves the backend version to GPUStack."""
    spec = {
        "name": name,
        "source": "local_path",
        "local_path": str(repo),
        "backend": catalog_spec["backend"],
        "backend_parameters": catalog_spec["backend_parameters"],
        "env": catalog_spec["env"],
        "replicas": 1,
    }
    if pinned:
        spec["backend_version"] = catalog_spec["backend_version"]
    return spec


@pytest.mark.parametrize("pinned", [True, False], ids=["backend-version-pinned", "default-version"])
@pytest.mark.parametrize("version", ["0.9B", "1.5"])
def test_catalog_spec_on_a_local_repo_passes_every_model_check(gpustack, imported_backend, catalog_doc, tmp_path, version, pinned):
    name = {"0.9B": "PaddleOCR-VL", "1.5": "PaddleOCR-VL-1.5"}[version]
    catalog_spec = next(s for s in catalog_doc["model_sets"] if s["name"] == name)["specs"][0]
    repo = _realistic_repo(tmp_path / f"PaddleOCR-VL-{version}-{pinned}", version)
    result = _evaluate(gpustack, _spec_on(repo, catalog_spec, f"ocr-{version.replace('.', '-').lower()}", pinned))
    # Every check on the model passed; only the absence of a worker stops it.
    assert result["compatibility_messages"] == [NO_WORKER], (result, gpustack.log_tail())
    assert not result.get("error")


def test_evaluation_loads_the_repo_with_its_remote_code(gpustack, imported_backend, catalog_doc, tmp_path):
    # Without a pinned backend version, and with a user's --trust-remote-code, GPUStack loads the config
    # with transformers and trust_remote_code: the spec on a repo that lacks the remote configuration
    # module fails there, so the passing evaluations above did read the repos they were given.
    catalog_spec = catalog_doc["model_sets"][0]["specs"][0]
    typed = dict(catalog_spec, backend_parameters=[*catalog_spec["backend_parameters"], "--trust-remote-code"])
    repo = _realistic_repo(tmp_path / "PaddleOCR-VL-no-remote-code", "0.9B", with_remote_code=False)
    result = _evaluate(gpustack, _spec_on(repo, typed, "ocr-missing-code", pinned=False))
    assert result["compatibility_messages"] != [NO_WORKER]
    assert "configuration_paddleocr_vl.py" in " ".join(result["compatibility_messages"])


# --- GPUStack 0.7.1: its own catalog loader and bin-dir check ---------------------------------------


@pytest.fixture(scope="module")
def gpustack07_venv(tmp_path_factory) -> Path:
    return gpustack_venv(tmp_path_factory.mktemp("gpustack07"), version=GPUSTACK_07_VERSION, env_var=VENV_07_ENV_VAR)


def test_07_catalog_loads_with_gpustack_071s_catalog_code(gpustack07_venv, files, tmp_path):
    catalog = tmp_path / "catalog-0.7.yaml"
    catalog.write_text(files[manifests.PATHS["catalog_07"]])
    loaded = gpustack_python(
        gpustack07_venv,
        """
        import json, sys
        from gpustack.server.catalog import init_model_catalog, get_model_catalog, get_model_set_specs
        init_model_catalog(sys.argv[1])
        sets = [s.model_dump(mode="json") for s in get_model_catalog()]
        specs = {str(k): [s.model_dump(mode="json") for s in v] for k, v in get_model_set_specs().items()}
        print(json.dumps({"sets": sets, "specs": specs}))
        """,
        str(catalog),
    )
    ours = {model_set["name"]: model_set for model_set in yaml.safe_load(files[manifests.PATHS["catalog_07"]])}
    served = {model_set["name"]: model_set for model_set in loaded["sets"]}
    assert set(served) == set(ours)
    runtime = get_runtime(get_plugin_manager(), manifests.BUILTIN_RUNTIME)
    for name, model_set in ours.items():
        got = served[name]
        for key in ("description", "home", "icon", "categories", "capabilities", "sizes", "licenses", "release_date"):
            assert got[key] == model_set[key], (name, key)
        specs = loaded["specs"][str(got["id"])]
        assert len(specs) == len(model_set["templates"])
        for template, spec in zip(model_set["templates"], specs):
            for key, value in template.items():
                assert spec[key] == value, (name, key)
            assert (spec["backend"], spec["backend_version"]) == (runtime.backend, runtime.backend_version)
            assert spec["size"] == model_set["sizes"][0]


def test_07_worker_accepts_the_installed_link_and_runs_it(gpustack07_venv, tmp_path):
    runtime = get_runtime(get_plugin_manager(), manifests.BUILTIN_RUNTIME)
    from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.gpustack_install import find_executable

    bin_dir = tmp_path / "data" / "bin"
    install(bin_dir, link_name(runtime), find_executable(runtime.executable))
    found = gpustack_python(
        gpustack07_venv,
        """
        import json, os, subprocess, sys
        from gpustack.utils.command import get_versioned_command
        from gpustack.worker.tools_manager import ToolsManager
        data_dir, bin_dir, version = sys.argv[1:4]
        # What the worker does before starting a versioned vLLM: an existing target skips pipx.
        ToolsManager(data_dir=data_dir, bin_dir=bin_dir).install_versioned_package_by_pipx("vllm", version)
        path = os.path.join(bin_dir, get_versioned_command("vllm", version))
        run = subprocess.run([path, "serve", "--help"], capture_output=True, text=True, timeout=120)
        print(json.dumps({"path": path, "exists": os.path.exists(path), "rc": run.returncode, "out": run.stdout}))
        """,
        str(tmp_path / "data"),
        str(bin_dir),
        runtime.backend_version,
    )
    assert found["path"] == str(bin_dir / f"vllm_{runtime.backend_version}")
    assert found["exists"] and found["rc"] == 0
    assert found["out"].startswith("usage: vllm_paddle_ocr serve")
