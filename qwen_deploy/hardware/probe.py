"""Probing this machine: CPU (/proc/cpuinfo, affinity, cgroup quota), RAM (/proc/meminfo, cgroup v1/v2
limits), NVIDIA GPUs (NVML, imported only when a driver is present), the disk models are stored on.

Linux is read from /proc and /sys directly (cheap, and it sees cgroup limits); psutil and NVML are imported
only when needed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from dataclasses import replace
from pathlib import Path

from qwen_deploy.errors import QwenDeployError
from qwen_deploy.hardware.catalog import find_catalog_gpu, gpu_catalog
from qwen_deploy.hardware.types import CPU, GPU, Disk, Hardware, Memory
from qwen_deploy.paths import models_dir

# CPU flags that matter to llama.cpp kernels; the rest of /proc/cpuinfo's list is noise for planning.
_INTERESTING_FLAGS = re.compile(
    r"^(avx|avx2|avx_vnni|avx512\w*|amx\w*|fma|f16c|sse4_2|neon|asimd|asimddp|sve|sve2|i8mm|bf16|dotprod)$"
)


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> tuple[str, int | None, tuple[str, ...]]:
    """(model name, physical cores or None, interesting flags) from /proc/cpuinfo text."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if core_id is not None:
                cores.add((physical_id or "0", core_id))
            physical_id = core_id = None
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Hardware", "Model") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
    found = tuple(sorted(f for f in flags if _INTERESTING_FLAGS.match(f)))
    if "asimd" in found and "neon" not in found:
        found = tuple(sorted({*found, "neon"}))  # Linux calls arm64 NEON 'asimd'
    return model, (len(cores) or None), found


def _cgroup_paths(proc_cgroup: str | None = None) -> dict[str, str]:
    """controller -> cgroup path of this process ('' key for cgroup v2), from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    text = proc_cgroup if proc_cgroup is not None else (_read("/proc/self/cgroup") or "")
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # cgroup v1 writes 'no limit' as a huge page-rounded number (9223372036854771712).
    return value if 0 < value < 2**60 else None


def cgroup_memory(root: str = "/sys/fs/cgroup", proc_cgroup: str | None = None) -> tuple[int | None, int | None]:
    """(limit, usage not counting reclaimable page cache) for this process's cgroup, v2 or v1.

    The smallest limit on the path from this cgroup up to the root applies.
    """
    paths = _cgroup_paths(proc_cgroup)
    base = Path(root)
    if "" in paths and (base / "cgroup.controllers").exists():  # v2 unified hierarchy
        rel = paths[""].strip("/")
        limits, usage = [], None
        node = base / rel if rel else base
        while True:
            lim = _limit(_read(node / "memory.max"))
            if lim is not None:
                limits.append(lim)
            if usage is None:
                current = _limit(_read(node / "memory.current"))
                if current is not None:
                    usage = current - _stat_value(node / "memory.stat", "inactive_file")
            if node == base:
                break
            node = node.parent
        return (min(limits) if limits else None), usage
    mem_path = paths.get("memory")
    if mem_path is not None and (base / "memory").is_dir():  # v1
        rel = mem_path.strip("/")
        limits, usage = [], None
        node = base / "memory" / rel
        if not node.exists():
            node = base / "memory"  # namespaced: our cgroup is the mount's root
        while True:
            lim = _limit(_read(node / "memory.limit_in_bytes"))
            if lim is not None:
                limits.append(lim)
            if usage is None:
                current = _limit(_read(node / "memory.usage_in_bytes"))
                if current is not None:
                    usage = current - _stat_value(node / "memory.stat", "total_inactive_file")
            if node == base / "memory":
                break
            node = node.parent
        return (min(limits) if limits else None), usage
    return None, None


def _stat_value(path: Path, key: str) -> int:
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str | None = None) -> int | None:
    """Whole CPUs this cgroup may use (quota / period, rounded up), or None when unlimited."""
    import math

    paths = _cgroup_paths(proc_cgroup)
    base = Path(root)
    if "" in paths and (base / "cgroup.controllers").exists():
        parts = (_read(base / paths[""].strip("/") / "cpu.max") or "").split()
        if parts and parts[0] != "max":
            period = int(parts[1]) if len(parts) > 1 else 100_000
            return max(1, math.ceil(int(parts[0]) / period))
        return None
    cpu_path = paths.get("cpu") or paths.get("cpu,cpuacct")
    for rel in ([cpu_path.strip("/")] if cpu_path else []) + [""]:
        node = base / "cpu" / rel
        quota, period = _read(node / "cpu.cfs_quota_us"), _read(node / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            return max(1, math.ceil(int(quota) / int(period)))
    return None


def probe_disk(path: Path | None = None) -> Disk:
    path = path or models_dir()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    st = os.statvfs(existing)
    return Disk(path=str(path), free_bytes=st.f_bavail * st.f_frsize)


def probe_cpu() -> CPU:
    text = _read("/proc/cpuinfo")
    model, physical, flags = _parse_cpuinfo(text) if text else ("", None, ())
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        logical = os.cpu_count() or 1
    if physical is None:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    total_logical = os.cpu_count() or logical
    # When affinity or a quota allows fewer CPUs than exist, scale physical cores by the same share.
    if logical < total_logical:
        physical = max(1, round(physical * logical / total_logical))
    quota = cgroup_cpu_limit()
    if quota is not None:
        logical, physical = min(logical, quota), min(physical, quota)
    return CPU(
        model=model or platform.processor() or platform.machine(),
        physical_cores=min(physical, logical),
        logical_cores=logical,
        flags=flags,
    )


def probe_memory() -> Memory:
    meminfo = _read("/proc/meminfo")
    if meminfo:
        values = {}
        for line in meminfo.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
        total = values["MemTotal"]
        available = values.get("MemAvailable", values.get("MemFree", 0))
    else:
        import psutil

        vm = psutil.virtual_memory()
        total, available = vm.total, vm.available
    limit, usage = cgroup_memory()
    if limit is not None and limit < total:
        total = limit
        if usage is not None:
            available = min(available, max(0, limit - usage))
    return Memory(total_bytes=total, available_bytes=min(available, total))


def _nvidia_driver_present() -> bool:
    """Cheap check that lets a machine without an NVIDIA driver skip importing NVML at all."""
    if platform.system() != "Linux":
        return True  # no cheap check elsewhere: ask NVML
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def probe_gpus() -> tuple[GPU, ...]:
    """NVIDIA GPUs through NVML. No driver or no NVML library means no GPUs, not an error.

    An NVML failure after initialisation (a GPU fell off the bus, say) is an error: a partial list would
    make the plan silently wrong.
    """
    if not _nvidia_driver_present():
        return ()
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        # Library or driver missing, or no permission: this machine has no usable NVIDIA GPU.
        if isinstance(
            exc,
            (
                pynvml.NVMLError_LibraryNotFound,
                pynvml.NVMLError_DriverNotLoaded,
                pynvml.NVMLError_NoPermission,
                pynvml.NVMLError_Uninitialized,
            ),
        ) or getattr(exc, "value", None) in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
            return ()
        raise QwenDeployError(
            f"NVML could not start ({exc}); check `nvidia-smi`, or plan without GPUs: --no-gpu."
        ) from exc
    catalog = None
    gpus = []
    index = -1
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # nvidia-ml-py < 11.5 returned bytes
                name = name.decode()
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            cuda_total = None
            try:
                # v2 reports driver-reserved memory separately; CUDA sees total - reserved.
                mem2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
                if getattr(mem2, "reserved", 0):
                    cuda_total = int(mem2.total) - int(mem2.reserved)
            except (pynvml.NVMLError, AttributeError, TypeError):
                pass
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            if catalog is None:
                catalog = gpu_catalog()
            entry = find_catalog_gpu(name, catalog, int(mem.total))
            gpus.append(
                GPU(
                    index=index,
                    name=name,
                    memory_total_bytes=int(mem.total),
                    memory_free_bytes=int(mem.free),
                    compute_capability=f"{major}.{minor}",
                    memory_bandwidth_gbps=entry.memory_bandwidth_gbps if entry else None,
                    cuda_total_bytes=cuda_total,
                )
            )
    except pynvml.NVMLError as exc:
        raise QwenDeployError(
            f"NVML failed while reading GPU {index} ({exc}); check `nvidia-smi`, or plan without GPUs: --no-gpu."
        ) from exc
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return tuple(gpus)


def measure_memory_bandwidth(size_bytes: int = 256 * 1024**2, repeats: int = 5) -> float:
    """Single-thread memcpy bandwidth in GB/s (bytes read + written, best of `repeats`).

    llama.cpp decoding on all cores reads faster than one thread copies, so this is a floor.
    """
    src = bytearray(size_bytes)
    dst = bytearray(size_bytes)
    view_src, view_dst = memoryview(src), memoryview(dst)
    view_dst[:] = view_src  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        view_dst[:] = view_src
        best = min(best, time.perf_counter() - start)
    return round(2 * size_bytes / best / 1e9, 1)


# ----------------------------------------------------------------------------- macOS (Apple Silicon)


def _sysctl(name: str) -> str | None:
    """`sysctl -n NAME`, or None when the key does not exist ('sysctl: unknown oid', exit 1) or sysctl fails."""
    import subprocess

    try:
        done = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def _sysctl_int(name: str) -> int | None:
    value = _sysctl(name)
    return int(value) if value is not None and value.isdigit() else None


def probe_macos() -> Hardware:
    """A Mac: the chip (machdep.cpu.brand_string), its cores (hw.physicalcpu / hw.logicalcpu), the unified
    memory (hw.memsize), the ARM features llama.cpp's kernels use (hw.optional.arm.FEAT_*), and one Metal GPU
    whose memory is the working set Metal allows: iogpu.wired_limit_mb when the user set it (0 means unset),
    else macOS's default share (catalog.metal_working_set_bytes, by macOS version)."""
    from qwen_deploy.hardware.catalog import apple_gpu, metal_working_set_bytes

    chip = _sysctl("machdep.cpu.brand_string") or platform.processor() or "Apple Silicon"
    logical = _sysctl_int("hw.logicalcpu") or os.cpu_count() or 1
    physical = _sysctl_int("hw.physicalcpu") or logical
    features = {
        "neon": "hw.optional.neon",
        "dotprod": "hw.optional.arm.FEAT_DotProd",
        "i8mm": "hw.optional.arm.FEAT_I8MM",
    }
    flags = tuple(sorted(flag for flag, key in features.items() if _sysctl(key) == "1"))
    ram = _sysctl_int("hw.memsize")
    if ram is None:
        import psutil

        ram = psutil.virtual_memory().total
    try:
        import psutil

        available = min(ram, psutil.virtual_memory().available)
    except ImportError:  # psutil is a dependency; a broken install still plans for the machine
        available = ram
    cpu = CPU(model=chip, physical_cores=min(physical, logical), logical_cores=logical, flags=flags)
    gpus: tuple[GPU, ...] = ()
    if chip.startswith("Apple"):
        wired = _sysctl_int("iogpu.wired_limit_mb") or None
        major = (platform.mac_ver()[0] or "0").split(".")[0]
        working_set = metal_working_set_bytes(
            ram, wired, macos="26" if major.isdigit() and int(major) >= 26 else "classic"
        )
        try:
            entry = apple_gpu(f"{chip} {ram // 1024**3}GB")
        except QwenDeployError:  # a memory size the catalog does not list: no bandwidth figure
            entry = None
        gpus = (
            GPU(
                index=0,
                name=chip,
                memory_total_bytes=working_set,
                memory_free_bytes=working_set,
                compute_capability="",
                memory_bandwidth_gbps=entry.memory_bandwidth_gbps if entry else None,
                backend="metal",
            ),
        )
    return Hardware(cpu=cpu, memory=Memory(total_bytes=ram, available_bytes=available), gpus=gpus, disk=probe_disk())


def probe(measure: bool = False) -> Hardware:
    """This machine's hardware, with its memory bandwidth: measured now with `measure`, else the measurement
    kept for this machine (made once, the first time: about a quarter of a second)."""
    if platform.system() == "Darwin":
        hw = probe_macos()
    else:
        hw = Hardware(cpu=probe_cpu(), memory=probe_memory(), gpus=probe_gpus(), disk=probe_disk())
    bandwidth = measured_bandwidth(hw, again=measure)
    return replace(hw, cpu=replace(hw.cpu, memory_bandwidth_gbps=bandwidth)) if bandwidth else hw


def _machine_key(hw: Hardware) -> str:
    return f"{hw.cpu.model}|{hw.cpu.physical_cores}|{hw.cpu.logical_cores}|{hw.memory.total_bytes}"


def measured_bandwidth(hw: Hardware, again: bool = False) -> float | None:
    """The memory bandwidth measured on this machine (GB/s), kept in ~/.cache/qwen-deploy/machine.json for the
    same CPU, cores and RAM; measured and kept when there is none (or `again`). CPU decoding reads the weights
    once per token, so the speed `plan` predicts rests on it: a typical figure is off by 3x on a small VM.
    None when it cannot be measured or kept (the planner then uses a typical figure)."""
    import json
    import os

    from qwen_deploy.paths import cache_dir

    path = cache_dir() / "machine.json"
    key = _machine_key(hw)
    if not again:
        try:
            kept = json.loads(path.read_text())
            value = kept.get("memory_bandwidth_gbps") if kept.get("machine") == key else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.1 <= value <= 100_000:
                return float(value)
        except (OSError, ValueError, AttributeError):
            pass
    try:
        value = measure_memory_bandwidth()
    except (MemoryError, OSError):
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"machine": key, "memory_bandwidth_gbps": value}))
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return value
