"""GPUStack 2.3's own scheduler books our catalog's claim: one GPU reported by a worker, several deployments, placements read back.

A real GPUStack 2.3 server (as test_gpustack_server.py starts it, its own instance here) with our
backend.yaml imported; a worker registers through the worker API and reports one GPU; the catalog's
PaddleOCR-VL spec is deployed several times on a repository the budget reads as the published model.
GPUStack books each instance and places it (or leaves it pending) by itself; the test reads the
instances back: which worker and GPU, and the VRAM claim GPUStack computed. Nothing runs the instances:
the worker starts no workload, so placement is all there is to read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fixtures.tiny_vlm import write_published_size_vlm
from tests.integration.gpustack_server import GPUStackServer, ReportedGpu, reporting_worker, running_gpustack
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy import manifests
from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy.catalog import builtin_catalog_entries
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.vram import gpustack_parameter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

GiB = 1024**3
CLAIM_ENV = "GPUSTACK_MODEL_VRAM_CLAIM"
H100 = ReportedGpu("NVIDIA H100 80GB HBM3", 80 * GiB)
CARD_24 = ReportedGpu("NVIDIA L4 24GB", 24 * GiB)
SETTLE_TIMEOUT_S = 300
# Deployments beyond what should fit, so the test also sees where GPUStack stops placing.
EXTRA_DEPLOYMENTS = 2


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return manifests.generate()


@pytest.fixture(scope="module")
def gpustack(files) -> GPUStackServer:
    with running_gpustack(None) as server:
        server.request("POST", "/v2/inference-backends/from-yaml", {"content": files[manifests.PATHS["backend"]]})
        yield server


@pytest.fixture(scope="module")
def cluster(gpustack) -> dict:
    """A cluster as an admin adds one in the console: its id and the registration token its workers use."""
    created = gpustack.request("POST", "/v2/clusters", {"name": "gpus", "provider": "Docker"})
    token = gpustack.request("GET", f"/v2/clusters/{created['id']}/registration-token")["token"]
    return {"id": created["id"], "token": token}


@pytest.fixture(scope="module")
def catalog_spec(files) -> dict:
    """The catalog's PaddleOCR-VL spec, as GPUStack 2.x reads it from catalog-2.x.yaml."""
    catalog = yaml.safe_load(files[manifests.PATHS["catalog_2x"]])
    return next(s for s in catalog["model_sets"] if s["name"] == "PaddleOCR-VL")["specs"][0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_published_size_vlm(tmp_path_factory.mktemp("published") / "PaddleOCR-VL")


def plan_json(repo: Path, *args: str) -> dict:
    """`vllm_paddle_ocr plan <repo> ... --json`, as an admin runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "vllm_paddle_ocr.backends.vllm_paddle_ocr.serving.cli", "plan", str(repo), *args, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["vram"]


@dataclass
class Placement:
    """What GPUStack did with the deployments: instances on the worker's GPU, and those left pending."""

    worker_id: int
    scheduled: list[dict]
    pending: list[dict]


def _settled(instances: list[dict], deployments: int) -> bool:
    """Every deployment has its instance, and the scheduler has answered for each: placed, or no room."""
    if len(instances) < deployments:
        return False
    return all(
        i["state"] == "scheduled" or (i["state"] == "pending" and (i.get("state_message") or "").startswith("No suitable workers"))
        for i in instances
    )


def deploy_on(
    server: GPUStackServer, cluster: dict, gpu: ReportedGpu, spec: dict, repo: Path, deployments: int, label: str
) -> Placement:
    """Register a worker reporting one GPU, deploy the spec `deployments` times, read back what GPUStack decided."""
    with reporting_worker(server, cluster["token"], f"worker-{label}", [gpu]) as worker:
        models = []
        try:
            for n in range(deployments):
                body = {
                    "name": f"ocr-{label}-{n}", "cluster_id": cluster["id"], "replicas": 1,
                    "source": "local_path", "local_path": str(repo),
                    "backend": spec["backend"], "backend_version": spec["backend_version"],
                    "backend_parameters": spec["backend_parameters"], "env": spec["env"],
                }  # fmt: skip
                models.append(server.request("POST", "/v2/models", body)["id"])
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while True:
                listed = server.request("GET", "/v2/model-instances?perPage=500")["items"]
                instances = [i for i in listed if i["model_id"] in models]
                if _settled(instances, deployments):
                    break
                assert time.monotonic() < deadline, (f"GPUStack did not settle {deployments} deployments", instances, server.log_tail())
                time.sleep(2)
            return Placement(
                worker_id=worker.id,
                scheduled=[i for i in instances if i["state"] == "scheduled"],
                pending=[i for i in instances if i["state"] == "pending"],
            )
        finally:
            for model in models:
                server.request("DELETE", f"/v2/models/{model}")


def assert_booked_as_planned(placement: Placement, claim: int, fit: int) -> None:
    """Each placed instance is on the worker's one GPU with exactly the claim booked; `fit` of them, and no more."""
    for instance in placement.scheduled:
        assert instance["worker_id"] == placement.worker_id
        assert instance["gpu_indexes"] == [0]
        assert instance["computed_resource_claim"]["vram"] == {"0": claim}, instance["computed_resource_claim"]
    assert len(placement.scheduled) == fit
    assert placement.pending and all("VRAM" in i["state_message"] for i in placement.pending)


def test_an_80_gib_card_books_the_catalogs_claim_per_instance_and_places_at_least_9(gpustack, cluster, catalog_spec, repo):
    claim = int(catalog_spec["env"][CLAIM_ENV])
    assert claim <= 8 * GiB
    assert not [p for p in catalog_spec["backend_parameters"] if p.startswith("--gpu-memory-utilization")]
    # The catalog's bytes are what `plan` prints for the model, and `plan` says how many fit the card.
    planned = plan_json(repo, "--gpu-total", "80GiB")
    assert planned["gpustack_claim_bytes"] == claim
    fit = planned["gpustack_instances_per_gpu"]
    assert fit >= 9
    placement = deploy_on(gpustack, cluster, H100, catalog_spec, repo, fit + EXTRA_DEPLOYMENTS, "80gib")
    print(f"80 GiB card: {len(placement.scheduled)} instances placed at {claim} bytes each, {len(placement.pending)} pending")
    assert_booked_as_planned(placement, claim, fit)


def test_a_24_gib_card_places_as_many_as_plan_says(gpustack, cluster, catalog_spec, repo):
    claim = int(catalog_spec["env"][CLAIM_ENV])
    planned = plan_json(repo, "--gpu-total", "24GiB")
    assert planned["gpustack_claim_bytes"] == claim  # the same bytes on any card
    fit = planned["gpustack_instances_per_gpu"]
    placement = deploy_on(gpustack, cluster, CARD_24, catalog_spec, repo, fit + EXTRA_DEPLOYMENTS, "24gib")
    print(f"24 GiB card: {len(placement.scheduled)} instances placed at {claim} bytes each, {len(placement.pending)} pending")
    assert_booked_as_planned(placement, claim, fit)


def test_a_fraction_back_in_the_spec_fails_the_booking_check(gpustack, cluster, catalog_spec, repo):
    # What the catalog carried before: a fraction planned for a 24 GiB card. GPUStack 2.3 books the larger
    # of the claim and that share of whatever card it lands on, so an 80 GiB card holds far fewer.
    entry = builtin_catalog_entries()[0]
    fraction = gpustack_parameter(entry.gpu_memory_utilization)
    broken = dict(catalog_spec, backend_parameters=[fraction, *catalog_spec["backend_parameters"]])
    claim = int(catalog_spec["env"][CLAIM_ENV])
    fit = plan_json(repo, "--gpu-total", "80GiB")["gpustack_instances_per_gpu"]
    placement = deploy_on(gpustack, cluster, H100, broken, repo, fit + EXTRA_DEPLOYMENTS, "fraction")
    booked = {i["computed_resource_claim"]["vram"]["0"] for i in placement.scheduled}
    print(f"80 GiB card with {fraction}: {len(placement.scheduled)} placed, {booked} bytes booked each")
    with pytest.raises(AssertionError):
        assert_booked_as_planned(placement, claim, fit)
    assert booked == {int(entry.gpu_memory_utilization * H100.total_bytes)}
