"""Catalog entries: the published models, their sources, and launch parameters GPUStack can read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from vllm_paddle_ocr.backends.vllm_paddle_ocr.deploy import catalog
from vllm_paddle_ocr.plugin.records import CatalogEntry, ModelSources
from vllm_paddle_ocr.backends.vllm_paddle_ocr.recipe import RECOMMENDED_FLAGS
from vllm_paddle_ocr.backends.vllm_paddle_ocr.sizes import GiB
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


def test_parameters_carry_the_budget_and_the_recipe_flags_and_leave_trust_to_the_runtime():
    for entry in catalog.builtin_catalog_entries():
        parameters = entry.backend_parameters
        assert "--trust-remote-code" not in parameters  # added by the runtime where the repo needs it
        assert 0 < _fraction(parameters) < 0.5
        for flag, values in RECOMMENDED_FLAGS:
            assert (f"{flag}={values[0]}" if values else flag) in parameters
        # GPUStack does not split an item with a space inside: every item is one token.
        assert all(" " not in p for p in parameters)


def test_budget_is_planned_for_the_stated_card_and_shrinks_on_larger_cards():
    entry = catalog.builtin_catalog_entries()[0]
    assert entry.planned_card_bytes == catalog.PLANNED_CARD_BYTES == 24 * GiB
    assert "24 GiB" in catalog.budget_note(entry)
    assert _fraction(entry.backend_parameters) == catalog.planned_fraction(24 * GiB)
    assert catalog.planned_fraction(16 * GiB) > catalog.planned_fraction(24 * GiB) > catalog.planned_fraction(80 * GiB)
    # What it books always covers the published weights.
    for card in (16, 24, 80):
        assert catalog.planned_fraction(card * GiB) * card * GiB > catalog.PUBLISHED_WEIGHT_BYTES


def test_the_parameter_books_exactly_the_planned_fraction_even_in_thousandths():
    # On a small card the plan rounds to 0.001 (0.01 would not fit); rounding it to 0.01 would book
    # less than the instance takes, or ask vLLM for more than is free.
    thousandths = 0
    for mib in range(7472, 7984, 16):  # 7.3 to 7.8 GiB: the model and its layout model fit, with little to spare
        card = mib * 1024**2
        fraction = catalog.planned_fraction(card)
        assert _fraction(catalog.backend_parameters(card)) == fraction
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


def test_the_gpustack_guide_shows_the_parameters_the_catalog_carries():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "gpustack.md").read_text(encoding="utf-8")
    block = re.search(r"backend_parameters: (.*?)```", guide, re.S)
    assert block, "docs/gpustack.md lost its backend_parameters example"
    shown = block.group(1).split()
    for entry in catalog.builtin_catalog_entries():
        assert shown == entry.backend_parameters
