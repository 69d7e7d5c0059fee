"""A client that hangs past the round timeout costs only its own contribution."""

import json
import re
import time

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from conftest import ONE_CORE
from fedpress.checkpoint import load_checkpoint
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.flower import client_app as honest
from fedpress.flower import protocol
from fedpress.flower.simulation import simulate

pytestmark = pytest.mark.slow  # real Flower runs (simulation or deployment)

# Past the round timeout below; the round after needs this client back, so not much past it.
HANG_S = 25

slow_app = ClientApp()
slow_app.query()(honest.query)


@slow_app.train()
def train(msg: Message, context: Context) -> Message:
    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    if int(context.node_config["partition-id"]) == 1 and server_round == 1:
        time.sleep(HANG_S)  # far past federation.round_timeout_s
    return honest.train(msg, context)


def test_hanging_client_is_timed_out_and_the_run_goes_on(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=3",
            "rounds=2",
            "train.local_steps=1",
            "data.builtin_size=400",
            "federation.client_cpus=1",  # two actors: the hanging client blocks only one
            "runtime.threads=1",  # two actors and another test on two cores
            "federation.round_timeout_s=15",  # a tiny-llama round takes ~1-5 s
            "federation.min_replies=2",
        ],
    )
    summary = simulate(config, tmp_path / "run", client_app=slow_app)
    rounds = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert (rounds[1]["clients_sampled"], rounds[1]["clients_ok"], rounds[1]["clients_failed"]) == (
        3,
        2,
        1,
    )
    assert rounds[2]["clients_ok"] == 3
    assert summary["clients_failed_total"] == 1


failing_app = ClientApp()
failing_app.query()(honest.query)


@failing_app.train()
def train_then_fail(msg: Message, context: Context) -> Message:
    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    if int(context.node_config["partition-id"]) == 1 and server_round >= 2:
        raise RuntimeError("this client is gone for good")
    return honest.train(msg, context)


def test_too_few_replies_stop_the_run_cleanly_with_its_checkpoint(tmp_path, caplog):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=2",
            "rounds=3",
            "train.local_steps=1",
            "data.builtin_size=400",
            "federation.min_replies=2",
            "federation.on_too_few=stop",
            *ONE_CORE,
        ],
    )
    with pytest.raises(FedpressError, match="round 2 got too few valid client replies"):
        simulate(config, tmp_path / "run", client_app=failing_app)
    # The failure reaches the user as one line naming the client, out of Ray's wrapping.
    failed = [r.getMessage() for r in caplog.records if "rejected reply" in r.getMessage()]
    assert failed and all(
        re.fullmatch(
            r"round 2: rejected reply from client 1 \(node \d+\): client failed: "
            r"this client is gone for good",
            line,
        )
        for line in failed
    ), failed
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint[1]["round"] == 1
