"""Catalog entries: the published models, their sources, and launch parameters GPUStack can read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy import catalog
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning import vram
from vllm_paddle_ocr.plugin.records import CatalogEntry, ModelSources
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import RECOMMENDED_FLAGS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.sizes import GiB, MiB, format_bytes
from vllm_paddle_ocr.plugin.manager import catalog_entries, get_plugin_manager

GPUSTACK_SYSTEM_RESERVED = 1 * GiB  # GPUStack's default system_reserved.vram


def _fraction(parameters: list[str]) -> float:
    found = [p for p in parameters if p.startswith("--gpu-memory-utilization")]
    assert len(found) == 1, parameters
    flag, _, value = found[0].partition("=")
    assert flag == "--gpu-memory-utilization" and value, "GPUStack's scheduler reads only the `=` form"
    return float(value)


def test_builtin_entries_are_the_two_published_releases_from_both_hubs():
    entries = catalog.builtin_catalog_entries()
    assert [(e.name, e.model_version) for e in entries] == [("PaddleOCR-VL", "0.9B"), ("PaddleOCR-VL-1.5", "1.5")]
    for entry in entries:
        assert entry.runtime == "vllm_paddle_ocr"
        assert entry.sources.huggingface_repo_id == f"PaddlePaddle/{entry.name}"
        assert entry.sources.model_scope_model_id == f"PaddlePaddle/{entry.name}"
        assert "vision" in entry.capabilities and entry.categories == ["llm"]


def test_entries_are_registered_through_the_plugin_manager():
    registered = catalog_entries(get_plugin_manager())
    assert [e.name for e in registered] == [e.name for e in catalog.builtin_catalog_entries()]


def test_parameters_carry_the_recipe_flags_and_leave_budget_and_trust_to_each_booking():
    for entry in catalog.builtin_catalog_entries():
        parameters = entry.backend_parameters
        assert "--trust-remote-code" not in parameters  # added by the runtime where the repo needs it
        assert not [p for p in parameters if p.startswith("--gpu-memory-utilization")]
        for flag, values in RECOMMENDED_FLAGS:
            assert (f"{flag}={values[0]}" if values else flag) in parameters
        # GPUStack does not split an item with a space inside: every item is one token.
        assert all(" " not in p for p in parameters)
        # A control plane booking a share gets the fraction first; one booking bytes gets the claim.
        shared = catalog.share_parameters(entry)
        assert shared[1:] == parameters and 0 < _fraction(shared) < 0.5
        assert catalog.claim_env(entry) == {**entry.env, "GPUSTACK_MODEL_VRAM_CLAIM": str(entry.vram_claim_bytes)}


def test_the_claim_is_what_plan_prints_for_the_published_model_and_at_most_8_gib():
    entry = catalog.builtin_catalog_entries()[0]
    needs = catalog.published_needs()
    # The layout model runs on the instance's GPU by default (the torch engine): the claim holds it too.
    layout = vram.VramOptions(layout_model_bytes=catalog.published_layout_bytes())
    assert layout.layout_model_bytes > 0
    assert entry.vram_claim_bytes == vram.gpustack_claim(needs, layout.model_copy(update={"concurrency": vram.DEFAULT_CONCURRENCY}))
    assert entry.vram_claim_bytes % MiB == 0 and entry.vram_claim_bytes <= 8 * GiB
    # It covers what the instance takes at that concurrency, margin included, and is a figure people read.
    plan = vram.plan_vram(needs, None, layout.model_copy(update={"gpu_total_bytes": 80 * GiB}))
    assert plan.needed_bytes * (1 + vram.DEFAULT_MARGIN) <= entry.vram_claim_bytes < plan.needed_bytes * (1 + vram.DEFAULT_MARGIN) + MiB
    assert plan.gpustack_claim_bytes == entry.vram_claim_bytes
    assert format_bytes(entry.vram_claim_bytes) in entry.description


def test_budget_is_planned_for_the_stated_card_and_shrinks_on_larger_cards():
    entry = catalog.builtin_catalog_entries()[0]
    assert entry.planned_card_bytes == catalog.PLANNED_CARD_BYTES == 24 * GiB
    assert "24 GiB" in catalog.budget_note(entry)
    assert _fraction(catalog.share_parameters(entry)) == entry.gpu_memory_utilization == catalog.planned_fraction(24 * GiB)
    assert catalog.planned_fraction(16 * GiB) > catalog.planned_fraction(24 * GiB) > catalog.planned_fraction(80 * GiB)
    # What it books always covers the published weights.
    for card in (16, 24, 80):
        assert catalog.planned_fraction(card * GiB) * card * GiB > catalog.PUBLISHED_WEIGHT_BYTES


def test_the_parameter_books_exactly_the_planned_fraction_even_in_thousandths():
    # On a small card the plan rounds to 0.001 (0.01 would not fit); rounding it to 0.01 would book
    # less than the instance takes, or ask vLLM for more than is free.
    entry = catalog.builtin_catalog_entries()[0]
    thousandths = 0
    for mib in range(5976, 6560, 16):  # 5.8 to 6.4 GiB: the model and its layout model fit, with little to spare
        card = mib * 1024**2
        fraction = catalog.planned_fraction(card)
        planned = entry.model_copy(update={"gpu_memory_utilization": fraction, "planned_card_bytes": card})
        assert _fraction(catalog.share_parameters(planned)) == fraction
        thousandths += round(fraction, 2) != fraction
    assert thousandths > 0


def test_gpustack_fits_several_instances_on_the_planned_card():
    # GPUStack 0.7's vLLM selector: an instance fits when (total - booked - reserved) / total >= its fraction.
    total = catalog.PLANNED_CARD_BYTES
    fraction = catalog.planned_fraction(total)
    booked, instances = 0.0, 0
    while (total - booked - GPUSTACK_SYSTEM_RESERVED) / total >= fraction:
        booked += total * fraction
        instances += 1
    assert instances >= 3
    # With GPUStack's default of 0.9 only one instance fits.
    assert (total - total * 0.9 - GPUSTACK_SYSTEM_RESERVED) / total < 0.9


def test_env_turns_off_paddlex_model_host_probe():
    for entry in catalog.builtin_catalog_entries():
        assert entry.env == {"PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}


def test_an_entry_needs_a_source():
    with pytest.raises(ValidationError, match="huggingface_repo_id or a model_scope_model_id"):
        ModelSources()
    entry = CatalogEntry(
        name="x", description="d", size=1.0, model_version="1.5", sources=ModelSources(model_scope_model_id="a/b"),
        runtime="vllm_paddle_ocr",
    )
    assert catalog.budget_note(entry) == "no budget planned"
    assert catalog.share_parameters(entry) == [] and catalog.claim_env(entry) == {}


def test_the_gpustack_guide_shows_the_parameters_and_the_claim_the_catalog_carries():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "gpustack.md").read_text(encoding="utf-8")
    blocks = re.findall(r"backend_parameters: (.*?)(?:env: +GPUSTACK_MODEL_VRAM_CLAIM=(\d+)\s*)?```", guide, re.S)
    assert len(blocks) == 2, "docs/gpustack.md lost its 0.7 or 2.x deploy settings"
    (shown_07, no_claim), (shown_2x, claim) = blocks
    first, *others = catalog.builtin_catalog_entries()
    # The copyable settings are PaddleOCR-VL's; the guide names the other releases' budgets beside them.
    assert shown_07.split() == catalog.share_parameters(first) and not no_claim
    assert shown_2x.split() == first.backend_parameters
    assert claim == str(first.vram_claim_bytes)
    # What the guide says a card takes is what GPUStack's byte booking places there.
    assert f"an 80 GiB card takes {80 * GiB // first.vram_claim_bytes}" in guide
    assert f"a 24 GiB card {24 * GiB // first.vram_claim_bytes}" in guide
    for entry in others:
        assert entry.backend_parameters == first.backend_parameters
        assert f"`{entry.vram_claim_bytes}`" in guide and f"`{entry.gpu_memory_utilization:.2f}`" in guide
