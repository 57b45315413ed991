"""Precision by real capability (core.precision), as training and serving read it. No GPU here: the CUDA
queries are replaced by the values GPUs of each generation report."""

from types import SimpleNamespace

import pytest
import torch

from core import precision
from retrain.training import hardware

GPUS = {  # name: (compute capability, bf16 without emulation)
    "V100": ((7, 0), False), "T4": ((7, 5), False), "A100": ((8, 0), True), "H100": ((9, 0), True),
}


@pytest.fixture
def gpu(monkeypatch):
    """Make torch report one GPU of the given generation; `is_bf16_supported` answers as torch does: with
    emulation counted (its default), every CUDA GPU says yes."""
    def install(name: str) -> None:
        capability, native = GPUS[name]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index=None: SimpleNamespace(name=name, total_memory=16 * 2**30))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: native or including_emulation)

    return install


@pytest.mark.parametrize("name", GPUS)
def test_bf16_and_tf32_only_where_the_gpu_runs_them(gpu, name):
    capability, native = GPUS[name]
    gpu(name)
    rule = precision.of("cuda")
    assert rule.name == ("bf16" if capability >= (8, 0) else "fp16")  # never emulated bf16
    assert rule.tf32 is (capability >= (8, 0)) and rule.capability == capability
    assert precision.of("cpu").name == "fp32"  # the CPU is the CPU, whatever the GPU

    hw = hardware.detect()  # training reads the same rule
    assert (hw.bf16, hw.tf32, hw.capability) == (rule.name == "bf16", rule.tf32, "{}.{}".format(*capability))
    flags = hardware.precision(hw)
    assert flags == {"bf16": native, "fp16": not native, "tf32": capability >= (8, 0)}
    assert hardware.precision(hw, override=False)["fp16"] is True  # bf16 off: fp16 with loss scaling


def test_cpu_is_fp32():
    assert precision.rule(None, True) == precision.Precision(torch.float32, False, None)
    if not torch.cuda.is_available():
        assert precision.of("cuda").name == "fp32" and hardware.detect().device == "cpu"
    cpu = hardware.Hardware("cpu", 1, "cpu", False, None, 2)
    assert hardware.precision(cpu) == {"bf16": False, "fp16": False, "use_cpu": True}


def test_serving_loads_in_the_rules_dtype(tiny_model_dir):
    from service.backends.local import load_model

    model, _ = load_model(tiny_model_dir, device="cpu")
    assert next(model.parameters()).dtype == precision.of("cpu").dtype == torch.float32
