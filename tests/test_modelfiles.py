"""Getting the weights onto this machine and checking a GGUF before an engine gets it."""

from __future__ import annotations

import pytest

from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.model.gguf import spec_from_gguf
from qwen_deploy.model.profiles import load_profile

QWEN = load_profile("qwen3-4b-instruct-2507")


def test_check_gguf_refuses_another_model(small_gguf, synthetic_gguf):
    from qwen_deploy.modelfiles import check_gguf

    with pytest.raises(UsageError, match="is not the model the plan is for"):
        check_gguf(small_gguf, spec_from_gguf(synthetic_gguf))
    assert check_gguf(small_gguf, spec_from_gguf(small_gguf)).layers == 2


def test_not_cached_and_offline_names_what_to_get(tmp_path):
    from qwen_deploy.modelfiles import fetch_gguf

    art = QWEN.artifact("gguf", "q4_k_m")
    with pytest.raises(QwenDeployError) as err:
        fetch_gguf(art, tmp_path / "hf")
    text = str(err.value)
    assert "Qwen3-4B-Instruct-2507-Q4_K_M.gguf from unsloth/Qwen3-4B-Instruct-2507-GGUF" in text
    assert "--revision a06e946bb6b655725eafa393f4a9745d460374c9" in text


def test_fetch_snapshot_uses_the_cache_before_checking_disk(tmp_path, monkeypatch):
    """A complete cached checkpoint is used as is, even online and even when the disk could not hold it again."""
    from dataclasses import replace

    from qwen_deploy.modelfiles import fetch_snapshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    snap = tmp_path / "hf" / "models--Qwen--Qwen3-4B-Instruct-2507" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    art = replace(QWEN.artifact("safetensors", "bf16"), download_bytes=10**15)  # a petabyte: no disk holds it
    assert fetch_snapshot(art, tmp_path / "hf") == "Qwen/Qwen3-4B-Instruct-2507"
    (snap / "model.safetensors").unlink()
    with pytest.raises(QwenDeployError, match="not enough disk space"):
        fetch_snapshot(art, tmp_path / "hf")
