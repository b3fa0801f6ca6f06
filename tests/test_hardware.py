"""Probing (cpuinfo, cgroups, NVML) and hardware files. NVML is the one part that cannot run here: the
tests patch the real pynvml module's functions and raise its real exception classes."""

import contextlib
import json

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.hardware import catalog, files, probe
from tests.conftest import make_hardware

GiB = 1024**3

CPUINFO_X86 = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-12700
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx_vnni

processor\t: 1
model name\t: Intel(R) Core(TM) i7-12700
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx_vnni

processor\t: 2
model name\t: Intel(R) Core(TM) i7-12700
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx_vnni
"""

CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp i8mm sve
CPU part\t: 0xd40
"""


def test_cpuinfo_x86_counts_physical_cores_and_keeps_useful_flags():
    model, physical, flags = probe._parse_cpuinfo(CPUINFO_X86)
    assert model == "Intel(R) Core(TM) i7-12700"
    assert physical == 2  # (0,0) twice + (0,1): two cores, three threads
    assert flags == ("avx", "avx2", "avx_vnni", "f16c", "fma", "sse4_2")


def test_cpuinfo_arm_reports_neon():
    _, physical, flags = probe._parse_cpuinfo(CPUINFO_ARM)
    assert physical is None  # no core ids: probe falls back to psutil
    assert {"neon", "asimd", "asimddp", "i8mm", "sve"} <= set(flags)


def test_cgroup_v2_limit_applies_along_the_path(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    leaf = tmp_path / "user.slice" / "app.scope"
    leaf.mkdir(parents=True)
    (tmp_path / "user.slice" / "memory.max").write_text("8589934592\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.current").write_text(str(3 * GiB))
    (leaf / "memory.stat").write_text("anon 1\ninactive_file 1073741824\n")
    (leaf / "cpu.max").write_text("150000 100000\n")
    proc = "0::/user.slice/app.scope\n"
    assert probe.cgroup_memory(str(tmp_path), proc) == (8 * GiB, 2 * GiB)
    assert probe.cgroup_cpu_limit(str(tmp_path), proc) == 2  # 1.5 CPUs rounded up


def test_cgroup_v1_limit(tmp_path):
    node = tmp_path / "memory" / "docker" / "abc"
    node.mkdir(parents=True)
    (node / "memory.limit_in_bytes").write_text(str(4 * GiB))
    (node / "memory.usage_in_bytes").write_text(str(GiB))
    (node / "memory.stat").write_text("total_inactive_file 0\n")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's 'no limit'
    proc = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n"
    assert probe.cgroup_memory(str(tmp_path), proc) == (4 * GiB, GiB)


def test_no_cgroup_limit(tmp_path):
    assert probe.cgroup_memory(str(tmp_path), "") == (None, None)


def test_probe_of_this_machine_is_sane():
    hw = probe.probe()
    assert hw.cpu.logical_cores >= hw.cpu.physical_cores >= 1
    assert 0 < hw.memory.available_bytes <= hw.memory.total_bytes
    assert hw.disk.free_bytes > 0
    assert files.hardware_from_dict(hw.to_dict()) == hw


def test_no_nvidia_library_means_no_gpus(monkeypatch):
    # The real pynvml on this machine: nvmlInit raises NVMLError_LibraryNotFound.
    monkeypatch.setattr(probe, "_nvidia_driver_present", lambda: True)
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()
    assert probe.probe_gpus() == ()


class FakeMemory:
    def __init__(self, total, free, reserved=0):
        self.total, self.free, self.used, self.reserved = total, free, total - free, reserved


def fake_nvml(monkeypatch, devices, fail_on=None):
    """Patch the real pynvml module so it answers like a driver with `devices`."""
    monkeypatch.setattr(probe, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(devices))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)

    def name(handle):
        if handle == fail_on:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return devices[handle]["name"]

    def memory_info(handle, version=None):
        d = devices[handle]
        return FakeMemory(d["total"], d["free"], d.get("reserved", 0) if version else 0)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", name)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", memory_info)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCudaComputeCapability", lambda h: devices[h]["cc"])


def test_nvml_probe_reads_memory_and_capability(monkeypatch):
    fake_nvml(
        monkeypatch,
        [
            {
                "name": "NVIDIA GeForce RTX 4090",
                "total": 25_757_220_864,
                "free": 20 * GiB,
                "cc": (8, 9),
                "reserved": 446 * 2**20,
            },
            {"name": "NVIDIA L4", "total": 24_152_899_584, "free": 24_000_000_000, "cc": (8, 9)},
        ],
    )
    gpus = probe.probe_gpus()
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA L4"]
    assert gpus[0].memory_free_bytes == 20 * GiB  # other processes' use shows as less free memory
    assert gpus[0].compute_capability == "8.9"
    assert gpus[0].cuda_total_bytes == 25_757_220_864 - 446 * 2**20
    assert gpus[0].memory_bandwidth_gbps == 1008  # from the catalog
    assert gpus[1].cuda_total_bytes is None


def test_nvml_error_mid_probe_is_one_sentence(monkeypatch):
    fake_nvml(monkeypatch, [{"name": "A", "total": 1, "free": 1, "cc": (8, 0)}] * 2, fail_on=1)
    with pytest.raises(QwenDeployError, match=r"NVML failed while reading GPU 1 .*--no-gpu"):
        probe.probe_gpus()


def test_hardware_file_round_trip(tmp_path):
    hw = catalog.simulate(make_hardware(), gpus=("2xL4",))
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(hw.to_dict()))
    assert files.load_hardware(path) == hw


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not valid YAML"),
        ("[]", "expected a mapping"),
        ('{"schema": "other"}', "schema"),
        ('{"schema": "qwen-deploy/hardware/v1"}', "missing 'cpu'"),
    ],
)
def test_malformed_hardware_files(tmp_path, content, match):
    path = tmp_path / "hw.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match=match):
        files.load_hardware(path)


def test_missing_hardware_file():
    with pytest.raises(UsageError, match="does not exist"):
        files.load_hardware("/nonexistent/hw.yaml")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_any_document_loads_or_is_a_usage_error(doc):
    with contextlib.suppress(UsageError):
        files.hardware_from_dict(doc)


@given(st.sampled_from(["cpu", "memory", "gpus", "disk"]), json_values)
def test_corrupting_one_section_is_a_usage_error(section, value):
    good = catalog.simulate(make_hardware(), gpus=("RTX 4090",)).to_dict()
    good[section] = value
    with contextlib.suppress(UsageError):
        files.hardware_from_dict(good)


def test_catalog_lookup_and_suggestions():
    assert catalog.lookup_gpu("rtx4090").name == "NVIDIA GeForce RTX 4090"
    assert catalog.lookup_gpu("NVIDIA H100 80GB HBM3").memory_total_bytes == 85_520_809_984
    with pytest.raises(UsageError, match="Did you mean 'RTX 4090'"):
        catalog.lookup_gpu("RTX 4099")
    count, entry = catalog.parse_gpu_spec("2xL4")
    assert (count, entry.key) == (2, "L4")


def test_catalog_covers_the_required_gpus():
    required = [
        "T4",
        "RTX 3060 12GB",
        "RTX 3090",
        "RTX 4060",
        "RTX 4070",
        "RTX 4080",
        "RTX 4090",
        "RTX 5090",
        "A10G",
        "L4",
        "L40S",
        "A100 40GB",
        "A100 80GB",
        "H100 80GB",
        "H200",
    ]
    for name in required:
        entry = catalog.lookup_gpu(name)
        assert entry.memory_total_bytes > 0 and entry.memory_bandwidth_gbps > 0 and entry.source


def test_simulate_replaces_parts():
    base = make_hardware(ram_gib=16)
    hw = catalog.simulate(base, gpus=("RTX 4090", "2xL4"), ram="64GiB", cpus=4)
    assert [g.index for g in hw.gpus] == [0, 1, 2]
    assert hw.memory.total_bytes == 64 * GiB and hw.cpu.physical_cores == 4
    generic = catalog.simulate(base, vram="16GB")
    assert generic.gpus[0].memory_total_bytes == 16 * 10**9 and generic.gpus[0].compute_capability == "8.9"
    assert catalog.simulate(hw, no_gpu=True).gpus == ()
    with pytest.raises(UsageError, match="contradicts"):
        catalog.simulate(base, gpus=("L4",), no_gpu=True)
    with pytest.raises(UsageError, match="size"):
        catalog.simulate(base, ram="lots")


def test_bandwidth_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    """The first probe measures memory bandwidth and keeps it (machine.json); later probes read it; a file
    for another machine, or a broken one, is measured again; `probe --measure` always measures."""
    import json

    from qwen_deploy.hardware import probe as p

    monkeypatch.setenv("QWEN_DEPLOY_CACHE_DIR", str(tmp_path))
    kept_file = tmp_path / "machine.json"
    first = p.probe()
    measured = first.cpu.memory_bandwidth_gbps
    assert measured and measured > 0
    assert json.loads(kept_file.read_text()) == {"machine": p._machine_key(first), "memory_bandwidth_gbps": measured}
    stamp = kept_file.stat().st_mtime_ns
    assert p.probe().cpu.memory_bandwidth_gbps == measured and kept_file.stat().st_mtime_ns == stamp  # read
    kept_file.write_text(json.dumps({"machine": "another CPU|1|1|1", "memory_bandwidth_gbps": 99999}))
    again = p.probe().cpu.memory_bandwidth_gbps
    assert again != 99999 and json.loads(kept_file.read_text())["machine"] == p._machine_key(first)
    kept_file.write_text("{not json")
    assert p.probe().cpu.memory_bandwidth_gbps > 0 and json.loads(kept_file.read_text())["memory_bandwidth_gbps"] > 0
    stamp = kept_file.stat().st_mtime_ns
    p.probe(measure=True)
    assert kept_file.stat().st_mtime_ns != stamp
