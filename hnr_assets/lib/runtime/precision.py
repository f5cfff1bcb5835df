"""Device and precision, decided in one place for every model hnr runs.

Dense encoding (`lib.retrieval.dense`), fine-tuning (`lib.training.encoder_training`), the PyTorch
cross-encoder (`lib.mining.cross_encoder`) and transformers generation (`lib.generation.engines`) ask
here where a model runs (`resolve_device`), whether the CPU computes bfloat16 natively
(`cpu_has_native_bf16`), what `precision: auto` means on that device (`resolve_precision`), and enter
the matching `torch.autocast` (`autocast`).

`auto` means bf16 on a GPU that supports it (fp16 otherwise), and on a CPU bf16 autocast only where the
CPU has native bf16 (the `avx512_bf16` or `amx_bf16` flags): elsewhere bf16 is emulated and 5-10x slower
than fp32, so fp32. Weights stay fp32 under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
        bf16_cpu: Whether the CPU has native bf16 (read from /proc/cpuinfo when None).
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
        return "bf16" if (cpu_has_native_bf16() if bf16_cpu is None else bf16_cpu) else "fp32"
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
