"""Cross-silo federation: every deployed node trains on its own file, the server's messages
name no path, a node loads only a model it was given, and bad local data fails that node's
reply (counted by the server) without leaking the file."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from conftest import REPO
from fedpress.config import load_config
from fedpress.data import node_data
from fedpress.errors import FedpressError
from fedpress.flower import client_app, protocol
from fedpress.flower.handshake import config_for_nodes
from fedpress.task import build_task


def alpaca_file(path: Path, shared_data: Path, start: int, count: int, broken: bool = False):
    """`count` records of the shared Alpaca file from `start`; `broken`: one lacks 'output'."""
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    chosen = records[start : start + count]
    if broken:
        chosen[3] = {"instruction": "SECRET-CONTENT that must not reach the server"}
    path.write_text(json.dumps(chosen))
    return path


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


def node_context(config, node_config) -> Context:
    """A node that joined the run: it holds the run config (client number 0)."""
    kept = ConfigRecord({protocol.RUN_CONFIG: config.to_json(), protocol.SLOT: 0})
    state = RecordDict({protocol.RUN_CONFIG: kept})
    return Context(run_id=1, node_id=1, node_config=node_config, state=state, run_config={})


def train_message(config) -> Message:
    content = RecordDict(
        {
            protocol.GLOBAL_ADAPTER: protocol.tensors_to_record(build_task(config).initial_adapter),
            protocol.INSTRUCTIONS: ConfigRecord({protocol.SERVER_ROUND: 1}),
        }
    )
    return Message(content=content, message_type="train", dst_node_id=1)


def tiny_config(tmp_path, *extra):
    return load_config(
        None,
        [
            "model=tiny-llama",
            "train.local_steps=1",
            "train.batch_size=4",
            "data.max_length=64",
            f"data.source={tmp_path / 'server-only.json'}",  # never created: opening it fails
            *extra,
        ],
    )


def test_deployed_server_sends_no_path(tmp_path):
    (tmp_path / "model-folder").mkdir()
    config = load_config(
        None,
        [
            "method=cg-fedllm",
            f"model={tmp_path / 'model-folder'}",
            f"data.source={tmp_path / 'train.json'}",
            f"data.eval_source={tmp_path / 'eval.json'}",
            f"autoencoder.checkpoint={tmp_path / 'ae'}",
        ],
    )
    sent = config_for_nodes(config).to_json()
    assert str(tmp_path) not in sent
    assert json.loads(sent)["model"] == "model-folder"  # a name the node resolves itself
    assert json.loads(sent)["data"]["source"] == protocol.NODE_LOCAL


def test_node_trains_and_scores_on_its_own_files_only(tmp_path, shared_data):
    own = alpaca_file(tmp_path / "own.json", shared_data, 0, 12)
    held_out = alpaca_file(tmp_path / "held-out.json", shared_data, 100, 5)
    config = tiny_config(tmp_path)  # names a data file this node was not given
    context = node_context(config, {"data-path": str(own), "eval-path": str(held_out)})
    reply = client_app.train(train_message(config), context)
    metrics = reply.content[protocol.TRAIN_METRICS]
    assert metrics["num-examples"] == 4 and metrics["partition-id"] == 0
    evaluation = client_app.evaluate(train_message(config), context)
    assert evaluation.content[protocol.EVAL_METRICS]["eval-examples"] == 5
    assert not (tmp_path / "server-only.json").exists()


@pytest.mark.parametrize("named", ["{tmp}/model-folder", "someone/not-in-the-cache"])
def test_node_refuses_a_model_it_was_not_given(tmp_path, shared_data, named):
    model = tmp_path / "model-folder"
    model.mkdir()
    (model / "config.json").write_text("{not json: the node must not even open it")
    own = alpaca_file(tmp_path / "own.json", shared_data, 0, 12)
    config = tiny_config(tmp_path)
    server_view = json.loads(config.to_json()) | {"model": named.format(tmp=tmp_path)}
    context = node_context(config, {"data-path": str(own)})
    context.state[protocol.RUN_CONFIG] = ConfigRecord(
        {protocol.RUN_CONFIG: json.dumps(server_view), protocol.SLOT: 0}
    )
    with pytest.raises(ValueError, match="does not have model"):
        client_app.train(train_message(config), context)
    # Given the model in its own node config, the same node trains.
    context.node_config["model-path"] = "tiny-llama"
    reply = client_app.train(train_message(config), context)
    assert reply.content[protocol.TRAIN_METRICS]["num-examples"] == 4


def test_bad_local_files_fail_the_reply_without_leaking_them(tmp_path, shared_data):
    config = tiny_config(tmp_path)
    broken = alpaca_file(tmp_path / "broken.json", shared_data, 0, 12, broken=True)
    tiny = alpaca_file(tmp_path / "tiny.json", shared_data, 0, 2)
    fifo = tmp_path / "pipe.json"  # without a writer: reading it would block for ever
    os.mkfifo(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    cases = {
        str(broken): "record 3 lacks",
        str(tiny): "2 training examples",
        str(tmp_path / "missing.json"): "not found",
        "/dev/zero": "not a regular file",  # would be read until memory ran out
        str(fifo): "not a regular file",
        str(tmp_path): "no .csv files",  # a folder is read as MMLU subjects
        str(loop): "not found",
        # A name that is not UTF-8 (bytes a node's file system allows): refused, printable.
        os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.json"): "not found",
    }
    for path, expected in cases.items():
        context = node_context(config, {"data-path": path})
        with pytest.raises(ValueError, match=expected) as caught:
            client_app.train(train_message(config), context)
        assert str(tmp_path) not in str(caught.value)
        assert "SECRET" not in str(caught.value)


def test_node_data_with_a_part_matches_the_simulation_split(shared_data):
    config = load_config(None, [f"data.source={shared_data / 'sst2' / 'dev.tsv'}"])
    simulated = build_task_free_splits(config)
    own = node_data(config.data, config.seed, config.data.source, part=(1, 2))
    assert own.share == simulated.client_shares[1] and own.eval_examples == []
    with pytest.raises(FedpressError, match="not found"):
        node_data(config.data, config.seed, "/nonexistent/file.json")


def build_task_free_splits(config):
    from fedpress.data import build_splits

    return build_splits(config.data, 2, config.seed)


ANSWER_A_QUERY = """
import json, sys, threading
sys.argv[0] = sys.argv[1]  # the deployment engine's one-message process, or another
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedpress.flower import client_app, protocol
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
asked = ConfigRecord({protocol.RUN_CONFIG: sys.stdin.read(), protocol.SLOT: 1})
content = RecordDict({protocol.INSTRUCTIONS: asked})
query = Message(content, message_type=MessageType.QUERY, dst_node_id=1)
node_config = {"data-path": sys.argv[2], "eval-path": sys.argv[2]}
context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
reply = client_app.query(query, context)
print(json.dumps({
    "info": dict(reply.content[protocol.NODE_INFO]),
    "imported": [m for m in ("torch", "transformers", "peft") if m in sys.modules],
    "bitsandbytes_marked_absent": "bitsandbytes" in sys.modules,
    "warming_up": any(t.name == "client-warm-up" for t in threading.enumerate()),
}))
"""


@pytest.mark.parametrize("process", ["flwr-clientapp", "a-simulation-actor"])
def test_a_deployed_node_answers_the_query_without_the_training_stack(
    tmp_path, shared_data, process
):
    """The deployment engine starts a process per message: the query, once per node and run,
    costs ~0.5 s instead of ~5 s of imports (and does not warm up for turns it will not see)."""
    own = alpaca_file(tmp_path / "own.json", shared_data, 0, 12)
    answered = subprocess.run(
        [sys.executable, "-c", ANSWER_A_QUERY, f"/venv/bin/{process}", str(own)],
        input=tiny_config(tmp_path).to_json(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(answered.stdout.splitlines()[-1])
    assert result["info"] == {"partition-id": 1, "num-partitions": -1, "has-eval": 1}
    if process == "flwr-clientapp":
        assert result["imported"] == [] and not result["warming_up"]
        # A process of one run that does not quantize never imports bitsandbytes (~2 s).
        assert result["bitsandbytes_marked_absent"]
    else:  # a process that serves the node's later turns builds its task meanwhile
        assert result["warming_up"]


# --------------------------------------------------------------------------- real processes


def deploy(tmp_path, config, node_configs, run_config=None):
    from fedpress.local_deployment import launch_local_deployment

    config_path = tmp_path / "run.toml"
    config.save(config_path)
    out = tmp_path / "out"
    result = launch_local_deployment(
        REPO / "deploy",
        config_path,
        out,
        timeout_s=900,
        check=False,
        node_configs=node_configs,
        run_config=run_config,
    )
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sent = (out / "sent_run_config.json").read_text()
    return summary, rounds, sent


def server_config(tmp_path, shared_data, clients, *extra):
    server_file = alpaca_file(tmp_path / "server" / "eval.json", shared_data, 400, 40)
    return load_config(
        None,
        [
            "model=tiny-llama",
            f"num_clients={clients}",
            "rounds=2",
            "train.local_steps=2",
            "train.batch_size=4",
            "data.max_length=64",
            f"data.source={server_file}",
            "data.eval_size=16",
            "eval.per_round_examples=16",
            "federation.min_replies=1",
            "federation.round_timeout_s=240",
            "runtime.threads=1",  # two tests at once on two cores (conftest.ONE_CORE)
            *extra,
        ],
    )


@pytest.mark.slow  # a real SuperLink and three real SuperNodes
def test_three_organisations_each_with_its_own_file_one_of_them_malformed(tmp_path, shared_data):
    (tmp_path / "server").mkdir()
    # One round shows it all, given as Flower's `--run-config rounds=1` over the TOML's 2 (and
    # the learning rate too). Every parameter trained and sent (LoRA-FedAvg's client on the
    # full task): the deployed LoRA-FedAvg run is test_deployment.py's.
    config = server_config(tmp_path, shared_data, 3, "method=fed-full")
    assert config.rounds == 2
    orgs = [tmp_path / name for name in ("hospital", "bank", "broken")]
    for org in orgs:
        org.mkdir()
    nodes = [
        {
            "data-path": str(alpaca_file(orgs[0] / "notes.json", shared_data, 0, 30)),
            "eval-path": str(alpaca_file(orgs[0] / "held-out.json", shared_data, 200, 10)),
        },
        {
            "data-path": str(alpaca_file(orgs[1] / "notes.json", shared_data, 30, 30)),
            "eval-path": str(alpaca_file(orgs[1] / "held-out.json", shared_data, 210, 6)),
        },
        {"data-path": str(alpaca_file(orgs[2] / "notes.json", shared_data, 60, 30, True))},
    ]
    summary, rounds, sent = deploy(
        tmp_path, config, nodes, run_config={"rounds": 1, "train.lr": 1e-4}
    )
    assert [r["round"] for r in rounds] == [0, 1]
    assert summary["config"]["rounds"] == 1 and summary["config"]["train"]["lr"] == 1e-4
    assert (rounds[1]["clients_ok"], rounds[1]["clients_failed"]) == (2, 1)
    assert rounds[1]["bytes_up"] > 0
    assert summary["clients_failed_total"] == 1
    assert summary["method"] == "fed-full"
    # The two good nodes scored every global model on their own held-out files.
    assert all(r["fed_eval_nodes"] == 2 and r["fed_eval_examples"] == 16 for r in rounds)
    assert rounds[-1]["fed_eval_loss"] < rounds[0]["fed_eval_loss"]
    # Text to continue (Alpaca answers): perplexity per round beside the loss.
    assert all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"])) for r in rounds)
    # The run config the nodes received names no path of this machine.
    assert str(tmp_path) not in sent and protocol.NODE_LOCAL in sent


@pytest.mark.slow  # a real SuperLink and two real SuperNodes
@pytest.mark.parametrize(
    "method_args",
    [
        # Delta sync: each node's copy of the model lives in Context.state, which the
        # deployment engine keeps while it starts a new ClientApp process for every message
        # (two rounds: the second one's download is a delta). The others need one round.
        ["method=fedcybgd", "cybgd.delta_sync=true", "cybgd.prune_ratio=0.5"],
        # TGAP (train.tgap messages, snapshots from each node's D1 share of its own file),
        # then FAF.
        [
            "method=cg-fedllm",
            "autoencoder.train_steps=5",
            "autoencoder.snapshots=2",
            "data.holdout_fraction=0.3",
            "rounds=1",
        ],
    ],
    ids=["fedcybgd-delta-sync", "cg-fedllm-tgap"],
)
def test_methods_with_client_state_on_organisations_own_files(tmp_path, shared_data, method_args):
    (tmp_path / "server").mkdir()
    # Federated evaluation costs every node a ClientApp process per round on the deployment
    # engine; the three-organisation test above covers it.
    config = server_config(
        tmp_path, shared_data, 2, "train.local_steps=1", "eval.federated_fraction=0", *method_args
    )
    nodes = []
    for i in range(2):
        org = tmp_path / f"org-{i}"
        org.mkdir()
        nodes.append(
            {
                "data-path": str(alpaca_file(org / "notes.json", shared_data, 40 * i, 40)),
                "eval-path": str(alpaca_file(org / "held-out.json", shared_data, 300 + 8 * i, 8)),
            }
        )
    summary, rounds, sent = deploy(tmp_path, config, nodes)
    assert [r["round"] for r in rounds] == list(range(config.rounds + 1))
    assert summary["clients_failed_total"] == 0
    assert all(r["clients_failed"] == 0 and r["clients_ok"] > 0 for r in rounds[1:])
    assert str(tmp_path) not in sent
    assert all(r["fed_eval_nodes"] == 0 for r in rounds)  # turned off
    if config.method == "fedcybgd":
        assert summary["turns_failed"] == 0
        # Round 2's downloads are deltas to what each node kept: far below the whole model.
        assert summary["download_bytes_per_turn"]["later_mean"] < summary["full_model_bytes"]
    if config.method == "cg-fedllm":
        assert summary["tgap_in_run"] and summary["tgap_snapshots"] == 2 * 2
