"""Numeric precision by what a device really does: one rule for training (retrain/training/hardware.py) and
serving (service/backends/local.py).

- bf16 only where the GPU runs it natively (`is_bf16_supported(including_emulation=False)`: Ampere, compute
  capability 8.0, and later). Plain `is_bf16_supported()` counts emulation, which is the slow path on older GPUs,
  like bf16 on this project's CPUs (a training step ~14x slower).
- fp16 on other GPUs (training adds loss scaling), fp32 on CPU.
- TF32 matmuls only at compute capability >= 8 (transformers raises on `tf32=True` below it).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype  # the half type a GPU computes in (weights when serving); fp32 on CPU
    tf32: bool
    capability: tuple[int, int] | None  # CUDA compute capability; None on CPU

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")


def rule(capability: tuple[int, int] | None, native_bf16: bool) -> Precision:
    """The precision of a device with this compute capability (None: a CPU)."""
    if capability is None:
        return Precision(torch.float32, False, None)
    return Precision(torch.bfloat16 if native_bf16 else torch.float16, capability >= (8, 0), capability)


def of(device: str | torch.device = "cuda") -> Precision:
    """The rule applied to a device as torch reports it (`cuda` means the current CUDA device)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return rule(None, False)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index != torch.cuda.current_device():  # is_bf16_supported asks the current device
        with torch.cuda.device(index):
            return of(torch.device("cuda", index))
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return rule(tuple(torch.cuda.get_device_capability(index)), native)
