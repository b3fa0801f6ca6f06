"""Shared fixtures: an isolated state/cache per test, synthetic GGUF files, real small GGUF models, and
hardware descriptions for the planner."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_deploy.hardware.types import CPU, GPU, Disk, Hardware, Memory
from tests.synthetic_gguf import QWEN3_4B_ATTENTION, SyntheticShape, write_synthetic_gguf

GiB = 1024**3


@pytest.fixture(scope="session", autouse=True)
def _machine_cache(tmp_path_factory):
    """What probe measures once per machine (memory bandwidth) is kept in a cache shared by the whole session
    (not the user's): measured by the first test that probes, read by the rest."""
    import os

    os.environ.setdefault("QWEN_DEPLOY_CACHE_DIR", str(tmp_path_factory.mktemp("qwen-deploy-cache")))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_DEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synthetic_gguf(tmp_path_factory) -> Path:
    """Qwen3-4B's attention geometry (36 layers, 8 KV heads of 128, vocab 151936) with hidden size 64."""
    return write_synthetic_gguf(tmp_path_factory.mktemp("gguf") / "qwen3-shaped.gguf", QWEN3_4B_ATTENTION)


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory) -> Path:
    """A 2-layer Qwen3 model with a small vocabulary: quick to load."""
    shape = SyntheticShape(layers=2, heads=4, kv_heads=2, head_dim=64, hidden=128, ffn=256, vocab=1024, context=8192)
    return write_synthetic_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen3.gguf", shape)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from tests.real_models import SMOLLM2, fetch

    return fetch(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3() -> Path:
    from tests.real_models import GEMMA3, fetch

    return fetch(GEMMA3)


def make_hardware(
    ram_gib: float = 32,
    gpus: tuple[GPU, ...] = (),
    cores: int = 8,
    flags: tuple[str, ...] = ("avx2", "fma", "f16c"),
    available_gib: float | None = None,
) -> Hardware:
    total = int(ram_gib * GiB)
    return Hardware(
        cpu=CPU(model="Test CPU", physical_cores=cores, logical_cores=cores * 2, flags=flags),
        memory=Memory(total_bytes=total, available_bytes=int((available_gib or ram_gib) * GiB)),
        gpus=gpus,
        disk=Disk(path="/models", free_bytes=500 * GiB),
    )


@pytest.fixture
def hardware_factory():
    return make_hardware


def pytest_collection_modifyitems(config, items):
    # Engine tests start real servers; run them last so the fast tests report first.
    items.sort(key=lambda item: 1 if item.get_closest_marker("engine") else 0)
