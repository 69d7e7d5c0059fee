"""The tuned model of a run, loaded back or exported as a standard Hugging Face folder.

A run folder holds its config plus either `adapter.safetensors` (LoRA methods: the trainable
tensors by PEFT parameter name) or `model.safetensors` (full-parameter methods: the whole
state dict). `load_run` rebuilds the tuned model from them; `export_run` writes it so that
`transformers`, `peft`, lm-evaluation-harness or a serving engine load it with no fedpress code:

- merged (default): LoRA folded into the base weights, `save_pretrained` + tokenizer;
- adapter: a PEFT folder (adapter_config.json + adapter_model.safetensors, PEFT's key names)
  plus, for bases that are on no hub (tiny test models, the GGUF-derived SmolLM2 alias, local
  folders), the base model itself in `base_model/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedpress.config import RunConfig, load_config
from fedpress.errors import FedpressError
from fedpress.models import (
    SMOLLM2_ALIAS,
    TINY_MODELS,
    add_lora,
    load_adapter_state,
    load_base_model,
    load_tokenizer,
)

ADAPTER_FILE = "adapter.safetensors"
FULL_MODEL_FILE = "model.safetensors"
BASE_SUBFOLDER = "base_model"


@dataclass
class TunedRun:
    config: RunConfig
    model: torch.nn.Module  # a PeftModel (kind "lora") or a plain PreTrainedModel ("full")
    tokenizer: object
    kind: str  # lora | full


def is_run_folder(path: Path) -> bool:
    return (path / "config.toml").is_file() and (
        (path / ADAPTER_FILE).is_file() or (path / FULL_MODEL_FILE).is_file()
    )


def load_run(folder: Path, *, cpu: bool = False) -> TunedRun:
    """The run's base model with its tuned weights. `cpu` forces fp32 on CPU (for export): a
    quantized base (QLoRA) is loaded quantized, as it was trained, then dequantized to fp32, so
    the export holds the weights the adapter was trained over in a form any tool loads."""
    folder = Path(folder)
    if not (folder / "config.toml").is_file():
        raise FedpressError(f"{folder} is not a run folder (no config.toml)")
    config = load_config(folder / "config.toml")
    runtime = config.runtime
    if cpu:
        runtime = replace(runtime, device="cpu", dtype="float32")
    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model, runtime)
    if cpu and runtime.quantize != "none":
        base = base.dequantize(dtype=torch.float32)
    if (folder / FULL_MODEL_FILE).is_file():
        load_full_state(base, folder / FULL_MODEL_FILE)
        return TunedRun(config, base.eval(), tokenizer, "full")
    if not (folder / ADAPTER_FILE).is_file():
        raise FedpressError(
            f"{folder} has neither {ADAPTER_FILE} nor {FULL_MODEL_FILE}: did the run finish?"
        )
    model = add_lora(base, config.lora)
    try:
        load_adapter_state(model, load_file(str(folder / ADAPTER_FILE)))
    except ValueError as exc:
        raise FedpressError(
            f"{folder / ADAPTER_FILE} does not fit the run's model: {exc}"
        ) from None
    return TunedRun(config, model.eval(), tokenizer, "lora")


def load_full_state(model: torch.nn.Module, path: Path) -> None:
    """A full state dict into `model`: every key must belong to it, and only weights tied to
    another one (the LM head tied to the embeddings) may be absent."""
    state = load_file(str(path))
    prefix = "base_model.model."  # saved from a PEFT-wrapped model
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(tied_keys(model))
    missing = [k for k in missing if k not in tied]
    if unexpected or missing:
        raise FedpressError(
            f"{path} does not fit the run's model: "
            f"unexpected {unexpected[:3]}, missing {missing[:3]}"
        )
    if tied and getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def tied_keys(model: torch.nn.Module) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(keys, dict):  # newer transformers: {target: source}
        keys = list(keys)
    return [k for k in keys if isinstance(k, str)]


def base_is_local(name: str) -> bool:
    """Bases that are on no hub and must travel with an adapter export."""
    return name in TINY_MODELS or name == SMOLLM2_ALIAS or Path(name).expanduser().is_dir()


def export_run(folder: Path, out: Path, *, merge: bool = True) -> Path:
    folder, out = Path(folder), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FedpressError(f"{out} exists and is not empty: choose a new --out")
    run = load_run(folder, cpu=True)
    out.mkdir(parents=True, exist_ok=True)
    if run.kind == "full" or merge:
        model = run.model.merge_and_unload() if run.kind == "lora" else run.model
        model.save_pretrained(out)
        run.tokenizer.save_pretrained(out)
        _write_readme(out, run, "merged")
        return out
    run.model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors
    run.tokenizer.save_pretrained(out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    if base_is_local(run.config.model):
        base_dir = out / BASE_SUBFOLDER
        # The adapter is saved: take the LoRA layers out and save the untouched base.
        run.model.unload().save_pretrained(base_dir)
        run.tokenizer.save_pretrained(base_dir)
        adapter_config["base_model_name_or_path"] = str(base_dir.resolve())
    else:
        adapter_config["base_model_name_or_path"] = run.config.model
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    _write_readme(out, run, "adapter")
    return out


def _write_readme(out: Path, run: TunedRun, mode: str) -> None:
    if mode == "merged":
        how = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f'model = AutoModelForCausalLM.from_pretrained("{out}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{out}")'
        )
    else:
        base = (
            f'"{out / BASE_SUBFOLDER}"'
            if base_is_local(run.config.model)
            else f'"{run.config.model}"'
        )
        how = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained({base})\n"
            f'model = PeftModel.from_pretrained(base, "{out}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{out}")'
        )
    text = (
        f"# {run.config.method} / {run.config.model}, exported by fedpress ({mode})\n\n"
        f"Tuned with `{run.config.method}` for {run.config.rounds} rounds on "
        f"`{run.config.data.source}`.\n\n"
        + (
            f"The base was trained in {run.config.runtime.quantize} (bitsandbytes); this folder "
            "holds it dequantized to fp32.\n\n"
            if run.config.runtime.quantize != "none"
            else ""
        )
        + f"```python\n{how}\n```\n"
    )
    (out / "README.md").write_text(text)
