"""Measuring honestly: warm-up, repeats and the median, CUDA events, peak memory, free memory, the
machine's description, and the device's FLOP bound."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch

logger = logging.getLogger("dcvg")

GIB = 2**30
MIB = 2**20


# ---- timing ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the timed repeats (after warm-up) and the first call (compilation included)."""

    samples: tuple[float, ...]
    first_call_s: float
    warmup: int  # warm-up calls actually made

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)

    @property
    def max_s(self) -> float:
        return max(self.samples)


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events around it on GPU (after a synchronize), wall clock on CPU."""
    if device.type == "cuda":
        synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed.

    With `budget_s`, a call slower than the budget ends the warm-up after the first call (that one has
    compiled and allocated already), and the repeats are cut to what fits in the budget (at least one),
    so a 4K point on a slow device does not hold the run for an hour.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats {repeats} must be >= 1 and warmup {warmup} >= 0")
    first = None
    done = 0
    for _ in range(warmup):
        s = _timed_call(fn, device)
        first = s if first is None else first
        done += 1
        if budget_s is not None and s > budget_s:
            break
    samples = [_timed_call(fn, device)]
    first = samples[0] if first is None else first
    if budget_s is not None:
        repeats = max(1, min(repeats, int(budget_s // max(samples[0], 1e-9))))
    samples += [_timed_call(fn, device) for _ in range(repeats - 1)]
    return Timing(tuple(samples), first, done)


# ---- memory ---------------------------------------------------------------------------------------------


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated: free GPU memory, or the OS's MemAvailable on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def total_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the resident set starts from what is in use."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory a block adds on top of what was allocated before it (`peak_bytes`; None when unknown).

    GPU: torch's peak-allocation counter. CPU: the process's resident set sampled every 2 ms in a
    thread, so an approximation (short spikes can be missed; memory the allocator keeps counts).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self._baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            return self
        _trim_heap()
        rss = _rss_bytes()
        if rss is not None:
            self._baseline = self._peak = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.peak_bytes = self._peak - self._baseline


def allocated_peak_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """Run `fn()`; return its result and the peak of bytes torch allocated during it above what was
    allocated before it, exactly: from the allocation events torch's CPU allocator reports to the profiler
    (`profile_memory=True`; every tensor storage goes through it), summed in time order, as torch.profiler's
    own memory timeline reads them. Unlike the resident set, it does not move from run to run.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    tree = prof.profiler.kineto_results.experimental_event_tree()
    events = sorted((e for e in walk(tree) if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns)
    if not events:
        raise RuntimeError("the profiler reported no allocations")
    live = peak = 0
    for e in events:
        live += e.extra_fields.alloc_size  # negative when freed
        peak = max(peak, live)
    return result, peak


def release_memory(device: torch.device, collect: bool = False) -> None:
    """Return cached GPU memory to the driver; `collect` also runs the garbage collector (slow with a large
    Python heap, so only after an out-of-memory error, whose traceback holds tensors, and between models)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA OOM, or a CPU allocation failure (which torch raises as RuntimeError)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and (
        "out of memory" in str(error).lower() or "can't allocate memory" in str(error).lower()
    )


# ---- random models built quickly ----------------------------------------------------------------------


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def count_parameters(factory: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module `factory` builds, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        module = factory()
    return sum(p.numel() for p in module.parameters())


def build_random(
    factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Build a randomly initialised module directly on `device` in `dtype`, in inference mode.

    Parameters are created on the device in the target dtype (no float32 copy in host memory, no
    transfer), and the default initialisers run there, so a 14B transformer does not pass through host
    memory. Buffers computed in `__init__` with an explicit dtype (RoPE tables) keep their precision
    until the final `.to(dtype)`, exactly as a pipeline loading weights in `dtype` would have them.
    """
    with torch.device(device), default_dtype(dtype):
        module = factory()
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ---- the device's FLOP bound --------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePeak:
    """Dense bf16 matmul rate of a device, in TFLOP/s, and where the number comes from."""

    match: str  # substring of torch.cuda.get_device_name()
    tflops: float
    basis: str


# First match wins, so the specific names come before the generic ones.
DEVICE_PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H100 PCIe", 756.0, "datasheet dense bf16"),
    DevicePeak("H100 NVL", 835.0, "datasheet dense bf16"),
    DevicePeak("H100", 800.0, "bf16 dense matmul ceiling measured on H100 SXM (750-800; datasheet 989)"),
    DevicePeak("H200", 800.0, "bf16 dense matmul ceiling of the H100 SXM die (datasheet 989)"),
    DevicePeak("GH200", 800.0, "bf16 dense matmul ceiling of the H100 SXM die (datasheet 989)"),
    DevicePeak("A100", 312.0, "datasheet dense bf16"),
    DevicePeak("L40S", 362.0, "datasheet dense bf16"),
    DevicePeak("B200", 2250.0, "datasheet dense bf16"),
)


def lookup_peak(device_name: str) -> DevicePeak | None:
    for peak in DEVICE_PEAKS:
        if peak.match.lower() in device_name.lower():
            return peak
    return None


def measure_matmul_tflops(
    device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10
) -> float:
    """Achieved TFLOP/s of a (size x size) @ (size x size) matmul in `dtype`: the device's practical
    bound for the transformer's linear layers."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = time_call(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2.0 * size**3 / timing.median_s / 1e12


# ---- machine description --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()}"


def machine_info(device: torch.device) -> dict[str, object]:
    """The machine and library versions, written into every bench output."""
    import diffusers

    from .. import __version__

    info: dict[str, object] = {
        "device": device_name(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host_memory_gib": round(total_memory(torch.device("cpu")) / GIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "dcvideogen": __version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_memory_gib=round(props.total_memory / GIB, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info
