"""Client state that must outlive a round lives in Flower's Context.state, not in the process:
a ClientApp process that is restarted between rounds sends exactly what a long-lived one does.

The restarted client is a real new Python process for every message, as on the deployment
engine: the node's state travels to it serialised the way Flower ships it (protobuf), and
comes back the same way."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpress.config import load_config
from fedpress.flower import client_app, protocol
from fedpress.task import build_task

# One ClientApp call in a fresh interpreter: state and message in, state and payload out.
FRESH_PROCESS = """
import sys
from pathlib import Path
from flwr.app import Context, Message
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedpress.flower import client_app, protocol

folder = Path(sys.argv[1])
load = lambda name: recorddict_from_proto(ProtoRecordDict.FromString((folder / name).read_bytes()))
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
message = Message(content=load("message.bin"), message_type="train", dst_node_id=1)
config = {"partition-id": 0, "num-partitions": 2}
context = Context(run_id=1, node_id=1, node_config=config, state=load("state.bin"), run_config={})
reply = client_app.train(message, context)
(folder / "state.bin").write_bytes(recorddict_to_proto(context.state).SerializeToString())
payload = reply.content[protocol.UPDATE][protocol.PACKED].numpy()
(folder / "payload.bin").write_bytes(payload.tobytes())
"""


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


def instruction(config, server_round, global_record) -> Message:
    content = RecordDict(
        {
            protocol.GLOBAL_ADAPTER: global_record,
            protocol.INSTRUCTIONS: ConfigRecord({protocol.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, message_type="train", dst_node_id=1)


def new_context(config) -> Context:
    """A node that has joined the run: it holds the run config (sent once, with the query)."""
    state = RecordDict({protocol.RUN_CONFIG: ConfigRecord({protocol.RUN_CONFIG: config.to_json()})})
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=state,
        run_config={},
    )


def train_in_a_new_process(folder: Path, message: Message, context: Context) -> np.ndarray:
    """The ClientApp's answer from a new interpreter; `context.state` is updated from it."""
    folder.mkdir(exist_ok=True)
    for name, records in (("message.bin", message.content), ("state.bin", context.state)):
        (folder / name).write_bytes(recorddict_to_proto(records).SerializeToString())
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder)], check=True, timeout=600)
    state = ProtoRecordDict.FromString((folder / "state.bin").read_bytes())
    context.state = recorddict_from_proto(state)
    return np.frombuffer((folder / "payload.bin").read_bytes(), np.uint8)


@pytest.mark.slow  # a real Flower simulation (or run)
def test_error_feedback_residual_survives_a_process_restart(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=2",
            "uplink_codec=topk",
            "train.local_steps=1",
            "codec.topk.fraction=0.05",
        ],
    )
    global_record = protocol.tensors_to_record(build_task(config).initial_adapter)
    long_lived, restarted = new_context(config), new_context(config)
    payload = lambda m: m.content[protocol.UPDATE][protocol.PACKED].numpy()  # noqa: E731

    first = client_app.train(instruction(config, 1, global_record), long_lived)
    first_restarted = train_in_a_new_process(
        tmp_path / "1", instruction(config, 1, global_record), restarted
    )
    assert np.array_equal(payload(first), first_restarted)
    state = protocol.record_to_arrays(restarted.state[protocol.UPLINK_CODEC_STATE])
    assert state and any(np.abs(v).sum() > 0 for v in state.values())  # a real residual

    second_long = client_app.train(instruction(config, 2, global_record), long_lived)
    second_restarted = train_in_a_new_process(
        tmp_path / "2", instruction(config, 2, global_record), restarted
    )
    assert np.array_equal(payload(second_long), second_restarted)
    # ...and the residual really changes what is sent: without it round 2 differs.
    fresh = client_app.train(instruction(config, 2, global_record), new_context(config))
    assert not np.array_equal(payload(second_long), payload(fresh))
    assert payload(first).size == payload(second_long).size


def test_delta_downlink_keeps_the_clients_copy_in_context_state():
    config = load_config(
        None, ["model=tiny-llama", "num_clients=2", "downlink_codec=int8", "train.local_steps=1"]
    )
    task = build_task(config)
    shapes = task.adapter_shapes()
    codec = protocol.make_codec("int8", config.codec, uplink=False)
    target = {k: v + 0.01 for k, v in task.initial_adapter.items()}
    change = {k: target[k] - task.initial_adapter[k] for k in target}
    content = RecordDict(
        {
            protocol.GLOBAL_DELTA: protocol.encode_record(codec, change, shapes),
            protocol.INSTRUCTIONS: ConfigRecord({protocol.SERVER_ROUND: 1}),
        }
    )
    context = new_context(config)
    client_app.train(Message(content=content, message_type="train", dst_node_id=1), context)
    view = protocol.record_to_tensors(context.state[protocol.GLOBAL_VIEW])
    for name in target:  # int8 with per-block absmax scales: error well below the change
        assert (view[name] - target[name]).abs().max() < 0.01 / 100
