"""Property-based: whatever a client sends, the server's validation either rejects it with
InvalidReply/PayloadError or returns a finite update of exactly the adapter's shapes with a
bounded weight; and the aggregate the server applies, with that reply among honest ones, is
exactly the example-weighted mean of the replies it accepted (the honest ones alone when it
rejects the hostile one)."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpress.codecs import PayloadError
from fedpress.config import load_config
from fedpress.flower import protocol
from fedpress.flower.exchange import RoundStats, run_exchange
from fedpress.flower.server import InvalidReply
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.task import build_task

NODE = 7  # the fuzzed client; HONEST nodes -> (partition, examples) reply honestly beside it
HONEST = {11: (1, 8), 12: (2, 24)}
CODECS = ["none", "int8", "topk"]
COUNTS = {codec: {"generated": 0, "rejected": 0, "accepted": 0} for codec in CODECS}
# Per codec; FEDPRESS_FUZZ_EXAMPLES=1000 for a long run (the suite keeps to its time budget).
EXAMPLES = int(os.environ.get("FEDPRESS_FUZZ_EXAMPLES", "150"))


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps run and node ids on every Message it builds; outside a run, set them."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


@pytest.fixture(scope="module", params=CODECS)
def strategy(request):
    config = load_config(
        None, ["model=tiny-llama", "num_clients=3", f"uplink_codec={request.param}"]
    )
    task = build_task(config)
    strategy = LoraFedAvgServer(config, task, Path("."))
    strategy.partitions = {NODE: 0, **{node: part for node, (part, _) in HONEST.items()}}
    generator = torch.Generator().manual_seed(0)
    strategy.state = {
        k: v + torch.randn(v.shape, generator=generator) for k, v in task.initial_adapter.items()
    }
    yield strategy
    # Checked where the property ran (pytest-xdist may run another test of this module on
    # another worker): the fuzzer must have produced both outcomes, or it tested nothing.
    counts = COUNTS[request.param]
    print(f"\nreply fuzzing, {request.param}: {counts}")  # pytest -s shows it
    if counts["generated"]:
        assert counts["rejected"] > 0 and counts["accepted"] > 0, counts


class ReplayGrid:
    """Stands in for Flower's Grid in this unit test: hands back the prepared replies."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:  # noqa: ANN001
        return self.replies


def honest_update(shapes, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) * 1e-3 for n, s in shapes.items()}


def honest_packed(strategy, seed: int = 0) -> np.ndarray:
    update = honest_update(strategy.shapes, seed)
    return protocol.encode_record(strategy.uplink_codec, update, strategy.shapes)[
        protocol.PACKED
    ].numpy()


def reply_from(node: int, content: RecordDict) -> Message:
    """A reply as the Grid hands it to aggregate_train: from `node`, to an instruction."""
    instruction = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(content, reply_to=instruction)


def honest_replies(strategy) -> tuple[list[Message], list[tuple[dict, float]]]:
    """The honest clients' replies, and (update as the server decodes it, weight) of each."""
    replies, expected = [], []
    for node, (partition, examples) in HONEST.items():
        packed = honest_packed(strategy, seed=node)
        record = ArrayRecord({protocol.PACKED: Array(packed)})
        decoded = protocol.decode_record(strategy.uplink_codec, record, strategy.shapes)
        metrics = {
            "train-s": 1.0,
            "codec-s": 0.0,
            "peak-mem-bytes": 1,
            "train-mem-bytes": 1,
            "train-loss": 0.5,
        }
        metrics.update({"partition-id": partition, "num-examples": examples})
        content = RecordDict(
            {protocol.UPDATE: record, protocol.TRAIN_METRICS: MetricRecord(metrics)}
        )
        replies.append(reply_from(node, content))
        expected.append((decoded, float(examples)))
    return replies, expected


arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.float32, np.float16, np.int32, np.float64]),
    shape=hnp.array_shapes(max_dims=2, max_side=64),
    elements=None,
)
metric_value = st.one_of(
    st.integers(-(10**15), 10**15), st.floats(allow_nan=True, allow_infinity=True)
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
# Always at least one accepted reply (honest mode draws nothing from `data`).
@example(
    data=None, mode="honest", key=protocol.PACKED, metrics={"num-examples": 8, "train-loss": 0.5}
)
@given(
    data=st.data(),
    mode=st.sampled_from(["random-array", "mutated-honest", "honest"]),
    key=st.sampled_from([protocol.PACKED, "weights", ""]),
    metrics=st.one_of(
        st.just({"num-examples": 8, "train-loss": 0.5}),  # what an honest client reports
        st.fixed_dictionaries(
            {"num-examples": metric_value, "train-loss": metric_value},
            optional={"partition-id": st.integers(-2, 3), "train-s": metric_value},
        ),
    ),
)
def test_any_reply_is_rejected_or_safe(strategy, data, mode, key, metrics):
    packed = honest_packed(strategy)
    if mode == "random-array":
        payload = data.draw(arrays)
    elif mode == "mutated-honest":
        payload = packed.copy()
        for _ in range(data.draw(st.integers(1, 8))):
            payload[data.draw(st.integers(0, payload.size - 1))] = data.draw(st.integers(0, 255))
    else:
        payload = packed
    full_metrics = {
        "train-s": 1.0,
        "codec-s": 0.0,
        "peak-mem-bytes": 1,
        "train-mem-bytes": 1,
        "partition-id": 0,
    }
    full_metrics.update(metrics)
    content = RecordDict(
        {
            protocol.UPDATE: ArrayRecord({key: Array(payload)}),
            protocol.TRAIN_METRICS: MetricRecord(full_metrics),
        }
    )
    counts = COUNTS[strategy.config.uplink_codec]
    counts["generated"] += 1
    try:
        read = strategy.read(1, (0, 1, 2), content, NODE)
        delta, weight = read.update, read.weight
    except (InvalidReply, PayloadError):
        counts["rejected"] += 1
        accepted = None
    else:
        counts["accepted"] += 1
        assert set(delta) == set(strategy.shapes)
        assert all(tuple(delta[n].shape) == s for n, s in strategy.shapes.items())
        assert all(torch.isfinite(t).all() for t in delta.values())
        assert 1 <= weight <= strategy.max_examples and math.isfinite(weight)
        accepted = (delta, weight)

    # What the server applies (the federation loop's exchange), the fuzzed reply arriving
    # among the honest ones.
    replies, expected = honest_replies(strategy)
    replies.insert(1, reply_from(NODE, content))
    if accepted is not None:
        expected.append(accepted)
    before = {k: v.clone() for k, v in strategy.state.items()}
    stats = RoundStats()
    run_exchange(ReplayGrid(replies), strategy, 1, 0, (0, 1, 2), stats)
    applied = strategy.state
    assert stats.ok == len(expected) and stats.failed == 3 - len(expected)
    total = sum(weight for _, weight in expected)
    for name, value in before.items():
        mean = sum(update[name] * (weight / total) for update, weight in expected)
        assert torch.isfinite(applied[name]).all()
        torch.testing.assert_close(applied[name], value + mean, rtol=1e-6, atol=1e-7)
