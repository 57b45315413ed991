"""The retrain plan: which stages to train from a snapshot, in which order, and why.

Rules (defaults; `methods` in the config forces a list):
1. SFT first when the snapshot has enough corrected / top-rated replies: it teaches the answers themselves.
2. DPO next when there are enough preference pairs; it starts from the SFT result.
3. KTO only when DPO is not planned (too few pairs) but thumbs give enough labelled replies of both kinds:
   single-reply labels are a weaker signal than pairs, so they are the fallback, not an extra pass.
"""

from typing import Any

from retrain.training.config import RetrainConfig


def make_plan(counts: dict[str, dict[str, int]], config: RetrainConfig,
              kto_labels: dict[str, int] | None = None) -> dict[str, Any]:
    """`counts` is the snapshot's {kind: {split: n}}; `kto_labels` {"desirable": n, "undesirable": n} (train)."""
    stages: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []

    def rows(kind: str, split: str = "train") -> int:
        return int((counts.get(kind) or {}).get(split, 0))

    def add(method: str, reason: str) -> None:
        stages.append({"method": method, "train_rows": rows(method), "eval_rows": rows(method, "eval"),
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
    if n_dpo >= config.dpo.min_rows:
        add("dpo", f"{n_dpo} preference pairs >= {config.dpo.min_rows}"
                   + ("; after SFT, so preferences refine the corrected answers" if stages else ""))
    else:
        skipped.append({"method": "dpo", "reason": f"{n_dpo} preference pairs < {config.dpo.min_rows}"})
    labels = kto_labels or {}
    good, bad = labels.get("desirable", 0), labels.get("undesirable", 0)
    if any(s["method"] == "dpo" for s in stages):
        skipped.append({"method": "kto", "reason": "DPO planned: pairs are the stronger preference signal"})
    elif n_kto < config.kto.min_rows:
        skipped.append({"method": "kto", "reason": f"{n_kto} labelled replies < {config.kto.min_rows}"})
    elif kto_labels is not None and (good == 0 or bad == 0):
        skipped.append({"method": "kto", "reason": f"one class is empty ({good} desirable, {bad} undesirable)"})
    else:
        add("kto", f"too few pairs for DPO; {n_kto} labelled replies ({good} up, {bad} down) >= "
                   f"{config.kto.min_rows}")
    return _finish(stages, skipped, config)


def _finish(stages: list[dict], skipped: list[dict], config: RetrainConfig) -> dict[str, Any]:
    sweep = None
    if stages and (config.sweep_learning_rates or config.sweep_epochs):
        sweep = {"stage": stages[0]["method"],
                 "learning_rates": config.sweep_learning_rates or [getattr(config, stages[0]["method"]).learning_rate],
                 "epochs": config.sweep_epochs or [getattr(config, stages[0]["method"]).num_train_epochs],
                 "reason": "small sweep on the first stage, the trial with the lowest eval loss wins"}
    for stage in stages:
        if stage["eval_rows"] == 0:
            stage["note"] = "no eval split: no early stopping, the last step is kept"
    return {"stages": stages, "skipped": skipped, "sweep": sweep,
            "summary": " → ".join(s["method"] for s in stages) or "nothing to train"}
