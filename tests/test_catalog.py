"""The GPU catalog and --gpu names: consumer and laptop NVIDIA cards, Apple Silicon with its memory, counts
written one unambiguous way, and clear errors for the rest. The shipped JSON copy of the profiles matches
their YAML."""

from __future__ import annotations

import json

import pytest
import yaml

from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.catalog import (
    apple_gpu,
    find_catalog_gpu,
    gpu_catalog,
    metal_working_set_bytes,
    parse_gpu_spec,
    simulate,
)
from qwen_deploy.resources import compile_profiles, profiles_dir
from tests.conftest import make_hardware

GiB, MiB = 1024**3, 1024**2


def test_compiled_profiles_match_the_yaml():
    """plan reads profiles/compiled.json; it must be the YAML, parsed (scripts/compile-profiles writes it)."""
    assert json.loads((profiles_dir() / "compiled.json").read_text()) == json.loads(json.dumps(compile_profiles()))


@pytest.mark.parametrize(
    "spec,count,key",
    [
        ("GTX 1650", 1, "GTX 1650"),  # the X of GTX is not a multiplier ('unknown GPU GT' before)
        ("RTX 3080", 1, "RTX 3080 10GB"),  # nor the X of RTX (count 3080 of 'RT' before)
        ("rtx 3080 12gb", 1, "RTX 3080 12GB"),
        ("RTX 4060 Laptop", 1, "RTX 4060 Laptop"),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", 1, "RTX 4060 Laptop"),  # as nvidia-smi prints it
        ("2xL4", 2, "L4"),
        ("2 x L4", 2, "L4"),
        ("2x L4", 2, "L4"),
        ("L4x2", 2, "L4"),
        ("L4 x2", 2, "L4"),
        ("L4 x 2", 2, "L4"),
        ("8×H100", 8, "H100 80GB"),
        ("RTX 4090 x2", 2, "RTX 4090"),
    ],
)
def test_gpu_names_and_counts(spec, count, key):
    n, entry = parse_gpu_spec(spec)
    assert (n, entry.key) == (count, key)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("2x2xL4", "more than one count"),
        ("0xL4", "the count must be from 1 to 64"),
        ("65xL4", "the count must be from 1 to 64"),
        ("Quadro RTX 8000", "unknown GPU 'Quadro RTX 8000'. Did you mean"),
        ("Radeon RX 7900", "plans NVIDIA GPUs (CUDA) and Apple Silicon"),
        ("", "names no GPU"),
        ("RTX\n4090", "line break"),
    ],
)
def test_bad_gpu_names_are_one_sentence(spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_gpu_spec(spec)


def test_catalog_entries_are_whole():
    """Every entry has a name, a memory size NVML could report, a compute capability and a bandwidth; no
    normalised name points at two cards of different memory unless they share the NVML name (probe picks by
    memory then)."""
    entries = gpu_catalog()
    assert len(entries) >= 70
    for e in entries:
        assert e.memory_total_bytes % MiB == 0 and e.memory_total_bytes >= GiB, e.key
        assert e.memory_bandwidth_gbps > 0 and e.source, e.key
        major, _, minor = e.compute_capability.partition(".")
        assert major.isdigit() and minor.isdigit(), e.key
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys))


def test_cards_sharing_a_name_are_told_apart_by_memory():
    """nvidia-smi prints 'NVIDIA GeForce RTX 3060' for the 8 GB and the 12 GB card: the probed memory decides."""
    assert find_catalog_gpu("NVIDIA GeForce RTX 3060").key == "RTX 3060 12GB"
    assert find_catalog_gpu("NVIDIA GeForce RTX 3060", memory_bytes=8192 * MiB).key == "RTX 3060 8GB"
    assert find_catalog_gpu("NVIDIA GeForce RTX 4060 Ti", memory_bytes=8188 * MiB).key == "RTX 4060 Ti 8GB"


# ----------------------------------------------------------------------------- Apple Silicon


def test_metal_working_set_follows_the_public_logs():
    """Each legacy-macOS point of tests/data/metal_working_set.yaml (real logs, quoted there) to the MiB:
    2/3 of RAM up to 32 GB (16 GB -> 10922.67 MiB), 3/4 from 36 GB (64 GB -> 49152 MiB)."""
    data = yaml.safe_load((profiles_dir().parent / "tests" / "data" / "metal_working_set.yaml").read_text())
    points = [p for p in data["points"] if p["regime"] == "legacy" and p["kind"] == "log"]
    assert len(points) >= 6
    for p in points:
        assert abs(metal_working_set_bytes(p["ram_gb"] * GiB) / MiB - p["mib"]) <= 1.0, p["where"]
    assert metal_working_set_bytes(16 * GiB, wired_limit_mb=14000) == 14000 * MiB  # iogpu.wired_limit_mb


def test_apple_specs():
    m2 = apple_gpu("M2 16GB")
    # 16 GB: 16 GiB × 2/3 = 11,453,246,122 B (10922.67 MiB, '11453.25 MB'); 100 GB/s (Apple's figure)
    assert (m2.backend, m2.memory_total_bytes, m2.memory_bandwidth_gbps) == ("metal", 11_453_246_122, 100.0)
    assert m2.unified_memory_bytes == 16 * GiB
    assert apple_gpu("M3 Max 36GB").memory_bandwidth_gbps == 300  # the 30-core part: only it has 36 GB
    assert apple_gpu("M3 Max 64GB").memory_bandwidth_gbps == 400
    assert apple_gpu("apple m4 pro 24 gb").memory_total_bytes == 24 * GiB * 2 // 3
    assert apple_gpu("RTX 4090") is None
    with pytest.raises(UsageError, match="Apple sold the M2 with 8, 16, 24 GB"):
        apple_gpu("M2 12GB")
    with pytest.raises(UsageError, match="name it, as M3 8GB"):
        apple_gpu("Apple M3")


def test_a_mac_described_by_its_chip_is_that_mac():
    hw = simulate(make_hardware(ram_gib=64), gpus=("M2 16GB",))
    assert hw.memory.total_bytes == 16 * GiB  # the unified memory is the machine's RAM
    assert [(g.backend, g.name) for g in hw.gpus] == [("metal", "Apple M2")]
    assert simulate(make_hardware(), gpus=("M2 16GB",), ram="12GiB").memory.total_bytes == 12 * GiB
    with pytest.raises(UsageError, match="one Mac"):
        simulate(make_hardware(), gpus=("M2 16GB", "RTX 4090"))
