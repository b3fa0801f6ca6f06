"""`probe` on a Mac, where this machine cannot go: macOS's `sysctl` is the one stand-in, a script on PATH that
answers `sysctl -n KEY` the way macOS does. What it imitates (public reports of real Macs, quoted):
- `sysctl -n machdep.cpu.brand_string` prints the chip, 'Apple M2'; `sysctl -n hw.memsize` the RAM in bytes,
  '17179869184' on a 16 GB Mac; `hw.physicalcpu` / `hw.logicalcpu` the core counts ('8');
- `sysctl -n iogpu.wired_limit_mb` prints '0' while the Metal limit is the system default ("0 means the
  kernel default", scripts that read it: `CUR="$(sysctl -n iogpu.wired_limit_mb 2>/dev/null || echo 0)"`),
  and the MiB the user set otherwise ('25000');
- a key the machine lacks: `sysctl: unknown oid 'KEY'` on stderr, nothing on stdout, exit status 1;
- `hw.optional.arm.FEAT_DotProd` / `FEAT_I8MM` / `hw.optional.neon` print '1' on Apple Silicon.
"""

from __future__ import annotations

import os
import platform

import pytest

from qwen_deploy.hardware import probe

GiB, MiB = 1024**3, 1024**2


def fake_sysctl(tmp_path, monkeypatch, values: dict[str, str], macos: str = "14.5"):
    lines = [f"  {key}) echo '{value}' ;;" for key, value in values.items()]
    script = "#!/bin/sh\n[ \"$1\" = -n ] || exit 2\ncase \"$2\" in\n" + "\n".join(lines) + (
        "\n  *) echo \"sysctl: unknown oid '$2'\" >&2; exit 1 ;;\nesac\n"
    )  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sysctl").write_text(script)
    (bin_dir / "sysctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "mac_ver", lambda: (macos, ("", "", ""), "arm64"))


M2_16GB = {
    "machdep.cpu.brand_string": "Apple M2",
    "hw.memsize": "17179869184",
    "hw.physicalcpu": "8",
    "hw.logicalcpu": "8",
    "iogpu.wired_limit_mb": "0",
    "hw.optional.neon": "1",
    "hw.optional.arm.FEAT_DotProd": "1",
    "hw.optional.arm.FEAT_I8MM": "0",
}


def test_a_16gb_m2_is_a_metal_gpu_with_the_default_working_set(tmp_path, monkeypatch):
    fake_sysctl(tmp_path, monkeypatch, M2_16GB)
    hw = probe.probe()
    assert (hw.cpu.model, hw.cpu.physical_cores, hw.cpu.flags) == ("Apple M2", 8, ("dotprod", "neon"))
    assert hw.memory.total_bytes == 16 * GiB
    [gpu] = hw.gpus
    # macOS 14: 2/3 of 16 GiB = 11,453,246,122 B, the 'recommendedMaxWorkingSetSize = 11453.25 MB' of the logs
    assert (gpu.backend, gpu.name, gpu.memory_total_bytes) == ("metal", "Apple M2", 16 * GiB * 2 // 3)
    assert gpu.memory_bandwidth_gbps == 100.0  # the catalog's M2 (Apple: 100 GB/s)
    from qwen_deploy.hardware.files import hardware_from_dict

    assert hardware_from_dict(hw.to_dict()) == hw  # probe --json then plan --hardware: the same Mac


def test_a_raised_wired_limit_is_what_metal_allows(tmp_path, monkeypatch):
    fake_sysctl(tmp_path, monkeypatch, {**M2_16GB, "iogpu.wired_limit_mb": "14000"})
    assert probe.probe().gpus[0].memory_total_bytes == 14000 * MiB


def test_macos_26_gives_metal_more(tmp_path, monkeypatch):
    fake_sysctl(tmp_path, monkeypatch, M2_16GB, macos="26.1")
    assert probe.probe().gpus[0].memory_total_bytes == 12124 * MiB  # floor(16384 × 0.74): 'MTL0 (12124 MiB'


def test_a_mac_without_the_wired_limit_key(tmp_path, monkeypatch):
    """Older macOS has no iogpu.wired_limit_mb ('unknown oid'): the default share applies."""
    values = {k: v for k, v in M2_16GB.items() if k != "iogpu.wired_limit_mb"}
    fake_sysctl(tmp_path, monkeypatch, values, macos="13.6")
    assert probe.probe().gpus[0].memory_total_bytes == 16 * GiB * 2 // 3


def test_an_intel_mac_has_no_metal_gpu_to_plan_for(tmp_path, monkeypatch):
    fake_sysctl(tmp_path, monkeypatch, {**M2_16GB, "machdep.cpu.brand_string": "Intel(R) Core(TM) i7-9750H CPU"})
    assert probe.probe().gpus == ()


@pytest.mark.parametrize("memsize", ["24696061952"])  # a 23 GB size no Apple chip was sold with: no bandwidth
def test_an_unlisted_memory_size_still_probes(tmp_path, monkeypatch, memsize):
    fake_sysctl(tmp_path, monkeypatch, {**M2_16GB, "hw.memsize": memsize})
    gpu = probe.probe().gpus[0]
    assert gpu.memory_bandwidth_gbps is None and gpu.backend == "metal"
