"""FFA-LoRA, the method added as one package: A stays at its seeded random init, only B is
trained and sent, and the uplink is about half of LoRA-FedAvg's in the same setting."""

import json

import pytest
from flwr.app import RecordDict
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.accounting import message_nbytes
from fedpress.config import load_config
from fedpress.flower import protocol
from fedpress.flower.simulation import simulate
from fedpress.methods.ffa_lora.task import build_ffa_task
from fedpress.task import build_task
from plan_check import assert_plan_matches

pytestmark = pytest.mark.slow  # real Flower runs (simulation or deployment)

SETTING = [
    "model=tiny-llama",
    "num_clients=2",
    "rounds=2",
    "train.local_steps=2",
    "data.builtin_size=300",
    "eval.per_round_examples=20",
    *ONE_CORE,
]


def test_ffa_lora_sends_only_b_and_at_most_0_6_of_lora_fedavgs_uplink(tmp_path):
    config = load_config(None, [*SETTING, "method=ffa-lora"])
    ffa = simulate(config, tmp_path / "ffa")
    assert_plan_matches(tmp_path / "ffa")
    # LoRA-FedAvg's uncompressed reply carries the whole adapter (A and B) as fp32: what its
    # uplink would be in the same setting, from the same message accounting.
    full = build_task(load_config(None, SETTING)).initial_adapter
    lora_reply = message_nbytes(RecordDict({"adapter": protocol.tensors_to_record(full)}))
    rounds = (tmp_path / "ffa" / "metrics.jsonl").read_text().splitlines()
    replies = sum(json.loads(line)["clients_ok"] for line in rounds[1:])
    assert replies == 4
    assert ffa["bytes_up_total"] <= 0.6 * replies * lora_reply
    # Every method reports both memory figures; the peak includes the weights training adds to.
    assert ffa["client_peak_mem_bytes"] > ffa["client_train_mem_bytes"] > 0
    # The saved adapter is the B matrices, trained away from their zero init; A never moved.
    task = build_ffa_task(config)
    saved = load_file(tmp_path / "ffa" / "adapter.safetensors")
    assert saved and all("lora_B" in name for name in saved)
    assert any(bool(saved[n].abs().max() > 0) for n in saved)
    full = build_task(load_config(None, SETTING)).initial_adapter
    for name, param in task.model.named_parameters():
        if "lora_A" in name:
            assert not param.requires_grad
            assert (param.detach().cpu() == full[name]).all(), name
