"""Model repo resolution for the four real-world layouts, and errors that say what to do."""

import json
import os
from pathlib import Path

import pytest

from tests.fixtures.tiny_vlm import write_fake_vlm_config
from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.model_repo import ModelRepoError, resolve_model_repo


def layout_model(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "inference.yml").write_text(f"Global:\n  model_name: {path.name}\n")
    return path


def test_root_layout(tmp_path):
    repo = tmp_path / "PaddleOCR-VL"
    write_fake_vlm_config(repo)
    layout_model(repo / "PP-DocLayoutV2")
    resolved = resolve_model_repo(repo)
    assert resolved.vlm_dir == repo.resolve()
    assert resolved.layout_dir == (repo / "PP-DocLayoutV2").resolve()
    assert (resolved.kind, resolved.version, resolved.canonical_name) == ("root", "0.9B", "PaddleOCR-VL-0.9B")
    assert resolved.chat_template == "paddleocr_vl_0.9b.jinja"


def test_early_subdirectory_is_preferred_like_paddlex(tmp_path):
    repo = tmp_path / "PaddleOCR-VL"
    write_fake_vlm_config(repo / "PaddleOCR-VL-0.9B")
    layout_model(repo / "PP-DocLayoutV2")
    resolved = resolve_model_repo(repo)
    assert resolved.vlm_dir == (repo / "PaddleOCR-VL-0.9B").resolve()
    assert resolved.layout_dir == (repo / "PP-DocLayoutV2").resolve()
    assert resolved.kind == "subdir"


def hf_cache(tmp_path: Path) -> tuple[Path, Path]:
    """A HuggingFace cache entry whose snapshot files are symlinks into blobs/, as huggingface_hub writes."""
    entry = tmp_path / "hub" / "models--PaddlePaddle--PaddleOCR-VL"
    staging = tmp_path / "staging"
    write_fake_vlm_config(staging)
    layout_model(staging / "PP-DocLayoutV2")
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = entry / "snapshots" / rev
    for i, src in enumerate(sorted(p for p in staging.rglob("*") if p.is_file())):
        blob = entry / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(src.read_bytes())
        link = snapshot / src.relative_to(staging)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(rev)
    return entry, snapshot


@pytest.mark.parametrize("which", ["entry", "snapshot", "hub"])
def test_huggingface_cache(tmp_path, which):
    entry, snapshot = hf_cache(tmp_path)
    given = {"entry": entry, "snapshot": snapshot, "hub": entry.parent}[which]
    resolved = resolve_model_repo(given)
    assert resolved.vlm_dir == snapshot.resolve()
    assert resolved.kind == "hf_cache"
    assert resolved.layout_dir == (snapshot / "PP-DocLayoutV2").resolve()


def test_modelscope_cache_and_version_from_its_name(tmp_path):
    repo = tmp_path / "cache" / "model_scope" / "PaddlePaddle" / "PaddleOCR-VL-1___5"
    write_fake_vlm_config(repo, version="1.5")
    resolved = resolve_model_repo(repo)
    assert resolved.kind == "modelscope"
    assert resolved.version == "1.5"
    assert resolved.canonical_name == "PaddleOCR-VL-1.5-0.9B"
    assert resolved.layout_dir is None


def test_version_override_and_explicit_layout_dir_outside_the_root(tmp_path):
    repo = tmp_path / "repo"
    write_fake_vlm_config(repo)
    outside = layout_model(tmp_path / "elsewhere" / "PP-DocLayoutV3")
    resolved = resolve_model_repo(repo, layout_model_dir=outside, version="1.6")
    assert resolved.version == "1.6"
    assert resolved.layout_dir == outside.resolve()
    assert resolved.layout_model_name == "PP-DocLayoutV3"


def test_remote_code_is_detected_from_auto_map(tmp_path):
    repo = tmp_path / "repo"
    write_fake_vlm_config(repo)
    config = json.loads((repo / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_paddleocr_vl.PaddleOCRVLConfig"}
    (repo / "config.json").write_text(json.dumps(config))
    assert resolve_model_repo(repo).has_remote_code


def test_missing_config_names_every_place_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRepoError) as err:
        resolve_model_repo(tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty" / "config.json") in message
    assert str(tmp_path / "empty" / "PaddleOCR-VL-0.9B" / "config.json") in message
    assert "Pass the directory that holds config.json" in message


def test_missing_path(tmp_path):
    with pytest.raises(ModelRepoError, match="does not exist"):
        resolve_model_repo(tmp_path / "nope")


def test_wrong_architecture_points_to_the_plain_backend(tmp_path):
    write_fake_vlm_config(tmp_path / "llama", architecture="LlamaForCausalLM")
    with pytest.raises(ModelRepoError, match="LlamaForCausalLM.*plain vllm backend"):
        resolve_model_repo(tmp_path / "llama")


def test_config_symlink_escaping_the_root_is_refused(tmp_path):
    write_fake_vlm_config(tmp_path / "real")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").symlink_to(tmp_path / "real" / "config.json")
    with pytest.raises(ModelRepoError, match="outside the model directory"):
        resolve_model_repo(repo)


def test_layout_symlink_escaping_the_root_is_refused(tmp_path):
    repo = tmp_path / "repo"
    write_fake_vlm_config(repo)
    outside = layout_model(tmp_path / "outside" / "PP-DocLayoutV2")
    (repo / "PP-DocLayoutV2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelRepoError, match="layout model PP-DocLayoutV2.*outside the model directory"):
        resolve_model_repo(repo)


def test_dotdot_in_the_given_path_is_fine_when_it_names_the_repo(tmp_path):
    repo = tmp_path / "repo"
    write_fake_vlm_config(repo)
    assert resolve_model_repo(tmp_path / "repo" / ".." / "repo").vlm_dir == repo.resolve()
