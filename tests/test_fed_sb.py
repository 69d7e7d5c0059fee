"""Fed-SB: frozen A and B from the first step's truncated SVD, only the r x r R trained, sent
and averaged, and the average exact (the mean of `B R_i A` is `B mean(R_i) A`)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.config import load_config
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.methods.fed_sb.init import (
    combine,
    first_step,
    one_off_codec,
    random_start,
    truncated_factors,
)
from fedpress.methods.fed_sb.task import (
    ADAPTER,
    build_sb_task,
    freeze_a_and_b,
    frozen_shapes,
    install_frozen,
    sb_layers,
    scaling,
)
from fedpress.training import answer_loss, collate
from plan_check import assert_plan_matches

SETTING = [
    "method=fed-sb",
    "model=tiny-llama",
    "num_clients=2",
    "rounds=2",
    "train.local_steps=2",
    "data.builtin_size=300",
    "eval.per_round_examples=20",
    *ONE_CORE,
]


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))
    return q


def test_only_r_is_trained_and_the_adapter_is_b_r_a():
    config = load_config(None, SETTING)
    task = build_sb_task(config)
    rank = config.lora.r
    trainable = {n: tuple(p.shape) for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {(rank, rank)}
    assert all(n.endswith(".lora_A.default.r.weight") for n in trainable)
    frozen = {}
    for key, shape in frozen_shapes(task.model).items():
        # A: r x in with orthonormal rows; B: out x r with orthonormal columns.
        frozen[key] = orthonormal(shape[1], shape[0], 1).T if key.endswith(".A") else None
        if key.endswith(".B"):
            frozen[key] = orthonormal(shape[0], shape[1], 2)
    install_frozen(task, frozen)
    name, layer = next(iter(sb_layers(task.model).items()))
    x = torch.randn(3, layer.lora_A[ADAPTER].a.weight.shape[1])

    def adapter_output(r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            layer.lora_A[ADAPTER].r.weight.copy_(r)
            return layer(x) - layer.get_base_layer()(x)

    r1, r2 = torch.randn(rank, rank), torch.randn(rank, rank)
    a, b = frozen[f"{name}.A"], frozen[f"{name}.B"]
    expected = scaling(task) * x @ a.T @ r1.T @ b.T
    torch.testing.assert_close(adapter_output(r1), expected, rtol=1e-4, atol=1e-5)
    # Exact averaging: the model of the mean R is the mean of the two clients' models.
    mean_of_models = (adapter_output(r1) + adapter_output(r2)) / 2
    torch.testing.assert_close(adapter_output((r1 + r2) / 2), mean_of_models, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        install_frozen(task, {f"{name}.A": a})


def test_combine_is_the_truncated_svd_of_the_weighted_mean_step():
    g = torch.Generator().manual_seed(0)
    rank, out_features, in_features = 3, 12, 9
    clients = [
        (
            w,
            {
                "m.P": torch.randn(out_features, rank, generator=g),
                "m.Q": torch.randn(in_features, rank, generator=g),
            },
        )
        for w in (1.0, 3.0)
    ]
    b, sigma, a = combine(clients, "m", rank)
    mean = sum(w * f["m.P"] @ f["m.Q"].T for w, f in clients) / 4.0
    u, s, vh = torch.linalg.svd(mean.double())
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close((b * sigma) @ a, best.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.T @ b, torch.eye(rank), rtol=0, atol=1e-5)
    torch.testing.assert_close(a @ a.T, torch.eye(rank), rtol=0, atol=1e-5)
    # One client: its own factors come back (rank-r input, so exactly its step).
    b1, s1, a1 = combine(clients[:1], "m", rank)
    one = clients[0][1]
    torch.testing.assert_close((b1 * s1) @ a1, one["m.P"] @ one["m.Q"].T, rtol=1e-4, atol=1e-4)


def test_the_first_step_is_minus_init_lr_sign_of_the_base_models_gradient():
    config = load_config(None, SETTING)
    task = build_sb_task(config)
    data = task.encode_all(task.splits.client_shares[0][:6])
    steps = first_step(task, data)
    # Still only the R's train (PEFT re-enables every adapter tensor after disable_adapter).
    trainable = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".lora_A.default.r.weight") for n in trainable)
    lr = config.fedsb.init_lr
    name, layer = next(iter(sb_layers(task.model).items()))
    # The same gradient taken directly on the pretrained weights, adapters off.
    weight = layer.get_base_layer().weight
    weight.requires_grad_(True)
    try:
        with task.model.disable_adapter():
            total = torch.zeros_like(weight)
            for start in range(0, len(data), config.train.batch_size):
                batch = collate(
                    data[start : start + config.train.batch_size], task.pad_id, task.device
                )
                (grad,) = torch.autograd.grad(answer_loss(task.model, batch), weight)
                total += grad
    finally:
        weight.requires_grad_(False)
        freeze_a_and_b(task.model)
    assert torch.equal(steps[name], -lr * torch.sign(total))
    p, q = truncated_factors(steps[name], config.lora.r, 10, seed=0)
    assert p.shape == (weight.shape[0], config.lora.r) and q.shape == (
        weight.shape[1],
        config.lora.r,
    )
    # Seeded: the same factors in every process.
    p2, q2 = truncated_factors(steps[name], config.lora.r, 10, seed=0)
    assert torch.equal(p, p2) and torch.equal(q, q2)


def test_settings_are_checked_when_the_config_loads():
    with pytest.raises(FedpressError, match="fedsb.init_clients"):
        load_config(None, ["method=fed-sb", "fedsb.init_clients=3"])
    with pytest.raises(FedpressError, match="fedsb.one_off_codec"):
        load_config(None, ["method=fed-sb", "fedsb.one_off_codec=int9"])
    with pytest.raises(FedpressError, match="not used by method 'lora-fedavg'"):
        load_config(None, ["fedsb.init_examples=8"])
    with pytest.raises(FedpressError, match="fedsb.init"):
        load_config(None, ["method=fed-sb", "fedsb.init=svd"])
    # The gradient init's one-off upload is a client's data-shaped step, outside DP.
    with pytest.raises(FedpressError, match="outside the DP guarantee"):
        load_config(None, ["method=fed-sb", "privacy.enabled=true"])
    load_config(None, ["method=fed-sb", "privacy.enabled=true", "fedsb.init=random"])


def test_the_random_start_is_orthonormal_seeded_and_leaves_the_base_model():
    def random_pair(config):
        task = build_sb_task(config)
        start = random_start(task)
        frozen = protocol.decode_record(
            one_off_codec(config), start.frozen, frozen_shapes(task.model)
        )
        return start, frozen

    config = load_config(None, [*SETTING, "fedsb.init=random"])
    start, frozen = random_pair(config)
    assert start.bytes_up == [] and start.clients == 0  # no client involved
    _, repeated = random_pair(config)
    rank = config.lora.r
    for key, value in frozen.items():
        assert torch.equal(value, repeated[key])  # the same from the same seed
        gram = value @ value.T if key.endswith(".A") else value.T @ value
        torch.testing.assert_close(gram, torch.eye(rank), atol=1e-5, rtol=0)
    assert all(torch.equal(r, torch.zeros(rank, rank)) for r in start.initial_r.values())
    _, other = random_pair(load_config(None, [*SETTING, "fedsb.init=random", "seed=1"]))
    key = next(iter(frozen))
    assert not torch.equal(frozen[key], other[key])


@pytest.mark.slow
def test_a_fed_sb_run_sends_only_r_and_a_resumed_run_rebuilds_the_same_model(tmp_path):
    from fedpress.export import load_run
    from fedpress.flower.simulation import simulate
    from fedpress.task import build_task
    from fedpress.training import evaluate

    config = load_config(None, [*SETTING, "fedsb.one_off_codec=int8", "uplink_codec=int8"])
    out = tmp_path / "run"
    summary = simulate(config, out)
    assert_plan_matches(out)  # before the resume below adds its own round-0 messages
    for name in (
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "adapter.safetensors",
        "curves.png",
    ):
        assert (out / name).is_file(), name
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lora_adapter_bytes = 4 * sum(
        v.numel() for v in build_task(load_config(None, SETTING[1:])).initial_adapter.values()
    )
    # A round's upload per client is R's int8 change and Flower's framing: a small part of an
    # fp32 LoRA adapter of the same rank (tiny-llama: ~1.7 kB against 28.7 kB).
    per_client = [b for r in rounds[1:] for b in r["bytes_up_per_client"]]
    assert per_client and max(per_client) < 0.1 * lora_adapter_bytes
    # The one-off phase is round 0's and reported apart.
    assert summary["fedsb_init_clients"] == 1
    assert 0 < summary["fedsb_init_bytes_up"] <= rounds[0]["bytes_up"]
    assert summary["fedsb_install_bytes_down"] > 0
    # The run folder's adapter is the plain LoRA adapter (A, B R) of the same model: loaded
    # without Fed-SB's code, it scores the final loss the run reported.
    saved = load_file(out / "adapter.safetensors")
    assert saved and all(
        n.endswith((".lora_A.default.weight", ".lora_B.default.weight")) for n in saved
    )
    plain = load_run(out)
    task = build_sb_task(config)
    final = evaluate(
        plain.model, task.encode_all(task.splits.eval_examples), batch_size=16, pad_id=task.pad_id
    )
    assert final.loss == pytest.approx(summary["final_eval_loss"], rel=1e-4)
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    # Resumed after its last round: A and B come back from the checkpoint (the same int8 bytes
    # every node installed), and the final evaluation of the same model gives the same loss.
    again = simulate(config, out, resume=True)
    assert again["final_eval_loss"] == pytest.approx(summary["final_eval_loss"], abs=1e-6)


def test_two_threads_building_the_task_convert_it_once():
    """A node's warm-up thread builds the task while its first message is handled."""
    import threading

    config = load_config(None, [*SETTING, "lora.r=3"])  # a config no other test has built
    threads = [threading.Thread(target=build_sb_task, args=(config,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    task = build_sb_task(config)
    shapes = [tuple(p.shape) for p in task.model.parameters() if p.requires_grad]
    assert shapes and set(shapes) == {(3, 3)}
    assert len(shapes) == len(sb_layers(task.model))
