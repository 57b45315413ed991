"""Training in several processes on this CPU (torch.distributed over gloo, as `accelerate launch --cpu` runs it):
the ranks agree on what DDP needs them to agree on, and a 2-process run trains, writes one adapter and is gated."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp
import yaml

from tests.retrain.training.helpers import fast_config, write_snapshot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_decisions(rank: int, port: int, out: str) -> None:
    """Each rank holds other local values: another memory cap, another clock, another search timing."""
    import time
    from types import SimpleNamespace

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    from retrain.training import dist, hardware
    from retrain.training.trainers import Recorder

    dist.setup()
    cpu = hardware.Hardware("cpu", 1, "cpu", False, None, 1)
    batch = hardware.plan_batch(None, cpu, seq_len=32, effective=6, fixed=None, cpu_cap=8 if rank == 0 else 3)
    # rank 1's clock has run out, rank 0's has not: both stop at this step
    recorder = Recorder(Path(out) / f"stage{rank}", None, "sft", 0, 1000.0 if rank == 0 else 1e-6)
    time.sleep(0.01)
    control = SimpleNamespace(should_training_stop=False)
    recorder.on_step_end(None, None, control)
    record = {"batch": batch, "stopped": control.should_training_stop, "any": dist.agree_any(rank == 1),
              "min": dist.agree_min(10.0 - rank), "gathered": dist.gather({"rank": rank})}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.teardown()


def test_ranks_agree_on_batch_wall_clock_and_choices(tmp_path):
    mp.spawn(_rank_decisions, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for record in ranks:
        # the smaller cap (3) on both ranks; 2 ranks x 3 rows = the 6 examples per optimizer step
        batch = record["batch"]
        assert (batch["per_device_train_batch_size"], batch["gradient_accumulation_steps"]) == (3, 1)
        assert record["stopped"] is True and record["any"] is True and record["min"] == 9.0
        assert record["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert "smallest of 2 ranks" in ranks[0]["batch"]["why"]


def test_a_missing_adapter_is_an_error(tiny_model_dir, tmp_path):
    from retrain.training import adapters

    with pytest.raises(FileNotFoundError, match="adapter missing"):
        adapters.load_merged(tiny_model_dir, [None, tmp_path / "stages" / "0-sft" / "final"])
    with pytest.raises(FileNotFoundError, match="adapter missing"):
        adapters.concat_adapters([None, tmp_path / "nothing"], tmp_path / "candidate")


def test_processes_launch_accelerate_with_gloo_on_cpu_and_nccl_on_gpu():
    from hitl.pipeline import launch_command
    from retrain.training import hardware
    from retrain.training.config import ConfigError, load_config

    cpu = hardware.Hardware("cpu", 1, "cpu", False, None, 2)
    assert launch_command(7, cpu, None) is None and launch_command(7, cpu, 1) is None
    cmd = launch_command(7, cpu, 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[-5:] == ["-m", "hitl", "retrain", "train-stages", "7"]
    gpus = hardware.Hardware("cuda", 4, "H100", True, 80.0, 16, tf32=True, capability="9.0")
    cmd = launch_command(7, gpus, None)  # one process per GPU
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--config_file") + 1].endswith("deploy/accelerate.yaml")
    with pytest.raises(ValueError, match="one process per GPU"):
        launch_command(7, gpus, 8)
    assert load_config(data={"processes": 2}).processes == 2
    with pytest.raises(ConfigError, match="processes"):
        load_config(data={"processes": 0})


@pytest.mark.slow
def test_a_two_process_sft_dpo_run_trains_once_and_is_gated(api, settings, tmp_path, monkeypatch):
    """The API starts a run with `processes: 2`; it trains SFT then DPO under `accelerate launch --cpu` (gloo)."""
    from core.db import session_scope
    from core.settings import get_settings
    from retrain.training.models import RunStatus
    from service.models import ModelVersion, VersionStatus
    from tests.retrain.training.test_runs import wait_for

    policy = tmp_path / "policy.yaml"  # the gates on a few general items: the tiny model knows none of them
    policy.write_text(yaml.safe_dump({"evaluators": ["heldout", "preference", "forgetting", "cumulative", "golden"],
                                      "forgetting": {"max_examples": 8}, "cumulative": {"max_examples": 8}}))
    monkeypatch.setenv("HITL_GATE_POLICY", str(policy))
    get_settings.cache_clear()
    snapshot = write_snapshot(tmp_path / "snap", train=8, eval_=2, kinds=("sft", "dpo"))
    config = fast_config(snapshot, steps=3, processes=2, evaluate=True, save_steps=2)
    response = api.post("/api/retrain/runs", json={"config": config})
    assert response.status_code == 202, response.text
    run = wait_for(response.json()["id"], timeout=600)
    log = Path(run.log_path).read_text()[-4000:]
    assert run.status in (RunStatus.insufficient_evidence, RunStatus.rejected, RunStatus.promoted), (run.error, log)

    got = api.get(f"/api/retrain/runs/{run.id}").json()
    assert got["config"]["processes"] == 2
    assert got["metrics"]["launch"]["processes"] == 2 and got["metrics"]["launch"]["backend"] == "gloo"
    for tag in ("0-sft", "1-dpo"):
        stage = got["metrics"]["stages"][tag]
        assert stage["processes"] == 2 and [r["rank"] for r in stage["ranks"]] == [0, 1]
        batches = {(r["per_device_train_batch_size"], r["gradient_accumulation_steps"], r["steps"])
                   for r in stage["ranks"]}
        assert len(batches) == 1, stage["ranks"]  # both ranks trained the same micro-batches and steps
        per_device, accumulation, steps = batches.pop()
        assert per_device * accumulation * 2 == 4 and steps == 3  # 4 examples per step over 2 processes
        assert len({r["lora"] for r in stage["ranks"]}) == 1  # gradients all-reduced: the replicas stayed equal
    assert got["gate"]["decision"] and got["gate"].get("results")  # the evaluators ran on the candidate

    stages = Path(run.artifacts_path) / "stages"
    for tag in ("0-sft", "1-dpo"):  # rank 0 alone wrote: one adapter, no leftovers of a race
        assert sorted(p.name for p in (stages / tag).iterdir() if p.is_dir()) == ["best", "checkpoints", "final"]
    assert len(list(Path(run.artifacts_path).rglob("candidate*/adapter_model.safetensors"))) == 1
    assert len(list((Path(run.artifacts_path) / "tb").rglob("events.out.tfevents.*"))) == 2  # one per stage
    with session_scope() as session:
        version = session.get(ModelVersion, got["candidate_version"])
        assert version.run_id == run.id and version.adapter_path.endswith("candidate")
        assert version.status in (VersionStatus.candidate, VersionStatus.rejected, VersionStatus.champion)
