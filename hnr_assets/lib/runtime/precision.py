"""Device and precision, decided in one place for every model hnr runs.

Dense encoding (`lib.retrieval.dense`), fine-tuning (`lib.training.encoder_training`), the PyTorch
cross-encoder (`lib.mining.cross_encoder`) and transformers generation (`lib.generation.engines`) ask
here where a model runs (`resolve_device`), whether the CPU computes bfloat16 natively
(`cpu_has_native_bf16`), what `precision: auto` means on that device (`resolve_precision`), and enter
the matching `torch.autocast` (`autocast`).

`auto` means bf16 on a GPU that supports it (fp16 otherwise). On a CPU it means bf16 autocast only where
the CPU has native bf16 (the `avx512_bf16` or `amx_bf16` flags) *and* bf16 is measured faster there
(`cpu_bf16_is_faster`): without the flags bf16 is emulated and 5-10x slower than fp32; with them it was
1.7x faster on an AMD EPYC Zen 4 (DESIGN.md) but 1.6-1.9x *slower* on an Intel Xeon (model 207) whose
hypervisor shows `avx512_bf16` and hides AMX (2026-12-02: all-MiniLM-L6-v2 at 128 tokens, 66 passages/s
fp32 against 41 bf16; a training step of 16 x 7 texts 4.5 s fp32 against 8.3 s bf16). Flags alone cannot
tell these apart, so a short timing of both (about a second, once per process) decides. Weights stay
fp32 under autocast.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hnr_assets.lib.runtime.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(device: str = "auto") -> str:
    """`auto` becomes `cuda` when a GPU is visible, else `cpu`; any other value is returned as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bfloat16 natively (the AVX512-BF16 or AMX-BF16 flags), where autocast pays off.

    Args:
        cpuinfo: The file listing the CPU flags (Linux's `/proc/cpuinfo`); unreadable means no.
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


# bf16 must beat fp32 by this factor on the timing below to be chosen (noise on a shared machine).
BF16_MIN_SPEEDUP = 1.1


def time_matmul_step(bf16: bool, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds of a forward and backward pass through one MiniLM-sized feed-forward block
    (a batch of 2,048 token vectors, 384 -> 1536 -> 384), in fp32 or under bf16 autocast."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 384, generator=generator, requires_grad=True)
    w1 = torch.randn(384, 1536, generator=generator, requires_grad=True)
    w2 = torch.randn(1536, 384, generator=generator, requires_grad=True)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms the kernels up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.gelu(x @ w1) @ w2
        y.float().sum().backward()
        best = min(best, time.perf_counter() - started)
    return best


def bf16_pays_off(native: bool, timer: Callable[[bool], float] = time_matmul_step) -> bool:
    """Whether bf16 autocast should be used on this CPU: native bf16, and measured `BF16_MIN_SPEEDUP` faster.

    Args:
        native: Whether the CPU flags show native bf16 (`cpu_has_native_bf16`); without it, no timing.
        timer: Seconds of the same work in fp32 (`timer(False)`) and in bf16 (`timer(True)`).
    """
    if not native:
        return False
    fp32, bf16 = timer(False), timer(True)
    return bf16 * BF16_MIN_SPEEDUP <= fp32


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """`bf16_pays_off` for this CPU, measured once per process (about a second where the flags show bf16)."""
    return bf16_pays_off(cpu_has_native_bf16())


def resolve_precision(
    precision: str,
    device: str,
    *,
    bf16_cpu: bool | None = None,
    bf16_gpu: bool | None = None,
    cpu_fp16: bool = False,
) -> str:
    """Turn a `precision` setting into `fp32`, `bf16` or `fp16` for a device.

    Args:
        precision: `auto`, `fp32`, `bf16` or `fp16`.
        device: `cpu`, `cuda` or `cuda:N`.
        bf16_cpu: Whether bf16 autocast pays off on the CPU (`cpu_bf16_is_faster` when None).
        bf16_gpu: Whether the GPU supports bf16 (asked from torch when None).
        cpu_fp16: Accept `fp16` on a CPU (inference only; training refuses it).

    Returns:
        The precision to run with: autocast in bf16/fp16 (weights stay fp32), or plain fp32.

    Raises:
        ConfigError: An unknown precision, or `fp16` on a CPU where `cpu_fp16` is off.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    gpu = device.startswith("cuda")
    if not gpu and precision == "fp16" and not cpu_fp16:
        raise ConfigError("fp16 mixed precision needs a GPU; use bf16 or fp32 on a CPU")
    if precision != "auto":
        return precision
    if not gpu:
        return "bf16" if (cpu_bf16_is_faster() if bf16_cpu is None else bf16_cpu) else "fp32"
    if bf16_gpu is None:
        import torch

        bf16_gpu = bool(torch.cuda.is_bf16_supported())
    return "bf16" if bf16_gpu else "fp16"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision (`fp32`, `bf16`, `fp16`)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """`torch.autocast` in bf16/fp16 on the device's type; nothing for `fp32`."""
    if precision == "fp32":
        yield
        return
    import torch

    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type=device_type, dtype=torch_dtype(precision)):
        yield
