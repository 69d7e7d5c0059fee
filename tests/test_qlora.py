"""QLoRA: the LoRA methods over a base held in 8 or 4 bits by the real bitsandbytes, on CPU.

The federated 4-bit run is tests/test_resume.py's: its runs train over a 4-bit base, and the
uninterrupted one is held to `check_quantized_run` before the kill-and-resume."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import ONE_CORE
from fedpress import registry
from fedpress.config import LoraConfig, RuntimeConfig, load_config
from fedpress.errors import FedpressError
from fedpress.export import export_run, load_run
from fedpress.flower import protocol
from fedpress.models import add_lora, load_base_model, quantized_layers
from fedpress.runner import run_config
from fedpress.task import build_task

LAYER_TYPE = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}
IDS = torch.tensor([[1, 504, 3219, 314, 253, 1345, 30, 198, 32, 25, 3020]])


@pytest.mark.parametrize("method", ["fed-full", "fedcybgd", "fedkseed", "centralized-full"])
def test_quantize_is_refused_where_the_base_weights_train(method):
    with pytest.raises(FedpressError, match=f"{method} trains the base model's weights"):
        load_config(None, [f"method={method}", "runtime.quantize=4bit"])


def test_fed_sb_on_a_quantized_base_needs_the_random_init():
    with pytest.raises(FedpressError, match="fedsb.init = 'random'"):
        load_config(None, ["method=fed-sb", "runtime.quantize=8bit"])
    load_config(None, ["method=fed-sb", "runtime.quantize=8bit", "fedsb.init=random"])


def test_bitsandbytes_without_cpu_kernels_is_refused_naming_the_version(monkeypatch):
    monkeypatch.setattr(bnb, "__version__", "0.44.1")
    runtime = RuntimeConfig(device="cpu", quantize="4bit")
    with pytest.raises(FedpressError, match=r"bitsandbytes >= 0\.50\.2 \(installed: 0\.44\.1\)"):
        load_base_model("tiny-llama", runtime)


def test_a_process_started_without_bitsandbytes_refuses_to_quantize(monkeypatch):
    """`fedpress.lean_imports`: a one-run process of a run without quantization marks
    bitsandbytes absent; asked to quantize anyway, it says so instead of failing deep in
    transformers."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(FedpressError, match="started without bitsandbytes"):
        load_base_model("tiny-llama", RuntimeConfig(device="cpu", quantize="8bit"))


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_tiny_base_is_quantized_and_its_adapter_trains_after_an_evaluation(bits):
    """Every linear layer of the decoder is a bitsandbytes layer (the tiny models honour the
    setting); and after an evaluation pass, every LoRA tensor still gets a gradient (bnb
    0.50's bf16 CPU repacking, which has no backward, would leave the lower layers at 0)."""
    model = load_base_model("tiny-llama", RuntimeConfig(device="cpu", quantize=bits))
    layers = quantized_layers(model)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 14 and set(layers) <= set(linear)  # 2 layers x (4 attn + 3 mlp)
    assert all("lm_head" not in name for name in layers)
    model = add_lora(model, LoraConfig())
    with torch.no_grad():
        model.eval()(input_ids=IDS)
    model.train()(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize(("method", "extra"), [("ffa-lora", []), ("fed-sb", ["fedsb.init=random"])])
def test_other_lora_methods_build_their_client_task_on_a_4bit_base(method, extra):
    config = load_config(
        None, ["model=tiny-llama", f"method={method}", "runtime.quantize=4bit", *extra]
    )
    task = registry.get(method).client_task(config)
    assert len(quantized_layers(task.model)) == 14
    trainable = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


OVERRIDES = [
    "model=tiny-llama",
    "num_clients=2",
    "rounds=3",
    "train.local_steps=3",
    "train.lr=0.01",
    "data.builtin_size=200",
    "data.eval_size=32",
    "runtime.quantize=8bit",
    *ONE_CORE,
]


@pytest.mark.slow  # a real Flower simulation
def test_an_8bit_base_trains_aggregates_and_exports(tmp_path):
    run_config(load_config(None, OVERRIDES), tmp_path / "run")
    check_quantized_run(tmp_path / "run", tmp_path)


def check_quantized_run(run: Path, tmp_path: Path) -> None:
    """What a finished lora-fedavg run over a quantized base must show (also asked of
    test_resume.py's 4-bit runs). Every client builds its model through `build_task`, which
    refuses a base bitsandbytes did not quantize: a round with every client accepted had the
    quantized layers in every client."""
    config = load_config(run / "config.toml")
    bits = config.runtime.quantize
    task = build_task(config)  # as each client builds it
    assert all(isinstance(m, LAYER_TYPE[bits]) for m in _linear_layers(task.model))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["clients_ok"] == config.num_clients for r in rows[1:])
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] - 0.3  # it learned
    # The adapter is what travels: each client's arrays are the bytes an fp32 base's client
    # sends through the same encoder.
    fp32 = build_task(replace(config, runtime=replace(config.runtime, quantize="none")))
    codec = protocol.make_codec("none", config.codec, uplink=True)
    upload = protocol.encode_record(codec, fp32.adapter(), fp32.adapter_shapes()).count_bytes()
    assert all(r["payload_bytes_up"] == config.num_clients * upload for r in rows[1:])
    adapter = load_file(str(run / "adapter.safetensors"))
    moved = [(adapter[n] - t).abs().max() for n, t in task.initial_adapter.items()]
    assert min(moved) > 0  # every tensor aggregated away from the seeded start

    # Export folds the adapter into the dequantized base: the same model, in plain weights.
    with torch.no_grad():
        expected = load_run(run).model.eval()(input_ids=IDS).logits
    merged = export_run(run, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert not quantized_layers(plain)
    # 4-bit layers compute with the dequantized weight: the same numbers. LLM.int8 (8-bit)
    # also rounds each layer's input to int8, which the plain model does not (measured 1.5e-3
    # on logits of magnitude ~1).
    tolerance = {"4bit": {}, "8bit": {"atol": 1e-2, "rtol": 0.0}}[bits]
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(input_ids=IDS).logits, expected, **tolerance)
    assert "dequantized to fp32" in (merged / "README.md").read_text()
    assert f"load_in_{bits}=True" in (run / "adapter" / "README.md").read_text()


def _linear_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The base's decoder linear layers under the LoRA wrappers."""
    return [
        m.get_base_layer() if hasattr(m, "get_base_layer") else m
        for n, m in model.named_modules()
        if n.endswith("_proj") and ".layers." in n
    ]
