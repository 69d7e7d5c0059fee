"""Client-level DP end to end through the real Flower simulation: what the reported epsilon
covers, secret Poisson sampling, and the combinations that are refused."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.cli import main
from fedpress.config import load_config
from fedpress.flower.sampling import Sampler
from fedpress.flower.simulation import simulate
from fedpress.privacy import compute_epsilon
from fedpress.task import build_task


@pytest.mark.slow  # a real Flower simulation (or run)
def test_private_lora_fedavg_reports_the_epsilon_of_its_rounds(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=2",
            "rounds=2",
            "train.local_steps=1",
            "data.builtin_size=300",
            "eval.per_round_examples=20",
            *ONE_CORE,
            "privacy.enabled=true",
            "privacy.noise_multiplier=1.5",
            "privacy.clip_norm=0.05",
        ],
    )
    summary = simulate(config, tmp_path / "run")
    assert summary["dp_covers"] == ["rounds"]
    # Both rounds released (fraction 1: everyone sampled, q = 1), nothing else was uploaded.
    expected = compute_epsilon(1.5, 1.0, 2, config.privacy.delta, "rdp")
    assert summary["dp_epsilon"] == pytest.approx(expected)
    assert math.isfinite(summary["dp_epsilon"]) and summary["dp_epsilon"] > 0
    # The noise moved the adapter: sigma * C / K per coordinate, far above float error.
    final = load_file(tmp_path / "run" / "adapter.safetensors")
    initial = build_task(config).initial_adapter
    change = torch.cat([(final[n] - initial[n]).flatten() for n in initial])
    assert float(change.std()) > 0.5 * 1.5 * 0.05 / 2
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_ok"] for r in rounds[1:]] == [2, 2]


def test_private_sampling_is_secret_poisson_and_plain_sampling_is_seeded():
    private = load_config(None, ["num_clients=40", "federation.fraction_train=0.25"])
    private.privacy.enabled = True
    sizes = {len(Sampler(private).sample(list(range(40)))) for _ in range(30)}
    assert len(sizes) > 1  # Poisson: the count varies; fixed-size sampling would not
    draws = [Sampler(private).sample(list(range(40))) for _ in range(2)]
    assert draws[0] != draws[1]  # not derived from the (public) seed
    plain = load_config(None, ["num_clients=40", "federation.fraction_train=0.25"])
    assert Sampler(plain).sample(list(range(40))) == Sampler(plain).sample(list(range(40)))
    assert len(Sampler(plain).sample(list(range(40)))) == 10


def test_private_cg_fedllm_without_a_pretrained_autoencoder_is_refused(capsys):
    code = main(["config", "--set", "method=cg-fedllm", "--set", "privacy.enabled=true"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "TGAP" in err and "autoencoder.checkpoint" in err


def test_a_key_the_method_does_not_read_is_refused_in_one_line(capsys):
    for args, key in (
        (["method=fedcybgd", "privacy.enabled=true"], "privacy.enabled"),
        (["method=cg-fedllm", "uplink_codec=int8"], "uplink_codec"),
        (["method=fedcybgd", "downlink_codec=int8"], "downlink_codec"),
        (["method=centralized", "uplink_codec=topk"], "uplink_codec"),
        (["method=lora-fedavg", "cybgd.prune_ratio=0.5"], "cybgd.prune_ratio"),
    ):
        code = main(["config", *[f"--set={a}" for a in args]])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"'{key}'" in err and args[0].split("=")[1] in err
    # Keys of other methods are neither validated nor required.
    assert main(["config", "--set=num_clients=1", "--set=model=tiny-llama"]) == 0


def test_methods_lists_every_registered_method(capsys):
    from fedpress import registry

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in registry.names():
        assert f"\n{name} " in "\n" + out
    assert "ffa-lora" in registry.names()
