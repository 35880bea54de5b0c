"""Generated manifests: committed files current, and the files agree with each other and with GPUStack's shapes."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy import manifests
from vllm_paddle_ocr.backends.vllm_paddle_ocr.serving import cli
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import builtin_catalog_entries, share_parameters
from vllm_paddle_ocr.backends.vllm_paddle_ocr.runtime import PaddleOcrRuntime
from vllm_paddle_ocr.plugin.manager import get_plugin_manager, runtimes
from vllm_paddle_ocr.plugin.records import CatalogEntry, ModelSources

REPO = Path(__file__).resolve().parents[2]
# The keys GPUStack 2.x's POST /v2/inference-backends/from-yaml keeps (routes/inference_backend.py).
FROM_YAML_KEYS = {
    "backend_name", "version_configs", "default_version", "default_backend_param", "default_run_command",
    "default_entrypoint", "health_check_path", "description", "default_env", "enabled", "backend_source",
    "parameter_format", "common_parameters",
}  # fmt: skip
VERSION_CONFIG_KEYS = {"image_name", "run_command", "entrypoint", "custom_framework", "env"}


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return manifests.generate()


def _yaml(files: dict[str, str], key: str):
    return yaml.safe_load(files[manifests.PATHS[key]])


def _dockerfile(files: dict[str, str]) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in files[manifests.PATHS["dockerfile"]].splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            instruction, _, argument = current.strip().partition(" ")
            lines.append((instruction, argument))
            current = ""
    return lines


def _one(pairs: list[tuple[str, str]], instruction: str) -> str:
    found = [argument for name, argument in pairs if name == instruction]
    assert len(found) == 1, (instruction, found)
    return found[0]


# --- drift -------------------------------------------------------------------------------------------


def test_committed_manifests_are_what_the_plugin_generates():
    assert cli.main(["manifests", "--check", "--output-dir", str(REPO / "manifests")]) == 0


def test_check_fails_on_an_edited_or_missing_file_and_write_fixes_it(tmp_path, capsys):
    out = tmp_path / "manifests"
    assert manifests.run_manifests_command(out, check=True) == 1  # nothing written yet
    assert manifests.run_manifests_command(out) == 0
    assert manifests.run_manifests_command(out, check=True) == 0
    edited = out / manifests.PATHS["backend"]
    edited.write_text(edited.read_text().replace("/v1/models", "/health"))
    (out / manifests.PATHS["dockerfile"]).unlink()
    capsys.readouterr()
    assert manifests.run_manifests_command(out, check=True) == 1
    err = capsys.readouterr().err
    assert manifests.PATHS["backend"] in err and manifests.PATHS["dockerfile"] in err
    assert manifests.write(manifests.generate(), out) == sorted([manifests.PATHS["backend"], manifests.PATHS["dockerfile"]])
    assert manifests.write(manifests.generate(), out) == []


def test_rendering_is_deterministic(files):
    assert manifests.generate() == files
    assert sorted(files) == sorted(manifests.PATHS.values())


# --- GPUStack 2.x backend ----------------------------------------------------------------------------


def test_backend_yaml_has_the_shape_gpustack_imports(files):
    backend = _yaml(files, "backend")
    assert set(backend) <= FROM_YAML_KEYS
    assert backend["backend_name"] == "vllm-paddle-ocr-custom"
    assert backend["default_version"] in backend["version_configs"]
    for version, config in backend["version_configs"].items():
        assert set(config) <= VERSION_CONFIG_KEYS
        assert config["image_name"].endswith(f":{version}")
    command = backend["default_run_command"]
    for placeholder in ("{{model_path}}", "{{port}}", "{{model_name}}"):
        assert placeholder in command
    assert backend["health_check_path"] == "/v1/models"
    assert backend["parameter_format"] == "equal"
    # The deploy form's pre-fill: the newest entry's recipe flags and its claim in bytes, no fraction.
    newest = builtin_catalog_entries()[-1]
    assert backend["default_env"] == {
        "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True", "GPUSTACK_MODEL_VRAM_CLAIM": str(newest.vram_claim_bytes)
    }
    assert backend["default_backend_param"] == newest.backend_parameters
    assert not [p for p in backend["default_backend_param"] if p.startswith("--gpu-memory-utilization")]


# --- catalogs ----------------------------------------------------------------------------------------


def test_07_catalog_runs_the_bin_dir_executable(files):
    sets = _yaml(files, "catalog_07")
    entries = {e.name: e for e in builtin_catalog_entries()}
    assert [s["name"] for s in sets] == list(entries)
    for model_set in sets:
        entry = entries[model_set["name"]]
        sources = {t["source"] for t in model_set["templates"]}
        assert sources == {"huggingface", "model_scope"}
        for template in model_set["templates"]:
            assert (template["backend"], template["backend_version"]) == ("vllm", "paddle_ocr")
            # 0.7 books a share of the card: the fraction, planned for the card the description names.
            assert template["backend_parameters"] == share_parameters(entry)
            assert template["backend_parameters"][0] == f"--gpu-memory-utilization={entry.gpu_memory_utilization:.2f}"
            assert template["env"] == entry.env
        assert f"planned for a {entry.planned_card_bytes // 1024**3} GiB card" in model_set["description"]
        assert "--gpu-total" in model_set["description"]


@pytest.mark.parametrize(("key", "source"), [("catalog_2x", "huggingface"), ("catalog_2x_modelscope", "model_scope")])
def test_2x_catalogs_use_the_custom_backend_one_source_each(files, key, source):
    catalog = _yaml(files, key)
    backend = _yaml(files, "backend")
    assert set(catalog) == {"draft_models", "model_sets"}
    entries = {e.name: e for e in builtin_catalog_entries()}
    assert [s["name"] for s in catalog["model_sets"]] == list(entries)
    for model_set in catalog["model_sets"]:
        assert model_set["size"] == entries[model_set["name"]].size
        assert [spec["source"] for spec in model_set["specs"]] == [source]
        for spec in model_set["specs"]:
            assert spec["backend"] == backend["backend_name"]
            assert spec["backend_version"] in backend["version_configs"]
            # 2.x books bytes: the claim in the env, no fraction to multiply by whatever card it lands on.
            entry = entries[model_set["name"]]
            assert spec["backend_parameters"] == entry.backend_parameters
            assert not [p for p in spec["backend_parameters"] if p.startswith("--gpu-memory-utilization")]
            assert spec["env"] == {**entry.env, "GPUSTACK_MODEL_VRAM_CLAIM": str(entry.vram_claim_bytes)}


def test_the_claim_stays_out_of_the_image_and_the_plain_container_manifests(files):
    # A claim baked into the image would size every GPUStack instance to it, booked or not; outside
    # GPUStack nobody books, and the instance budgets from what NVML reads.
    assert "GPUSTACK_MODEL_VRAM_CLAIM" not in files[manifests.PATHS["dockerfile"]]
    assert "GPUSTACK_MODEL_VRAM_CLAIM" not in files[manifests.PATHS["compose"]]
    assert "GPUSTACK_MODEL_VRAM_CLAIM" not in files[manifests.PATHS["kubernetes"]]


# --- image, Compose, Kubernetes ----------------------------------------------------------------------


def test_kubernetes_and_compose_parse_and_reference_the_same_image_and_port(files):
    backend = _yaml(files, "backend")
    image = backend["version_configs"][backend["default_version"]]["image_name"]
    deployment, service = yaml.safe_load_all(files[manifests.PATHS["kubernetes"]])
    compose = _yaml(files, "compose")
    (service_name, compose_service), = compose["services"].items()

    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == compose_service["image"] == image

    (port,) = container["ports"]
    expose = int(_one(_dockerfile(files), "EXPOSE"))
    assert port["containerPort"] == expose
    assert compose_service["ports"] == [f"{expose}:{expose}"]
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]


def test_kubernetes_deployment_is_ready_on_v1_models_with_a_gpu_and_shared_memory(files):
    deployment, _ = yaml.safe_load_all(files[manifests.PATHS["kubernetes"]])
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness == {"path": _yaml(files, "backend")["health_check_path"], "port": container["ports"][0]["name"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["shm"] == "/dev/shm" and volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["models"] == manifests.MODELS_MOUNT and "persistentVolumeClaim" in volumes["models"]


def test_compose_gets_a_gpu_shared_memory_and_a_health_check(files):
    (service,) = _yaml(files, "compose")["services"].values()
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert service["shm_size"] == "10gb"
    assert "/v1/models" in " ".join(service["healthcheck"]["test"])
    # The build context is the repository root, from the compose file's own directory.
    compose_dir = REPO / "manifests" / Path(manifests.PATHS["compose"]).parent
    assert (compose_dir / service["build"]["context"]).resolve() == REPO
    assert (REPO / service["build"]["dockerfile"]) == REPO / "manifests" / manifests.PATHS["dockerfile"]


def test_dockerfile_runs_the_backend_run_command(files):
    backend = _yaml(files, "backend")
    pairs = _dockerfile(files)
    cmd = json.loads(_one(pairs, "CMD"))
    assert json.loads(_one(pairs, "ENTRYPOINT")) == []
    deployment, _ = yaml.safe_load_all(files[manifests.PATHS["kubernetes"]])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (compose,) = _yaml(files, "compose")["services"].values()
    model_path = cmd[cmd.index("serve") + 1]
    rendered = manifests.render_run_command(
        backend["default_run_command"],
        model_path=model_path,
        port=container["ports"][0]["containerPort"],
        model_name=cmd[cmd.index("--served-model-name") + 1],
    )
    assert cmd == rendered == container["command"] == compose["command"]
    assert model_path.startswith(container["volumeMounts"][0]["mountPath"] + "/")


def test_dockerfile_builds_on_vllm_and_copies_what_pip_install_needs(files):
    pairs = _dockerfile(files)
    args = [argument for name, argument in pairs if name == "ARG"]
    assert args[0].startswith("VLLM_IMAGE=vllm/vllm-openai:")
    assert _one(pairs, "FROM") == "${VLLM_IMAGE}"
    copied = {source for name, argument in pairs if name == "COPY" for source in argument.split()[:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied
    run = _one(pairs, "RUN")
    assert ".[gpu,${LAYOUT_EXTRAS}]" in run and "vllm_paddle_ocr serve --help" in run
    # The torch layout engine serves from vLLM's own torch: no paddle in the image unless asked for.
    assert args[1:] == ["LAYOUT_EXTRAS=layout-torch"]
    optional = project["project"]["optional-dependencies"]
    assert not any("paddle" in requirement for requirement in optional["layout-torch"] + optional["gpu"])
    env = _one(pairs, "ENV")
    assert 'PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK="True"' in env


# --- plugins beyond the built-in runtime -------------------------------------------------------------


def test_a_second_runtime_gets_its_own_backend_and_its_entries_in_the_catalogs():
    pm = get_plugin_manager()
    known = dict(runtimes(pm))
    class FancyRuntime(PaddleOcrRuntime):
        name, description, backend_version, executable = "fancy_ocr", "Fancy", "fancy", "fancy_ocr"

    extra = FancyRuntime()
    known[extra.name] = extra
    entry = CatalogEntry(
        name="Fancy-OCR", description="d", size=2.0, model_version="1.5", runtime=extra.name,
        sources=ModelSources(huggingface_repo_id="acme/fancy"), backend_parameters=["--trust-remote-code"],
    )  # fmt: skip
    files = manifests.render_manifests(known, [*builtin_catalog_entries(), entry], "9.9.9")
    assert yaml.safe_load(files["gpustack/backend-fancy-ocr.yaml"])["backend_name"] == "fancy-ocr-custom"
    sets = {s["name"]: s for s in yaml.safe_load(files[manifests.PATHS["catalog_2x"]])["model_sets"]}
    assert sets["Fancy-OCR"]["specs"][0]["backend"] == "fancy-ocr-custom"
    assert "Fancy-OCR" not in {s["name"] for s in yaml.safe_load(files[manifests.PATHS["catalog_2x_modelscope"]])["model_sets"]}
    templates = {s["name"]: s for s in yaml.safe_load(files[manifests.PATHS["catalog_07"]])}["Fancy-OCR"]["templates"]
    assert templates[0]["backend_version"] == "fancy"


def test_entries_for_unregistered_runtimes_or_a_missing_builtin_are_refused():
    known = runtimes(get_plugin_manager())
    orphan = CatalogEntry(
        name="x", description="d", size=1.0, model_version="1.5", runtime="nobody", sources=ModelSources(huggingface_repo_id="a/b")
    )
    with pytest.raises(manifests.ManifestError, match="nobody"):
        manifests.render_manifests(known, [orphan], "1.0.0")
    with pytest.raises(manifests.ManifestError, match="vllm_paddle_ocr"):
        manifests.render_manifests({}, builtin_catalog_entries(), "1.0.0")


def test_manifests_command_writes_into_a_fresh_directory(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert cli.main(["manifests", "--output-dir", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(manifests.PATHS.values())
    shutil.rmtree(out)
