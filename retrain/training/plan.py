"""The retrain plan: which stages to train from a snapshot, in which order, and why.

Rules (defaults; `methods` in the config forces a list):
1. SFT first when the snapshot has enough corrected / top-rated replies: it teaches the answers themselves.
2. DPO next when there are enough preference pairs; it starts from the SFT result.
3. KTO only when DPO is not planned (too few pairs) but thumbs give enough labelled replies of both kinds:
   single-reply labels are a weaker signal than pairs, so they are the fallback, not an extra pass.

After SFT, preference rows that only restate the corrections SFT trains on do not count towards a
preference stage's minimum: DPO pairs of a correction against the reply it corrected, and KTO rows of a
correction or of the reply it corrected. SFT on the correction already teaches them; a second pass on the
same rows doubles the training time of a nightly run without new signal. Comparisons, rating gaps and
thumbs carry what SFT cannot.
"""

from pathlib import Path
from typing import Any

from retrain.training import service as runs
from retrain.training.config import RetrainConfig

BEYOND = " beyond the corrections SFT trains on"


def make_plan(counts: dict[str, dict[str, int]], config: RetrainConfig,
              kto_labels: dict[str, int] | None = None, restating: dict[str, int] | None = None) -> dict[str, Any]:
    """`counts` is the snapshot's {kind: {split: n}}; `kto_labels` {"desirable": n, "undesirable": n} (train);
    `restating` {kind: train rows that only restate corrections} (see the module docstring)."""
    stages: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []

    def rows(kind: str, split: str = "train") -> int:
        return int((counts.get(kind) or {}).get(split, 0))

    def add(method: str, reason: str) -> None:
        stages.append({"method": method, "train_rows": rows(method), "validation_rows": rows(method, "validation"),
                       "reason": reason})

    if config.methods:
        for method in config.methods:
            if rows(method) == 0:
                skipped.append({"method": method, "reason": "forced by config but the train split is empty"})
            else:
                add(method, "forced by config (methods)")
        return _finish(stages, skipped, config)

    n_sft, n_dpo, n_kto = rows("sft"), rows("dpo"), rows("kto")
    if n_sft >= config.sft.min_rows:
        add("sft", f"{n_sft} supervised examples >= {config.sft.min_rows}")
    else:
        skipped.append({"method": "sft", "reason": f"{n_sft} supervised examples < {config.sft.min_rows}"})
    if stages:  # after SFT, rows restating the corrections do not count
        n_dpo, n_kto = (n - (restating or {}).get(kind, 0) for kind, n in (("dpo", n_dpo), ("kto", n_kto)))
    if n_dpo >= config.dpo.min_rows:
        add("dpo", f"{n_dpo} preference pairs >= {config.dpo.min_rows}"
                   + ("; after SFT, so preferences refine the corrected answers" if stages else ""))
    else:
        skipped.append({"method": "dpo", "reason": f"{n_dpo} preference pairs{BEYOND if stages else ''} < "
                                                   f"{config.dpo.min_rows}"})
    labels = kto_labels or {}
    good, bad = labels.get("desirable", 0), labels.get("undesirable", 0)
    if any(s["method"] == "dpo" for s in stages):
        skipped.append({"method": "kto", "reason": "DPO planned: pairs are the stronger preference signal"})
    elif n_kto < config.kto.min_rows:
        skipped.append({"method": "kto", "reason": f"{n_kto} labelled replies{BEYOND if stages else ''} < "
                                                   f"{config.kto.min_rows}"})
    elif kto_labels is not None and (good == 0 or bad == 0):
        skipped.append({"method": "kto", "reason": f"one class is empty ({good} desirable, {bad} undesirable)"})
    else:
        add("kto", f"too few pairs for DPO; {n_kto} labelled replies ({good} up, {bad} down) >= "
                   f"{config.kto.min_rows}")
    return _finish(stages, skipped, config)


def _finish(stages: list[dict], skipped: list[dict], config: RetrainConfig) -> dict[str, Any]:
    search = None
    if stages and len(config.search_lr_factors) > 1 and stages[0]["validation_rows"]:
        search = {"stage": stages[0]["method"], "lr_factors": list(config.search_lr_factors),
                  "max_s": config.search_max_s,
                  "reason": "learning-rate search on the first stage; the trial and step with the lowest "
                            "validation loss win"}
    for stage in stages:
        if stage["validation_rows"] == 0:
            stage["note"] = "no validation split: no early stopping or search, the last step is kept"
    return {"stages": stages, "skipped": skipped, "search": search,
            "summary": " → ".join(s["method"] for s in stages) or "nothing to train"}


def snapshot_plan(snapshot: Path, config: RetrainConfig) -> dict[str, Any]:
    """The plan for a snapshot directory, with its counts and KTO labels."""
    counts = runs.snapshot_counts(snapshot)
    kto = runs.load_rows(snapshot, "kto", "train") if counts["kto"]["train"] else []
    labels = {"desirable": sum(bool(r["label"]) for r in kto), "undesirable": sum(not r["label"] for r in kto)}
    restating = {"dpo": restating_rows(runs.load_rows(snapshot, "dpo", "train")), "kto": restating_rows(kto)}
    plan = make_plan(counts, config, labels, restating)
    plan.update(snapshot_path=str(snapshot), counts=counts, kto_labels=labels, restating=restating)
    return plan


def restating_rows(rows: list[dict]) -> int:
    """Rows of a correction, or of the reply a correction corrected (same message)."""
    lineages = [r.get("lineage") or {} for r in rows]
    corrected = {lin.get("message_id") for lin in lineages if lin.get("via") == "correction"}
    return sum(lin.get("via") == "correction" or lin.get("message_id") in corrected for lin in lineages)


def size_stages(plan: dict[str, Any], config: RetrainConfig, base_path: str) -> None:
    """Each planned stage's budget (steps, tokens, learning rate and why), as training will compute it."""
    from transformers import AutoTokenizer

    from retrain.training.trainers import stage_budget, to_trl_rows

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    for stage in plan["stages"]:
        method = stage["method"]
        rows = to_trl_rows(method, runs.load_rows(Path(plan["snapshot_path"]), method, "train"))
        stage["budget"] = stage_budget(method, getattr(config, method), tokenizer, rows, base_path).as_dict()
