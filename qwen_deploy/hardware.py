"""What a machine has: probe() reads this one; hardware files and catalog shorthands describe others.

The hardware file (design.md, schema qwen-deploy/hardware/v1) is what `probe --json` writes and
`plan --hardware FILE` reads, so a plan can be made for a machine elsewhere. Probing reads /proc and
/sys directly on Linux (cheap, and it sees cgroup limits); psutil and NVML are imported only when needed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qwen_deploy.errors import QwenDeployError, UsageError
from qwen_deploy.units import parse_size

HARDWARE_SCHEMA = "qwen-deploy/hardware/v1"

# CPU flags that matter to llama.cpp kernels; the rest of /proc/cpuinfo's list is noise for planning.
_INTERESTING_FLAGS = re.compile(
    r"^(avx|avx2|avx_vnni|avx512\w*|amx\w*|fma|f16c|sse4_2|neon|asimd|asimddp|sve|sve2|i8mm|bf16|dotprod)$"
)


@dataclass(frozen=True)
class CPU:
    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...] = ()
    # Measured by `probe --measure` (GB/s, single-thread memcpy); None means "use a typical figure".
    memory_bandwidth_gbps: float | None = None


@dataclass(frozen=True)
class Memory:
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    compute_capability: str
    # Peak memory bandwidth from the catalog (GB/s); None when the card is not in it.
    memory_bandwidth_gbps: float | None = None
    # Total as CUDA reports it (cudaMemGetInfo; NVML total minus driver-reserved memory). vLLM budgets
    # against this. None: unknown, the planner estimates it from the NVML total.
    cuda_total_bytes: int | None = None

    @property
    def cc(self) -> tuple[int, int]:
        major, _, minor = self.compute_capability.partition(".")
        return int(major), int(minor or 0)


@dataclass(frozen=True)
class Disk:
    path: str
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    cpu: CPU
    memory: Memory
    gpus: tuple[GPU, ...] = ()
    disk: Disk = field(default_factory=lambda: Disk(path="", free_bytes=0))

    def to_dict(self) -> dict[str, Any]:
        cpu: dict[str, Any] = {
            "model": self.cpu.model,
            "physical_cores": self.cpu.physical_cores,
            "logical_cores": self.cpu.logical_cores,
            "flags": list(self.cpu.flags),
        }
        if self.cpu.memory_bandwidth_gbps is not None:
            cpu["memory_bandwidth_gbps"] = self.cpu.memory_bandwidth_gbps
        gpus = []
        for gpu in self.gpus:
            entry: dict[str, Any] = {
                "index": gpu.index,
                "name": gpu.name,
                "memory_total_bytes": gpu.memory_total_bytes,
                "memory_free_bytes": gpu.memory_free_bytes,
                "compute_capability": gpu.compute_capability,
            }
            if gpu.memory_bandwidth_gbps is not None:
                entry["memory_bandwidth_gbps"] = gpu.memory_bandwidth_gbps
            if gpu.cuda_total_bytes is not None:
                entry["cuda_total_bytes"] = gpu.cuda_total_bytes
            gpus.append(entry)
        return {
            "schema": HARDWARE_SCHEMA,
            "cpu": cpu,
            "memory": {"total_bytes": self.memory.total_bytes, "available_bytes": self.memory.available_bytes},
            "gpus": gpus,
            "disk": {"path": self.disk.path, "free_bytes": self.disk.free_bytes},
        }


# --------------------------------------------------------------------------- hardware files


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise UsageError(f"{where}: missing '{key}'.")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UsageError(f"{where}: '{key}' must be {names}, not {value!r}.")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise UsageError(f"{where}: '{key}' must not be negative ({value}).")
    return value


def _optional_float(data: dict[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{where}: '{key}' must be a positive number, not {value!r}.")
    return float(value)


def _optional_int(data: dict[str, Any], key: str, where: str) -> int | None:
    if data.get(key) is None:
        return None
    return _field(data, key, int, where)


_CC_RE = re.compile(r"^\d+\.\d+$")
MIN_GPU_BYTES = 1024**3


def hardware_from_dict(data: Any, where: str = "hardware file") -> Hardware:
    """Validate a hardware mapping (schema qwen-deploy/hardware/v1) into a Hardware."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping with schema {HARDWARE_SCHEMA}, got {type(data).__name__}.")
    schema = data.get("schema")
    if schema != HARDWARE_SCHEMA:
        raise UsageError(
            f"{where}: schema is {schema!r}; expected {HARDWARE_SCHEMA!r} (write one with `probe --json`)."
        )
    cpu_d = _field(data, "cpu", dict, where)
    flags = cpu_d.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise UsageError(f"{where}: cpu.flags must be a list of strings.")
    cpu = CPU(
        model=_field(cpu_d, "model", str, f"{where}: cpu"),
        physical_cores=_field(cpu_d, "physical_cores", int, f"{where}: cpu"),
        logical_cores=_field(cpu_d, "logical_cores", int, f"{where}: cpu"),
        flags=tuple(flags),
        memory_bandwidth_gbps=_optional_float(cpu_d, "memory_bandwidth_gbps", f"{where}: cpu"),
    )
    if cpu.physical_cores < 1 or cpu.logical_cores < 1:
        raise UsageError(f"{where}: cpu core counts must be at least 1.")
    mem_d = _field(data, "memory", dict, where)
    memory = Memory(
        total_bytes=_field(mem_d, "total_bytes", int, f"{where}: memory"),
        available_bytes=_field(mem_d, "available_bytes", int, f"{where}: memory"),
    )
    gpus_d = _field(data, "gpus", list, where)
    gpus = []
    for i, gpu_d in enumerate(gpus_d):
        w = f"{where}: gpus[{i}]"
        if not isinstance(gpu_d, dict):
            raise UsageError(f"{w}: expected a mapping.")
        cc = _field(gpu_d, "compute_capability", str, w)
        if not _CC_RE.match(cc):
            raise UsageError(f"{w}: compute_capability must look like '8.9', not {cc!r}.")
        if _field(gpu_d, "memory_total_bytes", int, w) < MIN_GPU_BYTES:
            raise UsageError(f"{w}: memory_total_bytes must be at least 1 GiB for a GPU that can serve a model.")
        gpus.append(
            GPU(
                index=_field(gpu_d, "index", int, w),
                name=_field(gpu_d, "name", str, w),
                memory_total_bytes=_field(gpu_d, "memory_total_bytes", int, w),
                memory_free_bytes=_field(gpu_d, "memory_free_bytes", int, w),
                compute_capability=cc,
                memory_bandwidth_gbps=_optional_float(gpu_d, "memory_bandwidth_gbps", w),
                cuda_total_bytes=_optional_int(gpu_d, "cuda_total_bytes", w),
            )
        )
    disk_d = data.get("disk") or {"path": "", "free_bytes": 0}
    disk = Disk(
        path=_field(disk_d, "path", str, f"{where}: disk"),
        free_bytes=_field(disk_d, "free_bytes", int, f"{where}: disk"),
    )
    return Hardware(cpu=cpu, memory=memory, gpus=tuple(gpus), disk=disk)


def load_hardware(path: str | os.PathLike[str]) -> Hardware:
    """Read a hardware file (YAML or JSON) written by `probe --json`."""
    from qwen_deploy.resources import load_yaml_file

    return hardware_from_dict(load_yaml_file(path, what="hardware file"), where=str(path))


# --------------------------------------------------------------------------- GPU catalog


@dataclass(frozen=True)
class CatalogGPU:
    key: str
    name: str  # as NVML reports it
    aliases: tuple[str, ...]
    memory_total_bytes: int
    compute_capability: str
    memory_bandwidth_gbps: float
    source: str
    cuda_total_bytes: int | None = None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", "").replace("geforce", ""))


def gpu_catalog() -> tuple[CatalogGPU, ...]:
    from qwen_deploy.resources import load_profile_yaml

    raw = load_profile_yaml("gpus.yaml")
    return tuple(
        CatalogGPU(
            key=key,
            name=entry["name"],
            aliases=tuple(str(a) for a in entry.get("aliases", ())),
            memory_total_bytes=int(entry["memory_total_bytes"]),
            compute_capability=str(entry["compute_capability"]),
            memory_bandwidth_gbps=float(entry["memory_bandwidth_gbps"]),
            source=entry["source"],
            cuda_total_bytes=entry.get("cuda_total_bytes"),
        )
        for key, entry in raw["gpus"].items()
    )


def find_catalog_gpu(name: str, catalog: tuple[CatalogGPU, ...] | None = None) -> CatalogGPU | None:
    """The catalog entry whose key, NVML name or an alias matches `name` (case and punctuation ignored)."""
    wanted = _norm(name)
    for entry in catalog if catalog is not None else gpu_catalog():
        if wanted in {_norm(entry.key), _norm(entry.name), *(_norm(a) for a in entry.aliases)}:
            return entry
    return None


def lookup_gpu(name: str) -> CatalogGPU:
    """Like find_catalog_gpu, but an unknown name is a usage error that lists the closest names."""
    import difflib

    catalog = gpu_catalog()
    found = find_catalog_gpu(name, catalog)
    if found:
        return found
    names = [e.key for e in catalog]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    by_norm = {_norm(e.key): e.key for e in catalog}
    close += [by_norm[n] for n in difflib.get_close_matches(_norm(name), list(by_norm), n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))[:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"unknown GPU {name!r}.{hint} Known: {', '.join(names)}; or describe it with --vram SIZE.")


_COUNT_RE = re.compile(r"^\s*(\d+)\s*[x×*]\s*(.+?)\s*$", re.IGNORECASE)
_COUNT_AFTER_RE = re.compile(r"^\s*(.+?)\s*[x×*]\s*(\d+)\s*$", re.IGNORECASE)


def parse_gpu_spec(spec: str) -> tuple[int, CatalogGPU]:
    """'RTX 4090' -> (1, entry); '2xL4', '2 x L4' or 'L4x2' -> (2, entry)."""
    readings = [(1, spec.strip())]
    if m := _COUNT_RE.match(spec):
        readings.append((int(m.group(1)), m.group(2)))
    if m := _COUNT_AFTER_RE.match(spec):
        readings.append((int(m.group(2)), m.group(1)))
    catalog = gpu_catalog()
    for count, name in readings:
        entry = find_catalog_gpu(name, catalog)
        if entry:
            if not 1 <= count <= 64:
                raise UsageError(f"--gpu {spec!r}: the count must be between 1 and 64 ('2xL4' or 'L4x2').")
            return count, entry
    count, name = readings[-1]
    if not name:
        raise UsageError(f"--gpu {spec!r} names no GPU; write a catalog name such as 'RTX 4090' or '2xL4'.")
    return count, lookup_gpu(name)  # raises with the closest names


# A GPU described only by --vram: Ada-class capabilities and a mid-range bandwidth (assumptions, stated
# in the plan's reason and README; pass --gpu NAME for a real card).
GENERIC_GPU_CC = "8.9"
GENERIC_GPU_BANDWIDTH_GBPS = 500.0


def simulate(
    base: Hardware,
    gpus: tuple[str, ...] = (),
    vram: str | None = None,
    ram: str | None = None,
    cpus: int | None = None,
    no_gpu: bool = False,
) -> Hardware:
    """`base` (this machine or a file) with the parts the shorthand flags describe replaced.

    --gpu NAME (repeatable, '2xL4') replaces the GPU list with catalog cards; --vram SIZE gives them
    (or one generic GPU) that much memory; --ram sets total and available RAM; --cpus the core count;
    --no-gpu removes all GPUs. Simulated GPUs are idle: free memory equals total.
    """
    if no_gpu and (gpus or vram):
        raise UsageError("--no-gpu contradicts --gpu/--vram; pass one or the other.")
    hw = base
    if gpus or vram:
        cards: list[GPU] = []
        for spec in gpus:
            count, entry = parse_gpu_spec(spec)
            for _ in range(count):
                cards.append(
                    GPU(
                        index=len(cards),
                        name=entry.name,
                        memory_total_bytes=entry.memory_total_bytes,
                        memory_free_bytes=entry.memory_total_bytes,
                        compute_capability=entry.compute_capability,
                        memory_bandwidth_gbps=entry.memory_bandwidth_gbps,
                        cuda_total_bytes=entry.cuda_total_bytes,
                    )
                )
        if vram is not None:
            size = parse_size(vram)
            if size < MIN_GPU_BYTES:
                raise UsageError(f"--vram {vram} is less than 1 GiB; no model this tool plans fits in that.")
            if not cards:
                cards = [
                    GPU(
                        index=0,
                        name=f"GPU with {vram.strip()}",
                        memory_total_bytes=size,
                        memory_free_bytes=size,
                        compute_capability=GENERIC_GPU_CC,
                        memory_bandwidth_gbps=GENERIC_GPU_BANDWIDTH_GBPS,
                    )
                ]
            else:
                cards = [
                    replace(c, memory_total_bytes=size, memory_free_bytes=size, cuda_total_bytes=None) for c in cards
                ]
        hw = replace(hw, gpus=tuple(cards))
    if no_gpu:
        hw = replace(hw, gpus=())
    if ram is not None:
        size = parse_size(ram)
        if size <= 0:
            raise UsageError("--ram must be more than zero bytes.")
        hw = replace(hw, memory=Memory(total_bytes=size, available_bytes=size))
    if cpus is not None:
        if cpus < 1:
            raise UsageError("--cpus must be at least 1.")
        hw = replace(hw, cpu=replace(hw.cpu, physical_cores=cpus, logical_cores=cpus))
    return hw


# --------------------------------------------------------------------------- probing this machine


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


def models_dir() -> Path:
    """Where model files are stored: the Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


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
            entry = find_catalog_gpu(name, catalog)
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


def probe(measure: bool = False) -> Hardware:
    """This machine's hardware."""
    cpu = probe_cpu()
    if measure:
        cpu = replace(cpu, memory_bandwidth_gbps=measure_memory_bandwidth())
    return Hardware(cpu=cpu, memory=probe_memory(), gpus=probe_gpus(), disk=probe_disk())
