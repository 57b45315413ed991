"""The retrain pipeline of one run: snapshot → plan → train → register candidate → evaluators → final status.

Runs in its own process (`python -m hitl retrain execute RUN_ID`, started by the scheduler, the API or
`hitl retrain run`), holding the cluster-wide retrain lock. Every step is restartable: the snapshot, plan
and champion are recorded on the run; finished stages are not retrained; an unfinished stage resumes
from its last complete checkpoint. Any error marks the run failed; the champion alias is never touched
here (only the evaluators promote).
"""

import copy
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from core.db import session_scope
from core.models import utcnow
from core.settings import Settings, get_settings
import typer

from retrain.training import service as runs
from retrain.training.config import load_config
from retrain.training.models import FINISHED, RetrainRun, RunStatus
from retrain.training.plan import size_stages, snapshot_plan
from retrain.training.tasks import heartbeat
from service import service as serving

log = logging.getLogger("hitl.pipeline")
ROOT = Path(__file__).resolve().parents[1]


class MetricsSink:
    """Per-step metrics into `RetrainRun.metrics["steps"]` (flushed at most every `every_s`, evals at once)."""

    def __init__(self, run_id: int, every_s: float = 2.0):
        self.run_id, self.every_s, self.pending, self.last = run_id, every_s, [], 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        self.pending.append(event)
        if "eval_loss" in event or time.monotonic() - self.last > self.every_s:
            self.flush()

    def flush(self, **extra: Any) -> None:
        with session_scope() as session:
            run = session.get(RetrainRun, self.run_id)
            metrics = copy.deepcopy(run.metrics or {})  # a new object, or SQLAlchemy sees no change
            metrics["steps"] = list(metrics.get("steps", [])) + self.pending
            metrics.update(extra)
            run.metrics = metrics
            session.add(run)
        self.pending, self.last = [], time.monotonic()


def _update(run_id: int, **fields: Any) -> None:
    with session_scope() as session:
        run = session.get(RetrainRun, run_id)
        for key, value in fields.items():
            setattr(run, key, value)
        session.add(run)


def prepare(run_id: int, settings: Settings) -> dict[str, Any]:
    """Snapshot, plan and champion of the run: built once, then read back on resume."""
    from retrain.training import adapters

    with session_scope() as session:
        run = runs.get_run(session, run_id)
        config = load_config(data=run.config)
        if run.plan and run.plan.get("snapshot_path"):
            return run.plan
        if config.snapshot_path:
            path = Path(config.snapshot_path).resolve()
            if not path.is_dir():
                raise FileNotFoundError(f"snapshot {path} does not exist")
            run.snapshot_hash = runs.snapshot_hash(path)
        else:
            try:
                from retrain.datasets.schemas import BuildOptions
                from retrain.datasets.service import build_snapshot
            except ImportError as exc:
                raise RuntimeError("the dataset builder (retrain.datasets.service) is not available") from exc
            snapshot = build_snapshot(session, settings, BuildOptions(**config.snapshot_options))
            path, run.snapshot_id, run.snapshot_hash = Path(snapshot.path).resolve(), snapshot.id, snapshot.hash
        plan = snapshot_plan(path, config)
        champion = serving.ensure_champion(session, settings)
        size_stages(plan, config, champion.base_path)
        stacked = adapters.adapter_rank(champion.adapter_path) + sum(
            getattr(config, s["method"]).lora_r for s in plan["stages"])
        plan.update(champion={"version": champion.version, "base_path": champion.base_path,
                              "adapter_path": champion.adapter_path},
                    chaining=chaining(config, settings, stacked, has_adapter=bool(champion.adapter_path)))
        run.plan = plan
        session.add(run)
        return plan


def chaining(config, settings: Settings, stacked: int, *, has_adapter: bool) -> dict[str, Any]:
    """How the candidate joins the champion: stacked into one adapter, merged into a new base, or (serving from
    a vLLM fleet, `HITL_VLLM_MAX_LORA_RANK`) stacked and compressed back to the rank the replicas accept, since
    a LoRA server cannot switch to a merged base without a restart."""
    if config.chaining == "merge":
        return {"mode": "merge", "reason": "configured"}
    if settings.backend == "vllm" and stacked > settings.vllm_max_lora_rank:
        return {"mode": "compress", "rank": settings.vllm_max_lora_rank,
                "reason": f"stacked rank {stacked} > HITL_VLLM_MAX_LORA_RANK {settings.vllm_max_lora_rank}: "
                          "compressed to it (SVD of each module's delta), same base"}
    if has_adapter and stacked > config.max_stacked_rank:
        return {"mode": "merge", "reason": f"stacked rank {stacked} > {config.max_stacked_rank}"}
    return {"mode": "stack", "reason": "champion adapter + new LoRA concatenated into one adapter on the same base"}


def train(run_id: int, settings: Settings, plan: dict[str, Any]) -> tuple[Path, str]:
    """Train every planned stage in order; return (candidate adapter dir, its base checkpoint)."""
    from retrain.training import adapters, dist, hardware
    from retrain.training.trainers import run_stage

    dist.setup()  # under a launcher: this rank's GPU and the process group, before anything else
    with session_scope() as session:
        config = load_config(data=runs.get_run(session, run_id).config)
    out = runs.run_dir(settings, run_id)
    snapshot, champion = Path(plan["snapshot_path"]), plan["champion"]
    base_path, champ_adapter = champion["base_path"], champion["adapter_path"]
    if plan["chaining"]["mode"] == "merge" and champ_adapter:
        merged = settings.models_dir / "merged" / champion["version"]
        if dist.is_main():
            adapters.write_merged_base(champion["base_path"], champ_adapter, merged)
        dist.barrier()
        base_path, champ_adapter = str(merged), None
    hw = hardware.detect()
    sink = MetricsSink(run_id)
    finals: list[Path] = []
    for i, stage in enumerate(plan["stages"]):
        method = stage["method"]
        train_rows = runs.load_rows(snapshot, method, "train")
        eval_rows = runs.load_rows(snapshot, method, "validation")
        anchors = runs.load_rows(snapshot, "sft", "anchor") + golden_anchors() if method == "sft" else []
        result = run_stage(method, config, base_path=base_path, merge=[champ_adapter, *finals], train=train_rows,
                           eval_rows=eval_rows, out=out / "stages" / f"{i}-{method}", sink=sink,
                           search=bool(plan.get("search")) and i == 0, hw=hw, anchors=anchors)
        finals.append(out / "stages" / f"{i}-{method}" / "final")
        if not dist.is_main():
            continue
        with session_scope() as session:
            run = runs.get_run(session, run_id)
            metrics = copy.deepcopy(run.metrics or {})
            metrics.setdefault("stages", {})[f"{i}-{method}"] = {
                k: result.get(k) for k in ("method", "steps", "train_loss", "best_eval_loss", "best_step", "evals",
                                           "underfit", "stopped_early", "resumed_from", "anchor_rows", "budget",
                                           "batch", "precision", "packing", "tokens", "seconds", "search",
                                           "chosen_trial", "reused", "processes", "ranks")}
            run.metrics = metrics
            session.add(run)
        sink.flush()
    candidate = out / "candidate"
    if dist.is_main():
        adapters.concat_adapters([champ_adapter, *finals], candidate)
        if plan["chaining"]["mode"] == "compress":
            compression = adapters.compress_adapter(candidate, plan["chaining"]["rank"])
            log.info("candidate compressed to rank %d: relative error %.4f", compression["rank"],
                     compression["relative_error"])
            with session_scope() as session:
                run = runs.get_run(session, run_id)
                run.metrics = {**copy.deepcopy(run.metrics or {}), "compression": compression}
                session.add(run)
    return candidate, base_path


def golden_anchors() -> list[dict]:
    """The gate policy's golden prompts as anchor rows: the operator's specification is held while training.
    (On 30 zsh FAQ corrections SmolLM2 twice lost "What is the capital of France?" -> Paris, answering in
    French, with its general answers otherwise even: lost 22, gained 24 of 512.)"""
    from evaluators.gate import load_policy
    from evaluators.golden import anchor_rows

    return anchor_rows((load_policy().get("golden") or {}).get("path"))


def gate(run_id: int) -> tuple[RunStatus, dict[str, Any]]:
    """The evaluators' decision as the run's final status: promoted, rejected, insufficient_evidence (not
    promoted: a required gate lacked data), or succeeded (made challenger for a canary)."""
    try:
        from evaluators.gate import evaluate_and_decide
    except ImportError as exc:
        return RunStatus.succeeded, {"note": f"evaluation not available ({exc})"}
    decision = evaluate_and_decide(run_id) or {}
    verdict = decision.get("decision")
    if verdict in ("promote", "promoted") or (decision.get("passed") and not verdict):
        return RunStatus.promoted, decision
    if verdict == "insufficient_evidence" or (not verdict and decision.get("outcome") == "insufficient_evidence"):
        return RunStatus.insufficient_evidence, decision
    if decision.get("passed") is False or verdict in ("reject", "rejected"):
        return RunStatus.rejected, decision
    return RunStatus.succeeded, decision  # e.g. made challenger for a canary


def launch_command(run_id: int, hw, processes: int | None) -> list[str] | None:
    """The launcher of the training stages over `processes` (None: one per GPU; 1 on CPU); None when one process
    trains in this one. GPUs: `accelerate launch` with deploy/accelerate.yaml (NCCL). CPU: torchrun (gloo;
    `accelerate launch --cpu` runs several CPU processes only through mpirun)."""
    n = processes or (hw.n_devices if hw.device == "cuda" else 1)
    if n < 2 or os.environ.get("WORLD_SIZE"):
        return None
    if hw.device == "cuda" and n > hw.n_devices:
        raise ValueError(f"processes {n} > {hw.n_devices} GPUs: one process per GPU")
    stages = ["hitl", "retrain", "train-stages", str(run_id)]
    if hw.device == "cuda":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "deploy" / "accelerate.yaml"), "--num_processes", str(n), "--main_process_port",
                str(_free_port()), "-m", *stages]  # not 29500: another run may hold it
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", *stages]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_launch(run_id: int, hw, processes: int | None = None) -> bool:
    """Train under `accelerate launch` when the run asks for several processes (or finds several GPUs); True
    when it did. The launch is recorded in the run's `metrics.launch`."""
    cmd = launch_command(run_id, hw, processes)
    if cmd is None:
        return False
    n = processes or hw.n_devices
    with session_scope() as session:
        run = runs.get_run(session, run_id)
        run.metrics = {**copy.deepcopy(run.metrics or {}), "launch": {
            "processes": n, "backend": "nccl" if hw.device == "cuda" else "gloo", "command": " ".join(cmd[1:])}}
        session.add(run)
    subprocess.run(cmd, check=True)
    return True


def run_pipeline(run_id: int) -> RunStatus:
    """Execute (or resume) one run under the retrain lock; returns its final status."""
    settings = get_settings()
    lock = runs.RetrainLock(settings)
    if not lock.acquire():
        with session_scope() as session:
            run = runs.get_run(session, run_id)
            if run.status not in FINISHED and run.status != RunStatus.running:
                runs.finish(session, run, RunStatus.skipped, reason="another retrain holds the lock")
            return run.status
    try:
        with heartbeat(run_id, settings.retrain_lease_s):
            return _run_locked(run_id, settings)
    finally:
        lock.release()


def _run_locked(run_id: int, settings: Settings) -> RunStatus:
    out = runs.run_dir(settings, run_id)
    out.mkdir(parents=True, exist_ok=True)
    with session_scope() as session:
        run = runs.get_run(session, run_id)
        if run.status in FINISHED:
            return run.status
        resumed = run.status == RunStatus.running
        run.status, run.pid, run.artifacts_path = RunStatus.running, os.getpid(), str(out)
        run.heartbeat_at = utcnow()
        run.log_path = run.log_path or str(out / "run.log")
        run.started_at = run.started_at or utcnow()
        timings = copy.deepcopy(run.timings or {})
        timings.setdefault("attempts", []).append({"pid": os.getpid(), "at": utcnow().isoformat(),
                                                  "resumed": resumed})
        run.timings = timings
        session.add(run)
    timings, t0 = {}, time.monotonic()
    try:
        plan = prepare(run_id, settings)
        timings["snapshot_and_plan_s"] = round(time.monotonic() - t0, 2)
        if not plan["stages"]:
            with session_scope() as session:
                reasons = "; ".join(f"{s['method']}: {s['reason']}" for s in plan["skipped"])
                runs.finish(session, runs.get_run(session, run_id), RunStatus.skipped,
                            reason=f"nothing to train ({reasons})")
            return RunStatus.skipped
        evaluate = load_config(data=_config(run_id)).evaluate
        if evaluate:  # the champion's side of the gates, once per version
            from evaluators.gate import measure_champion

            timings["champion_side"] = measure_champion(settings)
        t1 = time.monotonic()
        from retrain.training import hardware

        hw = hardware.detect()
        if distributed_launch(run_id, hw, load_config(data=_config(run_id)).processes):
            candidate = out / "candidate"
            base_path = json.loads((out / "candidate.json").read_text())["base_path"]
        else:
            candidate, base_path = train(run_id, settings, plan)
        timings["train_s"] = round(time.monotonic() - t1, 2)
        with session_scope() as session:
            run = runs.get_run(session, run_id)
            version = runs.register_candidate(session, run, base_path=base_path, adapter_path=candidate,
                                              parent=plan["champion"]["version"])
            log.info("candidate %s registered: %s", version.version, candidate)
        t2 = time.monotonic()
        final, decision = (gate(run_id) if evaluate
                           else (RunStatus.succeeded, {"note": "evaluation disabled in the run config"}))
        timings["evaluate_s"] = round(time.monotonic() - t2, 2)
        with session_scope() as session:
            run = runs.get_run(session, run_id)
            run.gate = run.gate or decision
            run.timings = {**(run.timings or {}), **timings, "total_s": round(time.monotonic() - t0, 2)}
            runs.finish(session, run, final)
        return final
    except BaseException as exc:
        with session_scope() as session:
            run = runs.get_run(session, run_id)
            run.timings = {**(run.timings or {}), **timings}
            text = "".join(traceback.format_exception(exc))[-4000:]
            runs.finish(session, run, RunStatus.failed, error=f"{type(exc).__name__}: {exc}\n{text}")
        log.exception("retrain run %s failed", run_id)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return RunStatus.failed


def train_stages(run_id: int) -> None:
    """Entry point under `accelerate launch`: every rank trains; rank 0 writes the candidate."""
    from retrain.training import dist

    settings = get_settings()
    with session_scope() as session:
        plan = runs.get_run(session, run_id).plan
    candidate, base_path = train(run_id, settings, plan)
    if dist.is_main():
        (runs.run_dir(settings, run_id) / "candidate.json").write_text(json.dumps({"base_path": base_path}))
    dist.teardown()


def _config(run_id: int) -> dict | None:
    with session_scope() as session:
        return runs.get_run(session, run_id).config


def execute_command(run_id: int = typer.Argument(..., help="RetrainRun id.")) -> None:
    """Execute (or resume) a retrain run in this process (what the scheduler and the API start)."""
    from core import logs

    logs.configure(get_settings().log_format)
    final = run_pipeline(run_id)
    try:  # the run's event once now (a server or `hitl scheduler` retries it if this fails)
        from core.webhooks import deliver_due

        deliver_due()
    except Exception:
        log.exception("webhook delivery after run %s failed", run_id)
    raise typer.Exit(0 if final != RunStatus.failed else 1)


def train_stages_command(run_id: int = typer.Argument(..., help="RetrainRun id.")) -> None:
    """Train a prepared run's stages (every rank under `accelerate launch`; what a run with processes > 1 starts)."""
    train_stages(run_id)
