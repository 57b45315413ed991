"""LoRA adapter files: checksums, loading a champion for training, and champion chaining.

Champion chaining (documented choice): **stacked, stored as one adapter**. A new run trains a fresh LoRA on
the champion with the champion's adapter merged in memory (W' = W + B1A1). Since LoRA deltas add, the
candidate's adapter is the exact concatenation of the champion's adapter and the new one along the rank:
B = [s1*B1 | s2*B2], A = [A1; A2], r = r1 + r2, alpha = r (scaling 1), so B A = s1 B1 A1 + s2 B2 A2.
The registry row keeps the champion's `base_path` and points at this one adapter, which
`service.backends.local.load_model(base_path, adapter_path)` loads and merges; remote LoRA servers (vLLM)
serve it on the same base. When the stacked rank would pass `max_stacked_rank` (or `chaining: merge`), the
champion is instead merged into a new base checkpoint under `data_dir/models/merged/<version>/` and the
candidate adapter holds only the new LoRA. Serving from a vLLM fleet (`HITL_BACKEND=vllm`), a stack above the
replicas' `--max-lora-rank` is instead compressed back to it (`compress_adapter`: the best approximation of that
rank, its error recorded in the run's metrics), because a LoRA server cannot switch to a merged base without a
restart; the gates judge the compressed candidate.
"""

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def checksum(path: str | Path) -> str:
    """sha256 over the adapter directory: every file's relative name and bytes, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_adapter(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / ADAPTER_CONFIG).exists() and (Path(path) / ADAPTER_WEIGHTS).exists()


def adapter_rank(path: str | Path | None) -> int:
    if not is_adapter(path):
        return 0
    return int(json.loads((Path(path) / ADAPTER_CONFIG).read_text())["r"])


def _scaling(config: dict) -> float:
    r = config["r"]
    return config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)


def require(paths: list[str | Path | None]) -> list[Path]:
    """The adapters named (None: no adapter, e.g. a champion that is the base); a named one that is missing or
    incomplete is an error: training or stacking without it would silently drop a stage or the champion."""
    named = [Path(p) for p in paths if p]
    missing = [str(p) for p in named if not is_adapter(p)]
    if missing:
        raise FileNotFoundError(f"adapter missing or incomplete: {', '.join(missing)}")
    return named


def concat_adapters(parts: list[str | Path | None], out: str | Path) -> Path:
    """Write one adapter whose delta equals the sum of the parts' deltas (rank concatenation)."""
    parts = require(parts)
    if not parts:
        raise ValueError("no adapters to combine")
    configs = [json.loads((p / ADAPTER_CONFIG).read_text()) for p in parts]
    weights = [load_file(p / ADAPTER_WEIGHTS) for p in parts]
    for config in configs:
        if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
            raise ValueError("only plain LoRA adapters can be stacked")
    modules = sorted({key.rsplit(".lora_", 1)[0] for w in weights for key in w if ".lora_" in key})
    combined: dict[str, torch.Tensor] = {}
    for module in modules:
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        present = next(w for w in weights if a_key in w)
        d_in, d_out = present[a_key].shape[1], present[b_key].shape[0]
        a_parts, b_parts = [], []
        for config, w in zip(configs, weights):
            r = config["r"]
            if a_key in w:
                a_parts.append(w[a_key].float())
                b_parts.append(w[b_key].float() * _scaling(config))
            else:  # this part has no LoRA on the module: zero block
                a_parts.append(torch.zeros(r, d_in))
                b_parts.append(torch.zeros(d_out, r))
        dtype = present[a_key].dtype
        combined[a_key] = torch.cat(a_parts, 0).to(dtype).contiguous()
        combined[b_key] = torch.cat(b_parts, 1).to(dtype).contiguous()
    rank = sum(c["r"] for c in configs)
    config = dict(configs[-1])
    targets = set()
    for c in configs:
        t = c.get("target_modules")
        targets.update([t] if isinstance(t, str) else t or [])
    config.update(r=rank, lora_alpha=rank, use_rslora=False, lora_dropout=0.0, target_modules=sorted(targets))
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(combined, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def compress_adapter(path: str | Path, rank: int, out: str | Path | None = None) -> dict:
    """Rewrite an adapter at LoRA rank <= `rank` (for servers with a `--max-lora-rank`, e.g. vLLM).

    Per module the delta s*B A is factored exactly through QR of B and A^T and an SVD of the small core, and only
    its top `rank` singular directions are kept (the best rank-`rank` approximation in Frobenius norm). Returns the
    relative Frobenius error of the dropped part over all modules and the largest per module: 0 when the delta's
    true rank fits."""
    src = Path(path)
    config = json.loads((src / ADAPTER_CONFIG).read_text())
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("only plain LoRA adapters can be compressed")
    weights, scaling = load_file(src / ADAPTER_WEIGHTS), _scaling(config)
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in weights if ".lora_" in key})
    rank_before = config["r"]
    kept = min(rank, rank_before)
    out_weights: dict[str, torch.Tensor] = {}
    total = dropped = worst = 0.0
    for module in modules:
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        a, b = weights[a_key].double(), weights[b_key].double() * scaling
        qb, rb = torch.linalg.qr(b)
        qa, ra = torch.linalg.qr(a.T)
        u, sv, vh = torch.linalg.svd(rb @ ra.T)
        energy, tail = float((sv**2).sum()), float((sv[kept:] ** 2).sum())
        total, dropped = total + energy, dropped + tail
        worst = max(worst, (tail / energy) ** 0.5 if energy > 0 else 0.0)
        root = sv[:kept].sqrt()  # split the singular values evenly between the factors
        new_b, new_a = (qb @ u[:, :kept]) * root, root[:, None] * (vh[:kept] @ qa.T)
        if len(root) < kept:  # a module narrower than the rank: zero directions keep every module at `kept`
            new_b = torch.cat([new_b, new_b.new_zeros(b.shape[0], kept - len(root))], 1)
            new_a = torch.cat([new_a, new_a.new_zeros(kept - len(root), a.shape[1])], 0)
        dtype = weights[a_key].dtype
        out_weights[b_key], out_weights[a_key] = new_b.to(dtype).contiguous(), new_a.to(dtype).contiguous()
    config.update(r=kept, lora_alpha=kept, use_rslora=False)
    target = Path(out) if out else src
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(out_weights, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    for extra in (p for p in src.iterdir() if p.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) and p.is_file()):
        shutil.copy2(extra, tmp / extra.name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return {"rank_before": rank_before, "rank": kept, "modules": len(modules),
            "relative_error": (dropped / total) ** 0.5 if total > 0 else 0.0, "worst_module_error": worst}


def load_merged(base_path: str | Path, adapters: list[str | Path | None], dtype: torch.dtype = torch.float32):
    """The base checkpoint with each adapter merged in, in order (the model a new LoRA trains on); None entries
    are skipped, a named adapter that is not there is an error."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapters = require(adapters)
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def write_merged_base(base_path: str | Path, adapter_path: str | Path | None, out: str | Path) -> Path:
    """Save base + adapter as a full checkpoint (for `chaining: merge`); reused when already there."""
    from transformers import AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_merged(base_path, [adapter_path] if adapter_path else [])
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(base_path)).save_pretrained(tmp)
    tmp.replace(out)
    return out
