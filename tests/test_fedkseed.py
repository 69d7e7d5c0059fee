"""FedKSeed: a client's change is `-lr sum(g z)` over the seeds it drew, it sends one scalar per
seed, and replaying the aggregated scalars gives the same bits on the server, on every node
and on a node that starts afresh."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.methods.fedkseed.replay import (
    History,
    build_kseed_task,
    catch_up,
    kept_on_disk,
    pro_probabilities,
    z_seed,
    zeroth_order_round,
)
from plan_check import assert_plan_matches

SETTING = [
    "method=fedkseed",
    "model=tiny-llama",
    "num_clients=2",
    "rounds=2",
    "train.local_steps=6",
    "train.lr=1e-5",
    "fedkseed.seeds=64",
    "data.builtin_size=300",
    "eval.per_round_examples=20",
    *ONE_CORE,
]

# A fresh process replays a history onto the pretrained model and prints its weights' hash.
REPLAY = """
import hashlib, json, sys, torch
from fedpress.config import load_config
from fedpress.methods.fedkseed.replay import History, build_kseed_task, catch_up
settings, arrays = json.loads(sys.argv[1]), json.loads(sys.argv[2])
history = History(torch.tensor(arrays["seeds"], dtype=torch.int64),
                  torch.tensor(arrays["values"], dtype=torch.float32),
                  torch.tensor(arrays["counts"], dtype=torch.int64))
task = catch_up(build_kseed_task(load_config(None, settings)), history)
digest = hashlib.sha256()
for name, param in sorted(task.model.named_parameters()):
    digest.update(name.encode()); digest.update(param.detach().cpu().numpy().tobytes())
print(digest.hexdigest())
"""


def weights_hash(named: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def replayed_in_a_new_process(settings: list[str], history: History) -> str:
    arrays = {k: v.tolist() for k, v in history.as_arrays().items()}
    result = subprocess.run(
        [sys.executable, "-c", REPLAY, json.dumps(settings), json.dumps(arrays)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def direction(params: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in params]


def test_a_round_moves_the_weights_by_minus_lr_sum_of_scalar_times_z():
    config = load_config(None, SETTING)
    task = catch_up(build_kseed_task(config), History.empty())
    params = task.parameters()
    before = [p.detach().clone() for p in params]
    data = task.encode_all(task.splits.client_shares[0][:40])
    turn = zeroth_order_round(task, data, steps=4, seed=3, probabilities=None)
    assert turn.forward_passes == 8 and 1 <= len(turn.sums) <= 4
    assert all(0 <= s < config.fedkseed.seeds for s in turn.sums)
    expected = [b.clone() for b in before]
    for seed, total in turn.sums.items():
        for e, z in zip(expected, direction(params, z_seed(config, seed)), strict=True):
            e.add_(z, alpha=-config.train.lr * total)
    for param, e, b in zip(params, expected, before, strict=True):
        # The +eps, -2 eps, +eps round trips leave float32 rounding, nothing more.
        assert (param - e).abs().max() <= 1e-6 + 1e-6 * b.abs().max()
    with torch.no_grad():
        for param, b in zip(params, before, strict=True):
            param.copy_(b)


def test_the_weights_kept_on_disk_come_back_bit_for_bit():
    params = [
        torch.randn(7, 5),
        torch.randn(6, 4).t(),  # not contiguous
        torch.randn(33).to(torch.bfloat16),
    ]
    before = [p.clone() for p in params]
    with kept_on_disk(params), torch.no_grad():
        for p in params:
            p.add_(0.1).sub_(0.1)  # float rounding: some elements no longer the same
        assert not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for p, b in zip(params, before, strict=True):
        assert p.dtype == b.dtype and torch.equal(p, b)


def test_pro_samples_seeds_by_the_size_of_their_past_scalars():
    config = load_config(None, [*SETTING, "fedkseed.pro=true"])
    uniform = pro_probabilities(config, History.empty())
    assert torch.allclose(uniform, torch.full((64,), 1 / 64))
    history = History(
        torch.tensor([3, 7], dtype=torch.int64),
        torch.tensor([5.0, -1.0]),
        torch.tensor([2], dtype=torch.int64),
    )
    p = pro_probabilities(config, history)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert p[3] > p[7] > p[0]


def test_settings_are_refused_where_the_replay_could_not_follow():
    for override, message in (
        ("train.lr_schedule=cosine", "must be 'constant'"),
        ("train.weight_decay=0.1", "weight_decay"),
        ("fedkseed.eps=0", "fedkseed.eps"),
        ("uplink_codec=int8", "not used by method 'fedkseed'"),
    ):
        with pytest.raises(FedpressError, match=message):
            load_config(None, ["method=fedkseed", override])


def test_a_first_order_rate_is_warned_about(caplog):
    load_config(None, ["method=fedkseed", "train.lr=1e-5"])
    assert "zeroth-order rates" not in caplog.text
    load_config(None, ["method=fedkseed"])  # fedpress's default rate, LoRA's
    assert "train.lr = 0.003 is far above zeroth-order rates" in caplog.text


@pytest.mark.slow
def test_the_run_replays_to_the_same_bits_everywhere_and_resumes(tmp_path):
    from fedpress.flower.simulation import simulate

    config = load_config(None, SETTING)
    out = tmp_path / "run"
    summary = simulate(config, out)
    assert_plan_matches(out)  # before the resume below adds its own round-0 messages
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.safetensors"):
        assert (out / name).is_file(), name
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # A turn's upload: at most 6 (seed, scalar) pairs and Flower's framing; a round's
    # download: the previous rounds' scalars.
    assert max(b for r in rounds[1:] for b in r["bytes_up_per_client"]) < 2_500
    assert max(b for r in rounds[1:] for b in r["bytes_down_per_client"]) < 3_000
    assert summary["client_forward_passes_total"] == 2 * 2 * 2 * 6
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    # The history the server checkpointed, replayed by a process that starts afresh from the
    # pretrained weights, gives the server's final model bit for bit.
    tensors = load_file(out / "checkpoint.safetensors")
    prefix = "server-state/fedkseed-history/"
    history = History(
        tensors[f"{prefix}seeds"], tensors[f"{prefix}values"], tensors[f"{prefix}counts"]
    )
    assert history.rounds == 2 and 1 <= history.seeds.numel() <= 24
    saved = load_file(out / "model.safetensors")
    task = build_kseed_task(config)
    assert set(saved) == {name for name, _ in task.model.named_parameters()}
    assert replayed_in_a_new_process(SETTING, history) == weights_hash(saved)
    # ... and so does this process (which has run the server) after replaying it round by
    # round, the way a node that trained in round 1 catches up in round 2.
    node = catch_up(build_kseed_task(config), History.empty())
    node = catch_up(node, history.truncated(1))
    node = catch_up(node, history)
    assert weights_hash(dict(node.model.named_parameters())) == weights_hash(saved)
    # Resumed after its last round: the checkpoint's history rebuilds the same model.
    again = simulate(config, out, resume=True)
    assert again["final_eval_loss"] == summary["final_eval_loss"]
