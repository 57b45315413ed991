"""Several training processes (`accelerate launch`, one per GPU, or `--cpu` with gloo): each rank's device, the
decisions the ranks must share, and rank 0 as the only writer.

Under a launcher every rank runs the same stages. DDP hangs when the ranks disagree on anything that changes the
number of collective calls: the micro-batch (each rank probes its own memory), gradient checkpointing, a
wall-clock stop, whether a search trial still fits. Each such choice is all-reduced here, so every rank takes
the most cautious one. Outside a launcher (WORLD_SIZE unset) every function is the single-process identity.
"""

import os

import torch
import torch.distributed as tdist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes adapters, results and the run record."""
    return rank() == 0


def setup() -> torch.device:
    """This rank's device, made current before any tensor moves (LOCAL_RANK picks the GPU); under a launcher also
    the process group (NCCL on GPU, gloo on CPU), through accelerate's state, which the Trainer then reuses."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size() > 1 and not active():
        from accelerate import PartialState

        PartialState(cpu=device.type == "cpu")
    return device


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def _reduce(value: float, op) -> float:
    if not active():
        return value
    nccl = "nccl" in str(tdist.get_backend())
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
    tdist.all_reduce(t, op=op)
    return t.item()


def agree_min(value: float) -> float:
    """The smallest `value` over the ranks (every rank gets it)."""
    return _reduce(value, tdist.ReduceOp.MIN)


def agree_any(flag: bool) -> bool:
    """True on every rank when it is true on any."""
    return bool(_reduce(float(flag), tdist.ReduceOp.MAX))


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (a picklable object)."""
    if not active():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank: after rank 0 writes, before any rank reads."""
    if active():
        tdist.barrier()


def teardown() -> None:
    if active():
        tdist.destroy_process_group()
