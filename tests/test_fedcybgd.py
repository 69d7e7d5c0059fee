"""FedCyBGD and the full-parameter baselines end to end: the real Flower simulation, real
(tiny) models, hostile clients among honest ones."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from conftest import ONE_CORE
from fedpress.config import load_config
from fedpress.export import load_run
from fedpress.flower import client_app as honest
from fedpress.flower import node, protocol
from fedpress.flower.simulation import simulate
from fedpress.methods.centralized.runs import run_centralized_cyclic
from fedpress.methods.fed_full.task import build_full_task
from fedpress.methods.fedcybgd.client import VIEW_META, VIEW_TENSORS
from fedpress.methods.fedcybgd.server import BLOCK, TURN
from fedpress.methods.fedcybgd.turns import task_layout, train_block, turn_seed
from fedpress.models import config_of
from fresh_interpreter import logits_elsewhere, logits_here
from plan_check import assert_plan_matches

# partition -> how its reply is corrupted (partition 0 is honest). With 2 decoder layers and
# 4 turns in ascending order: p0 trains layer 0, p1 layer 1, p2 layer 0, p3 layer 1.
ATTACKS = {1: "nan", 2: "wrong-block", 3: "truncated"}

evil_app = ClientApp()
evil_app.query()(honest.query)


@evil_app.train()
def train(msg: Message, context: Context) -> Message:
    attack = ATTACKS.get(int(context.node_config["partition-id"]))
    reply = honest.train(msg, context)
    if attack is None:
        return reply
    packed = reply.content[protocol.UPDATE][protocol.PACKED].numpy()
    if attack == "nan":
        values = packed.view(np.float32).copy()
        values[7] = np.nan
        packed = values.view(np.uint8)
    elif attack == "wrong-block":
        metrics = dict(reply.content[protocol.TRAIN_METRICS])
        metrics[BLOCK] = int(metrics[BLOCK]) + 1
        reply.content[protocol.TRAIN_METRICS] = MetricRecord(metrics)
    elif attack == "truncated":
        packed = packed[:-4]  # the block's shapes do not fit any more
    reply.content[protocol.UPDATE] = ArrayRecord({protocol.PACKED: Array(packed)})
    return reply


def replay_first_turn(config):
    """(task, block, change, peak memory) of turn 0: partition 0 trains layer 0 from the
    pretrained weights, as the run's first client did."""
    task = build_full_task(config)
    task.set_adapter(task.initial_adapter)
    layout = task_layout(task)
    block = layout.block_of_layer(0)
    share = task.encode_all(task.splits.client_shares[0])
    _, delta, memory = train_block(task, layout, block, share, 0, turn_seed(config, 0, 0))
    return task, block, delta, memory["bytes"]


def two_client_fedcybgd(*extra: str):
    """A one-round FedCyBGD run of tiny-llama on 2 clients, plus `extra` settings."""
    base = ["method=fedcybgd", "model=tiny-llama", "num_clients=2", "rounds=1"]
    return load_config(None, [*base, "data.builtin_size=300", "eval.per_round_examples=20", *extra])


@pytest.mark.slow  # a real Flower simulation (or run)
def test_fedcybgd_trains_one_block_per_turn_and_rejects_hostile_blocks(tmp_path):
    config = load_config(
        None,
        [
            "method=fedcybgd",
            "model=tiny-llama",
            "num_clients=4",
            "rounds=1",
            "cybgd.turns_per_round=4",
            "train.local_steps=2",
            "data.builtin_size=300",
            "eval.per_round_examples=20",
            *ONE_CORE,
            # A failed turn is retried (federation.max_retries) like a failed round; a hostile
            # client fails every retry, so none here: each counts once.
            "federation.max_retries=0",
        ],
    )
    out = tmp_path / "run"
    simulate(config, out, client_app=evil_app)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_failed_total"] == 3 and summary["turns_failed"] == 3
    assert summary["blocks"] == ["layers.0", "layers.1"]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["clients_sampled"] == 4 and rounds[1]["clients_ok"] == 1
    assert rounds[1]["clients_participated"] == 4  # one turn each
    for name in ("config.toml", "curves.png", "checkpoint.safetensors"):
        assert (out / name).is_file()

    # Replay the honest turn (partition 0, layer 0, from the pretrained weights): the final
    # model is exactly that change on layer 0 and the pretrained weights everywhere else.
    task, block, delta, peak = replay_first_turn(config)
    final = load_file(out / "model.safetensors")
    assert set(final) == set(task.initial_adapter)
    for name, value in final.items():
        if name in block.params:
            expected = task.initial_adapter[name] + delta[name]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(value, task.initial_adapter[name]), name
    assert any(delta[n].abs().max() > 0 for n in block.params)
    assert summary["trainable_params_per_client"] == sum(final[n].numel() for n in block.params)
    assert summary["upload_bytes_per_turn"] < 1.2 * 4 * summary["trainable_params_per_client"]
    assert peak > 0 and summary["client_peak_mem_bytes"] > 0


@pytest.mark.slow  # a real Flower simulation (or run)
def test_fed_full_writes_a_loadable_full_model(tmp_path):
    config = load_config(
        None,
        [
            "method=fed-full",
            "model=tiny-gpt2",
            "num_clients=2",
            "rounds=1",
            "train.local_steps=1",
            "data.builtin_size=300",
            "eval.per_round_examples=20",
            *ONE_CORE,
        ],
    )
    out = tmp_path / "run"
    summary = simulate(config, out)
    assert_plan_matches(out)
    state = load_file(out / "model.safetensors")
    model = AutoModelForCausalLM.from_config(config_of("tiny-gpt2"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    initial = build_full_task(config).initial_adapter
    assert set(state) == set(initial)
    assert all(torch.equal(state[n], initial[n]) is False for n in state if "ln_" not in n)
    # Both clients sent every parameter: the uplink is the whole model.
    assert summary["bytes_up_total"] > 2 * 4 * sum(t.numel() for t in initial.values())
    assert summary["client_peak_mem_bytes"] > 0
    # run/model is a transformers folder: a fresh interpreter, no fedpress, the same logits.
    assert (out / "model" / "model.safetensors").samefile(out / "model.safetensors")
    elsewhere = logits_elsewhere({"model": out / "model"}, tmp_path)["model"]
    torch.testing.assert_close(elsewhere, logits_here(load_run(out).model))


def test_centralized_cyclic_trains_only_its_blocks_in_peft_mode(tmp_path):
    config = load_config(
        None,
        [
            "method=centralized-cyclic",
            "model=tiny-qwen2",
            "num_clients=2",
            "rounds=1",
            "cybgd.turns_per_round=1",
            "cybgd.peft=true",
            "train.local_steps=2",
            "data.builtin_size=300",
            "eval.per_round_examples=20",
        ],
    )
    summary = run_centralized_cyclic(config, tmp_path)
    assert_plan_matches(tmp_path)
    adapter = load_file(tmp_path / "adapter.safetensors")
    from fedpress.task import build_task

    initial = build_task(config).initial_adapter
    assert set(adapter) == set(initial) and all("lora_" in n for n in adapter)
    changed = {n for n in adapter if not torch.equal(adapter[n], initial[n])}
    assert changed and all(".layers.0." in n for n in changed)
    assert summary["client_steps_total"] == 2


@pytest.mark.slow  # a real Flower simulation (or run)
def test_fedcybgd_peft_mode_runs_federated_and_uploads_only_the_blocks_adapter(tmp_path):
    """`cybgd.peft = true` on the simulation engine: each turn trains and uploads the LoRA
    tensors of its one decoder layer; the base never travels; the output is an adapter."""
    config = two_client_fedcybgd("cybgd.peft=true", "train.local_steps=2", *ONE_CORE)
    out = tmp_path / "run"
    summary = simulate(config, out)
    assert_plan_matches(out)
    assert summary["turns_failed"] == 0 and summary["turns"] == 2  # layer 0, then layer 1
    assert summary["blocks"] == ["layers.0", "layers.1"]
    from fedpress.task import build_task

    initial = build_task(config).initial_adapter
    adapter = load_file(out / "adapter.safetensors")
    assert set(adapter) == set(initial) and all("lora_" in n for n in adapter)
    assert not (out / "model.safetensors").exists()
    per_layer = {
        layer: sum(t.numel() for n, t in initial.items() if f".layers.{layer}." in n)
        for layer in (0, 1)
    }
    assert summary["trainable_params_per_client"] == max(per_layer.values())
    # A turn's upload is one layer's adapter tensors (fp32, framing on top), far below the
    # whole adapter; the downloads carry adapter blocks only, never the base's weights.
    assert summary["upload_bytes_per_turn"] < 1.2 * 4 * per_layer[0]
    assert summary["bytes_down_total"] < 1.2 * 4 * 2 * sum(per_layer.values())
    changed = {n for n in adapter if not torch.equal(adapter[n], initial[n])}
    assert any(".layers.0." in n for n in changed) and any(".layers.1." in n for n in changed)


def test_lower_precision_block_trains_on_an_fp32_master_copy():
    config = load_config(
        None,
        ["model=tiny-llama", "runtime.dtype=bfloat16", "train.local_steps=2", "train.lr=1e-2"],
    )
    task = build_full_task(config)
    layout = task_layout(task)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    block = layout.block_of_layer(1)
    data = task.encode_all(task.splits.client_shares[0])
    _, delta, _ = train_block(task, layout, block, data, 0, 0)
    params = dict(task.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in params.values())
    for name, param in params.items():
        if name in block.params:
            assert delta[name].dtype == torch.float32
        else:
            assert torch.equal(param, before[name]), name
    # The change is kept in fp32: steps smaller than bf16's resolution are not lost.
    assert any(
        not torch.equal(
            (before[n].float() + delta[n]).bfloat16().float(), before[n].float() + delta[n]
        )
        for n in block.params
    )


# The client view's pruned blocks after each turn, written where the test can read them (the
# simulation's clients run in other processes).
spy_app = ClientApp()
spy_app.query()(honest.query)


@spy_app.train()
def spy_train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    # What the node holds lives in its Context.state, as Flower keeps it between messages.
    held = protocol.record_to_tensors(context.state[VIEW_TENSORS])
    exact = json.loads(str(context.state[VIEW_META]["exact"]))
    layout = task_layout(build_full_task(node.run_config(context)))
    pruned = {
        name: held[name].contiguous()
        for index, is_exact in exact.items()
        if not is_exact
        for name in layout.blocks[int(index)].params
    }
    turn = int(msg.content[protocol.INSTRUCTIONS][TURN])
    save_file(pruned, Path(os.environ["FEDPRESS_SPY_DIR"]) / f"turn{turn}.safetensors")
    return reply


@pytest.mark.slow  # a real Flower simulation (or run)
def test_fedcybgd_pruned_change_download_rebuilds_the_current_block(tmp_path, monkeypatch):
    """cybgd.prune_target = "delta": a client rebuilds a changed frozen block as pretrained
    weights + the larger half of the change, close to the server's block."""
    monkeypatch.setenv("FEDPRESS_SPY_DIR", str(tmp_path))
    config = two_client_fedcybgd(
        "cybgd.turns_per_round=4",
        "cybgd.prune_ratio=0.5",
        "cybgd.prune_target=delta",
        "train.local_steps=1",
        *ONE_CORE,
    )
    summary = simulate(config, tmp_path / "run", client_app=spy_app)
    assert_plan_matches(tmp_path / "run")  # pruned changes of frozen blocks, delta-synced
    assert summary["turns_failed"] == 0
    assert summary["download_bytes_per_turn"]["later_mean"] < 0.5 * summary["full_model_bytes"]

    # Turn 0: partition 0 trains layer 0 from the pretrained weights (replayed here). Turn 1:
    # partition 1 (layer 1) receives layer 0 as a pruned change.
    task, block, delta, _ = replay_first_turn(config)
    rebuilt = load_file(tmp_path / "turn1.safetensors")
    assert set(rebuilt) == set(block.params)
    matrices = [n for n in block.params if delta[n].dim() >= 2]
    assert matrices
    for name in matrices:
        error = rebuilt[name] - (task.initial_adapter[name] + delta[name])
        assert error.norm() < delta[name].norm(), name  # at most the smaller half of the change
        assert (error.abs() < 1e-6).float().mean() > 0.4, name  # the larger half exact
