"""Malformed and malicious client replies, sent through the real Flower simulation and the real
server strategy: each is rejected, logged and counted; the global adapter only ever moves by
the honest client's update."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.config import load_config
from fedpress.flower import client_app as honest
from fedpress.flower import protocol
from fedpress.flower.simulation import simulate
from fedpress.task import build_task

# partition id -> how that client corrupts its reply (partition 0 stays honest)
ATTACKS = {
    1: "nan",
    2: "wrong-key",
    3: "oversized",
    4: "wrong-dtype",
    5: "absurd-count",
    6: "truncated",
    7: "raise",
}

evil_app = ClientApp()
evil_app.query()(honest.query)


@evil_app.train()
def train(msg: Message, context: Context) -> Message:
    attack = ATTACKS.get(int(context.node_config["partition-id"]))
    if attack == "raise":
        raise RuntimeError("client crashed mid-round")
    reply = honest.train(msg, context)
    if attack is None:
        return reply
    packed = reply.content[protocol.UPDATE][protocol.PACKED].numpy()
    metrics = dict(reply.content[protocol.TRAIN_METRICS])
    if attack == "nan":
        values = packed.view(np.float32).copy()
        values[3] = np.nan
        packed = values.view(np.uint8)
    elif attack == "wrong-key":
        reply.content[protocol.UPDATE] = ArrayRecord({"weights": Array(packed)})
        return reply
    elif attack == "oversized":
        packed = np.concatenate([packed, np.zeros(10 * packed.size, np.uint8)])
    elif attack == "wrong-dtype":
        reply.content[protocol.UPDATE] = ArrayRecord(
            {protocol.PACKED: Array(packed.view(np.float32))}
        )
        return reply
    elif attack == "absurd-count":
        metrics["num-examples"] = 10**12
        reply.content[protocol.TRAIN_METRICS] = MetricRecord(metrics)
    elif attack == "truncated":
        packed = packed[:-4]
    reply.content[protocol.UPDATE] = ArrayRecord({protocol.PACKED: Array(packed)})
    return reply


@pytest.mark.slow  # a real Flower simulation (or run)
def test_hostile_replies_never_touch_the_global_adapter(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=8",
            "rounds=1",
            "train.local_steps=2",
            "data.builtin_size=400",
            *ONE_CORE,
        ],
    )
    out = tmp_path / "run"
    simulate(config, out, client_app=evil_app)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["clients_sampled"] == 8
    assert rounds[1]["clients_ok"] == 1
    assert rounds[1]["clients_failed"] == 7

    # Replay the honest client's round locally: the final adapter must equal exactly
    # initial + its change (one accepted reply, so its weight is 1).
    task = build_task(config)
    task.set_adapter(task.initial_adapter)
    task.train_round(
        task.encode_all(task.splits.client_shares[0]),
        1,
        steps=2,
        seed=config.seed * 1_000_003 + 1_009,
    )
    expected = task.adapter()
    final = load_file(out / "adapter.safetensors")
    assert set(final) == set(expected)
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(final[n], task.initial_adapter[n]) for n in final)


@pytest.mark.parametrize("attack", ["nan", "oversized", "truncated", "wrong-key"])
def test_decode_record_rejects_each_attack_without_simulation(attack):
    from fedpress.codecs import PayloadError

    config = load_config(None, ["model=tiny-llama"])
    shapes = build_task(config).adapter_shapes()
    codec = protocol.make_codec("int8", config.codec, uplink=True)
    update = {name: torch.randn(shape) for name, shape in shapes.items()}
    packed = protocol.encode_record(codec, update, shapes)[protocol.PACKED].numpy()
    if attack == "nan":  # a NaN scale
        packed = packed.copy()
        packed[-4:] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
        record = ArrayRecord({protocol.PACKED: Array(packed)})
    elif attack == "oversized":
        record = ArrayRecord({protocol.PACKED: Array(np.zeros(10**7, np.uint8))})
    elif attack == "truncated":
        record = ArrayRecord({protocol.PACKED: Array(packed[:-1])})
    else:
        record = ArrayRecord({"other": Array(packed)})
    with pytest.raises(PayloadError):
        protocol.decode_record(codec, record, shapes)


SCALED = 3  # the partition whose client sends 50x its honest change, well formed
scaling_app = ClientApp()
scaling_app.query()(honest.query)


@scaling_app.train()
def train_scaled(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    if int(context.node_config["partition-id"]) == SCALED:
        values = reply.content[protocol.UPDATE][protocol.PACKED].numpy().view(np.float32) * 50
        reply.content[protocol.UPDATE] = ArrayRecord(
            {protocol.PACKED: Array(values.view(np.uint8))}
        )
    return reply


@pytest.mark.slow  # a real Flower simulation (or run)
def test_the_median_applies_its_rule_and_resists_a_scaled_update(tmp_path):
    """Every reply passes the checks; the server applies the median of the four changes,
    which lies nearer the honest clients' mean than the plain mean does."""
    from fedpress.aggregation import aggregate, norm
    from fedpress.config import AggregationConfig
    from fedpress.flower.node import train_seed

    overrides = ["model=tiny-llama", "num_clients=4", "rounds=1", "train.local_steps=2"]
    config = load_config(
        None, [*overrides, "data.builtin_size=400", *ONE_CORE, "aggregation.rule=median"]
    )
    out = tmp_path / "run"
    simulate(config, out, client_app=scaling_app)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["clients_ok"] == 4 and rounds[1]["clients_failed"] == 0

    # Each client's change, replayed here (the attacker's scaled as it sent it).
    task = build_task(config)
    start = task.initial_adapter
    changes = []
    for partition in range(4):
        task.set_adapter(start)
        share = task.encode_all(task.splits.client_shares[partition])
        task.train_round(share, 1, steps=2, seed=train_seed(config, 1, partition))
        scale = 50.0 if partition == SCALED else 1.0
        changes.append({k: (v - start[k]) * scale for k, v in task.adapter().items()})
    applied = {k: v - start[k] for k, v in load_file(out / "adapter.safetensors").items()}
    expected = aggregate(config.aggregation, changes, [1.0] * 4)
    for name in expected:
        torch.testing.assert_close(applied[name], expected[name], rtol=1e-4, atol=1e-6)
    honest = [change for i, change in enumerate(changes) if i != SCALED]
    honest_mean = aggregate(AggregationConfig(), honest, [1.0] * 3)
    plain = aggregate(AggregationConfig(), changes, [1.0] * 4)

    def distance(update):
        return norm({k: update[k] - honest_mean[k] for k in honest_mean})

    assert distance(applied) < distance(plain) / 5
