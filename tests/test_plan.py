"""`fedpress plan`: planned messages are Flower's own bytes, the memory model's activations are
what autograd saves on a real CPU forward, and the command's table, JSON and errors. Each
method's planned bytes are held against its real run where a test runs it
(`plan_check.assert_plan_matches`)."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from transformers import AutoModelForCausalLM

from fedpress.accounting import message_nbytes
from fedpress.cli import main
from fedpress.config import LoraConfig
from fedpress.flower.planning import PlannedArray, arrays_record
from fedpress.memory import saved_activations
from fedpress.models import _tiny_config, add_lora, config_of
from fedpress.training import logits_at

TINY = ["--set", "model=tiny-llama", "--set", "rounds=2", "--set", "data.builtin_size=300"]


@pytest.mark.parametrize(
    ("dtype", "shape", "fill"),
    [
        ("float32", (64, 8), None),
        ("float32", (64, 8), 0.0),  # two equal arrays ship once
        ("uint8", (123_457,), None),
        ("float16", (3, 5, 7), 1.0),
        ("int64", (0,), None),  # empty: like every other empty int64 array
        ("float32", (1_500, 1_000), None),  # two 5 MiB chunks and a short one
        ("float32", (1_500, 1_000), 0.0),  # its full zero chunks are alike
    ],
)
def test_a_planned_array_weighs_what_flower_ships_for_the_real_one(dtype, shape, fill):
    rng = np.random.default_rng(0)
    if fill is None:
        real = (rng.standard_normal(shape) * 100).astype(dtype)
    else:
        real = np.full(shape, fill, dtype=dtype)
    if real.size == 0:
        twin = np.zeros(shape, dtype=dtype)  # the only content an empty array has
    else:
        twin = real if fill is not None else (rng.standard_normal(shape) * 100).astype(dtype)
    sent = RecordDict({"r": ArrayRecord({"a": Array(real), "b": Array(twin.copy())})})
    planned = RecordDict(
        {
            "r": arrays_record(
                {
                    "a": PlannedArray(dtype, shape, fill=fill),
                    "b": PlannedArray(dtype, shape, fill=fill),
                }
            )
        }
    )
    assert message_nbytes(planned) == message_nbytes(sent)
    assert planned["r"].count_bytes() == sent["r"].count_bytes()


def test_zero_arrays_of_other_shapes_share_their_full_chunks():
    shapes = [(3_000, 1_000), (2_000, 1_500)]
    sent = ArrayRecord({f"a{i}": Array(np.zeros(s, np.float32)) for i, s in enumerate(shapes)})
    planned = arrays_record(
        {f"a{i}": PlannedArray("float32", s, fill=0.0) for i, s in enumerate(shapes)}
    )
    assert message_nbytes(planned) == message_nbytes(sent)


def test_meta_activations_are_what_a_real_cpu_forward_saves():
    """The planned activations: every tensor autograd saves, counted on the meta device with
    the fused attention a CPU step runs; the same count on a real forward here."""
    arch = _tiny_config("tiny-llama", 512, None, None)  # tiny-llama with a small vocabulary
    with torch.device("meta"):
        meta = add_lora(AutoModelForCausalLM.from_config(arch), LoraConfig())
    planned = saved_activations(meta, 2, 24, 2)
    real = add_lora(AutoModelForCausalLM.from_config(arch), LoraConfig())
    params = {p.untyped_storage().data_ptr() for p in real.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    real.train()
    rows, cols = torch.tensor([0, 1]), torch.tensor([3, 7])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = logits_at(real, {"input_ids": torch.randint(0, 500, (2, 24))}, rows, cols)
        torch.nn.functional.cross_entropy(logits, rows)
    assert planned.total == sum(saved.values())
    assert 0 < planned.checkpointed < planned.total


def plan_json(capsys, *args: str) -> list[dict]:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_rows_hold_the_configs_own_method_and_codecs_first(capsys):
    rows = plan_json(
        capsys, *TINY, "--set", "uplink_codec=int8", "--methods", "fed-full", "--codecs", "int4"
    )
    assert [(r["method"], r["uplink_codec"], r["downlink_codec"]) for r in rows] == [
        ("lora-fedavg", "int8", "none"),
        ("fed-full", "int8", "none"),
        ("lora-fedavg", "int4", "none"),
    ]
    for row in rows:
        assert row["bytes_up_total"] > 0 and row["bytes_down_total"] > 0
        assert row["client_peak_mem_bytes"] > row["memory"]["weights"] > 0
    lora, full, int4 = rows
    assert int4["bytes_up_total"] < lora["bytes_up_total"] < full["bytes_up_total"]
    assert lora["client_peak_mem_4bit_bytes"] < lora["client_peak_mem_bytes"]
    assert full["client_peak_mem_4bit_bytes"] is None  # it trains the base


def test_the_table(capsys):
    assert main(["plan", *TINY, "--methods", "fedkseed"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("tiny-llama on cpu, 2 rounds; a training batch of 8 x 128 tokens")
    assert "| lora-fedavg | none / none |" in table and "| fedkseed | none / none |" in table


def test_a_7b_model_on_the_meta_device(capsys):
    (row,) = plan_json(
        capsys,
        *TINY,
        "--model",
        "llama-2-7b",
        "--methods",
        "lora-fedavg",
        "--set",
        "runtime.device=cuda",
        "--set",
        "lora.target_modules=['q_proj','v_proj']",
    )
    # bf16 on CUDA: 6.74 B parameters at 2 bytes; q and v of 32 layers at r = 8 in the messages.
    assert row["memory"]["weights"] == pytest.approx(2 * 6.74e9, rel=0.01)
    lora_numbers = 32 * 2 * 8 * (4096 + 4096)
    assert row["bytes_up_per_client_round"] == pytest.approx(4 * lora_numbers, rel=0.01)
    assert row["client_peak_mem_checkpointing_bytes"] < row["client_peak_mem_bytes"]
    # A 4-bit base: about half a byte a weight instead of two (embeddings and head in fp32).
    saved = row["client_peak_mem_bytes"] - row["client_peak_mem_4bit_bytes"]
    assert 0.6 * row["memory"]["weights"] < saved < 0.75 * row["memory"]["weights"]


def test_a_model_config_json_is_planned(tmp_path, capsys):
    path = tmp_path / "config.json"
    config_of("tiny-qwen2").to_json_file(path)
    (row,) = plan_json(
        capsys,
        *TINY,
        "--set",
        "method=fed-full",
        "--methods",
        "fed-full",
        "--model-config",
        str(path),
    )
    assert row["model"] == "config.json" and row["bytes_up_total"] > 4 * 3_000_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "gpt-17"], "--model: unknown 'gpt-17'"),
        (["--model-config", "missing.json"], "--model-config: cannot read missing.json"),
        (["--methods", "lora-fedavgg"], "--methods: unknown 'lora-fedavgg'"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(args, message, capsys):
    assert main(["plan", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_malformed_config_json_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "config.json"
    for text in ("{not json", '{"hidden_size": 64}', '{"model_type": "no-such-arch"}'):
        path.write_text(text)
        assert main(["plan", *TINY, "--model-config", str(path)]) == 2
        assert "--model-config: not a model config.json" in capsys.readouterr().err


def test_a_method_without_a_plan_cannot_be_planned(monkeypatch, capsys):
    from dataclasses import replace

    from fedpress import registry

    unplanned = replace(registry.get("lora-fedavg"), plan=None)
    monkeypatch.setitem(registry._METHODS, "lora-fedavg", unplanned)
    assert main(["plan", *TINY, "--methods", "lora-fedavg"]) == 2
    assert "method 'lora-fedavg' cannot be planned" in capsys.readouterr().err
