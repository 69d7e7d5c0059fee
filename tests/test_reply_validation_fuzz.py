"""Property-based: whatever a client sends, the server's validation either rejects it with
InvalidReply/PayloadError or returns a finite update of exactly the adapter's shapes with a
bounded weight; and aggregation of accepted replies never leaves the global adapter non-finite."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpress.codecs import PayloadError
from fedpress.config import load_config
from fedpress.flower import protocol
from fedpress.flower.loop import InvalidReply
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.task import build_task

NODE = 7
COUNTS = {"generated": 0, "rejected": 0, "accepted": 0}


@pytest.fixture(scope="module", params=["none", "int8", "topk"])
def strategy(request):
    config = load_config(
        None, ["model=tiny-llama", "num_clients=2", f"uplink_codec={request.param}"]
    )
    task = build_task(config)
    strategy = LoraFedAvgServer(config, task, Path("."))
    strategy.partitions = {NODE: 0}
    return strategy


def honest_packed(strategy) -> np.ndarray:
    update = {n: torch.randn(s) * 1e-3 for n, s in strategy.shapes.items()}
    return protocol.encode_record(strategy.uplink_codec, update, strategy.shapes)[
        protocol.PACKED
    ].numpy()


arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.float32, np.float16, np.int32, np.float64]),
    shape=hnp.array_shapes(max_dims=2, max_side=64),
    elements=None,
)
metric_value = st.one_of(
    st.integers(-(10**15), 10**15), st.floats(allow_nan=True, allow_infinity=True)
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
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
    COUNTS["generated"] += 1
    before = {k: v.clone() for k, v in strategy.state.items()}
    try:
        accepted = strategy.read(1, (0,), content, NODE)
        delta, weight = accepted.update, accepted.weight
    except (InvalidReply, PayloadError):
        COUNTS["rejected"] += 1
        assert all(torch.equal(before[k], strategy.state[k]) for k in before)
        return
    COUNTS["accepted"] += 1
    assert set(delta) == set(strategy.shapes)
    assert all(tuple(delta[n].shape) == s for n, s in strategy.shapes.items())
    assert all(torch.isfinite(t).all() for t in delta.values())
    assert 1 <= weight <= strategy.max_examples and math.isfinite(weight)


def test_report_counts():
    print(f"\nreply fuzzing: {COUNTS}")  # shown with pytest -s; used in the closing note
    assert COUNTS["generated"] > 0 and COUNTS["rejected"] > 0
