"""Property-based, for every method's reply format: whatever a client sends, the server's
validation either rejects it with InvalidReply/PayloadError or returns a finite update of
exactly the expected shapes with a bounded weight; and the aggregate the server applies, with
that reply among honest ones, is exactly the example-weighted mean of the replies it accepted
(the honest ones alone when it rejects the hostile one).

Formats: LoRA-FedAvg's adapter change through the `none`, `int8` and `topk` codecs, Fed-SB's
R matrices through `int4`, FedKSeed's (seed index, scalar) pairs."""

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

from fedpress import registry
from fedpress.codecs import PayloadError
from fedpress.config import load_config
from fedpress.flower import protocol
from fedpress.flower.exchange import RoundStats, run_exchange
from fedpress.flower.server import InvalidReply

NODE = 7  # the fuzzed client; HONEST nodes -> (partition, examples) reply honestly beside it
HONEST = {11: (1, 8), 12: (2, 24)}
# Format -> the run it belongs to.
FORMATS = {
    "none": ["uplink_codec=none"],
    "int8": ["uplink_codec=int8"],
    "topk": ["uplink_codec=topk"],
    "fed-sb-int4": ["method=fed-sb", "fedsb.init=random", "uplink_codec=int4"],
    "fedkseed": [
        "method=fedkseed",
        "fedkseed.seeds=64",
        "train.local_steps=2",
        "train.batch_size=12",
    ],
}
COUNTS = {name: {"generated": 0, "rejected": 0, "accepted": 0} for name in FORMATS}
# Per format: 4 x 225 + 100 = 1,000 a run (FedKSeed's server replays every accepted seed on
# the model: 0.1 s an example); FEDPRESS_FUZZ_EXAMPLES=N for N of each in a longer run.
EXAMPLES = int(os.environ.get("FEDPRESS_FUZZ_EXAMPLES", "225"))
KSEED_EXAMPLES = int(os.environ.get("FEDPRESS_FUZZ_EXAMPLES", "100"))


@pytest.fixture(autouse=True)
def task_identity():
    """Flower stamps run and node ids on every Message it builds; outside a run, set them."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


@pytest.fixture(scope="module", params=list(FORMATS))
def strategy(request):
    config = load_config(None, ["model=tiny-llama", "num_clients=3", *FORMATS[request.param]])
    strategy = registry.get(config.method).server(config, Path("."))
    strategy.partitions = {NODE: 0, **{node: part for node, (part, _) in HONEST.items()}}
    strategy.format = request.param
    generator = torch.Generator().manual_seed(0)
    if is_kseed(strategy):
        strategy.scalars = torch.randn(config.fedkseed.seeds, generator=generator)
    else:
        if config.method == "fed-sb":
            from fedpress.methods.fed_sb.init import random_start

            strategy.state = random_start(strategy.task).initial_r
        strategy.state = {
            k: v + torch.randn(v.shape, generator=generator) for k, v in strategy.state.items()
        }
    yield strategy
    # Checked where the property ran (pytest-xdist may run another test of this module on
    # another worker): the fuzzer must have produced both outcomes, or it tested nothing.
    counts = COUNTS[request.param]
    print(f"\nreply fuzzing, {request.param}: {counts}")  # pytest -s shows it
    if counts["generated"]:
        assert counts["rejected"] > 0 and counts["accepted"] > 0, counts


def is_kseed(strategy) -> bool:
    return strategy.config.method == "fedkseed"


class ReplayGrid:
    """Stands in for Flower's Grid in this unit test: hands back the prepared replies."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:  # noqa: ANN001
        return self.replies


def honest_update(shapes, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) * 1e-3 for n, s in shapes.items()}


def honest_arrays(strategy, seed: int = 0) -> dict[str, np.ndarray]:
    """What an honest client of this format uploads."""
    if is_kseed(strategy):
        rng = np.random.default_rng(seed)
        pool, steps = strategy.config.fedkseed.seeds, strategy.config.train.local_steps
        seeds = np.sort(rng.choice(pool, size=int(rng.integers(1, steps + 1)), replace=False))
        values = rng.normal(size=seeds.size).astype(np.float32)
        return {"seeds": seeds.astype(np.int64), "values": values}
    update = honest_update(strategy.shapes, seed)
    record = protocol.encode_record(strategy.uplink_codec, update, strategy.shapes)
    return {protocol.PACKED: record[protocol.PACKED].numpy()}


def honest_metrics(strategy) -> dict:
    metrics = {"train-s": 1.0, "codec-s": 0.0, "peak-mem-bytes": 1, "train-mem-bytes": 1}
    if is_kseed(strategy):
        metrics["forward-passes"] = 2 * strategy.config.train.local_steps
    return metrics


def applied_state(strategy) -> dict[str, torch.Tensor]:
    return {"scalars": strategy.scalars} if is_kseed(strategy) else strategy.state


def expected_state(strategy, before: dict, accepted: list[tuple[dict, float]]) -> dict:
    """The state before, stepped with the example-weighted mean of the accepted updates."""
    total = sum(weight for _, weight in accepted)
    if is_kseed(strategy):
        sums = torch.zeros_like(before["scalars"], dtype=torch.float64)
        for update, weight in accepted:
            sums.index_add_(0, update["seeds"], update["values"].double() * (weight / total))
        return {"scalars": before["scalars"] + sums.float()}
    return {
        name: value + sum(update[name] * (weight / total) for update, weight in accepted)
        for name, value in before.items()
    }


def reply_from(node: int, content: RecordDict) -> Message:
    """A reply as the Grid hands it to aggregate_train: from `node`, to an instruction."""
    instruction = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(content, reply_to=instruction)


def honest_replies(strategy) -> tuple[list[Message], list[tuple[dict, float]]]:
    """The honest clients' replies, and (update as the server decodes it, weight) of each;
    built once per format (the server only reads them)."""
    if hasattr(strategy, "honest"):
        replies, expected = strategy.honest
        return list(replies), list(expected)
    replies, expected = [], []
    for node, (partition, examples) in HONEST.items():
        metrics = honest_metrics(strategy)
        metrics.update({"partition-id": partition, "num-examples": examples, "train-loss": 0.5})
        record = ArrayRecord({k: Array(v) for k, v in honest_arrays(strategy, node).items()})
        content = RecordDict(
            {protocol.UPDATE: record, protocol.TRAIN_METRICS: MetricRecord(metrics)}
        )
        decoded = strategy.decode_reply(1, (0, 1, 2), content, metrics)
        replies.append(reply_from(node, content))
        expected.append((decoded, float(examples)))
    strategy.honest = (replies, expected)
    return list(replies), list(expected)


arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.float32, np.float16, np.int32, np.float64]),
    shape=hnp.array_shapes(max_dims=2, max_side=64),
    elements=None,
)
metric_value = st.one_of(
    st.integers(-(10**15), 10**15), st.floats(allow_nan=True, allow_infinity=True)
)


HONEST_METRICS = {"num-examples": 8, "train-loss": 0.5}  # what an honest client reports
FUZZED = dict(
    data=st.data(),
    mode=st.sampled_from(["random-array", "mutated-honest", "honest"]),
    rename=st.sampled_from([None, "weights", "", "seeds"]),  # the first array under this key
    metrics=st.one_of(
        st.just(HONEST_METRICS),
        st.fixed_dictionaries(
            {"num-examples": metric_value, "train-loss": metric_value},
            optional={
                "partition-id": st.integers(-2, 3),
                "train-s": metric_value,
                "forward-passes": metric_value,
            },
        ),
    ),
)


@pytest.mark.slow  # 1,005 generated replies, each read and aggregated (~30 s)
def test_any_reply_is_rejected_or_safe(strategy):
    fuzz = FUZZ_KSEED if is_kseed(strategy) else FUZZ
    fuzz(strategy)


def fuzz_one_reply(strategy, data, mode, rename, metrics):
    """One generated reply, read and then aggregated among the honest ones."""
    sent = honest_arrays(strategy)
    if mode == "random-array":
        sent = {key: data.draw(arrays) for key in sent}
    elif mode == "mutated-honest":
        for key, value in sent.items():
            raw = value.view(np.uint8).copy()
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(0, raw.size - 1))] = data.draw(st.integers(0, 255))
            sent[key] = raw.view(value.dtype)
    if rename is not None:
        first = next(iter(sent))
        sent = {rename if k == first else k: v for k, v in sent.items()}
    full_metrics = {**honest_metrics(strategy), "partition-id": 0}
    full_metrics.update(metrics)
    content = RecordDict(
        {
            protocol.UPDATE: ArrayRecord({key: Array(value) for key, value in sent.items()}),
            protocol.TRAIN_METRICS: MetricRecord(full_metrics),
        }
    )
    counts = COUNTS[strategy.format]
    counts["generated"] += 1
    try:
        read = strategy.read(1, (0, 1, 2), content, NODE)
        delta, weight = read.update, read.weight
    except (InvalidReply, PayloadError):
        counts["rejected"] += 1
        accepted = None
    else:
        counts["accepted"] += 1
        if is_kseed(strategy):
            seeds, values = delta["seeds"], delta["values"]
            assert seeds.dtype == torch.int64 and values.dtype == torch.float32
            assert seeds.shape == values.shape and seeds.numel() >= 1
            assert int(seeds.min()) >= 0 and int(seeds.max()) < strategy.config.fedkseed.seeds
            assert torch.isfinite(values).all()
        else:
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
    before = {k: v.clone() for k, v in applied_state(strategy).items()}
    stats = RoundStats()
    run_exchange(ReplayGrid(replies), strategy, 1, 0, (0, 1, 2), stats)
    assert stats.ok == len(expected) and stats.failed == 3 - len(expected)
    applied = applied_state(strategy)
    for name, value in expected_state(strategy, before, expected).items():
        assert torch.isfinite(applied[name]).all()
        torch.testing.assert_close(applied[name], value, rtol=1e-6, atol=1e-7)


def fuzzer(examples: int):
    """`fuzz_one_reply` run `examples` times, always once as the honest reply (it must be
    accepted: honest mode draws nothing from `data`)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))(
        example(data=None, mode="honest", rename=None, metrics=HONEST_METRICS)(
            given(**FUZZED)(fuzz_one_reply)
        )
    )


FUZZ, FUZZ_KSEED = fuzzer(EXAMPLES), fuzzer(KSEED_EXAMPLES)
