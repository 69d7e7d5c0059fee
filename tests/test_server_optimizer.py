"""Server optimizers: the update rules of their papers, their checkpointed state, their keys."""

import pytest
import torch

from fedpress.config import ServerOptimizerConfig, load_config
from fedpress.errors import FedpressError
from fedpress.server_optimizer import ServerOptimizer

STATE = {"w": torch.tensor([1.0, -2.0, 0.5])}
MEANS = [torch.tensor([0.1, 0.0, -0.2]), torch.tensor([0.3, 0.0, -0.2])]


def run(settings: ServerOptimizerConfig, means=MEANS) -> tuple[ServerOptimizer, torch.Tensor]:
    optimizer, state = ServerOptimizer(settings), dict(STATE)
    for mean in means:
        state = optimizer.step(state, {"w": mean})
    return optimizer, state["w"]


def test_fedavg_adds_the_mean_scaled_by_the_server_lr():
    _, w = run(ServerOptimizerConfig())
    torch.testing.assert_close(w, STATE["w"] + MEANS[0] + MEANS[1])
    _, w = run(ServerOptimizerConfig(lr=0.5))
    torch.testing.assert_close(w, STATE["w"] + 0.5 * (MEANS[0] + MEANS[1]))


def test_fedavgm_steps_with_the_momentum_of_the_means():
    _, w = run(ServerOptimizerConfig(name="fedavgm", lr=1.0, momentum=0.9))
    first = MEANS[0]
    second = 0.9 * first + MEANS[1]
    torch.testing.assert_close(w, STATE["w"] + first + second)


def test_fedadam_scales_each_coordinate_by_its_history():
    opt = ServerOptimizerConfig(name="fedadam", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    _, w = run(opt)
    expected, m, v = STATE["w"].clone(), torch.zeros(3), torch.zeros(3)
    for mean in MEANS:
        m = 0.9 * m + 0.1 * mean
        v = 0.99 * v + 0.01 * mean**2
        expected = expected + 0.1 * m / (v.sqrt() + 1e-3)
    torch.testing.assert_close(w, expected)
    # A coordinate that never changed does not move; the others move by a similar amount
    # whatever their scale (the point of the per-coordinate scaling).
    assert w[1] == STATE["w"][1]
    step = (w - STATE["w"]).abs()
    assert step[0] / step[2] == pytest.approx(1.0, rel=0.5)


def test_moments_round_trip_through_state_tensors_and_refuse_a_foreign_shape():
    settings = ServerOptimizerConfig(name="fedadam", lr=0.1)
    optimizer, _ = run(settings, MEANS[:1])
    saved = optimizer.state_tensors()
    assert set(saved) == {"m.w", "v.w"}
    resumed = ServerOptimizer(settings)
    resumed.load_state_tensors(saved, STATE)
    one = optimizer.step(dict(STATE), {"w": MEANS[1]})
    two = resumed.step(dict(STATE), {"w": MEANS[1]})
    torch.testing.assert_close(one["w"], two["w"], rtol=0, atol=0)
    with pytest.raises(FedpressError, match="does not fit"):
        ServerOptimizer(settings).load_state_tensors({"m.w": torch.zeros(4)}, STATE)
    with pytest.raises(FedpressError, match="does not fit"):
        ServerOptimizer(settings).load_state_tensors({"m.other": torch.zeros(3)}, STATE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["server_optimizer.name=adam"], "did you mean 'fedadam'"),
        (["server_optimizer.lr=0"], "server_optimizer.lr"),
        (["server_optimizer.name=fedavgm", "server_optimizer.momentum=1.0"], "momentum"),
        (["server_optimizer.beta2=-0.1"], "beta2"),
        # FedCyBGD applies each block as its client trained it: a server optimizer would go unused.
        (["method=fedcybgd", "server_optimizer.name=fedavgm"], "server_optimizer"),
        (["method=centralized", "server_optimizer.lr=0.5"], "server_optimizer"),
    ],
)
def test_bad_or_unused_server_optimizer_keys_are_refused(overrides, message):
    with pytest.raises(FedpressError, match=message):
        load_config(None, overrides)


def test_the_lora_methods_accept_a_server_optimizer():
    for method in ("lora-fedavg", "ffa-lora", "fed-full", "cg-fedllm"):
        config = load_config(None, [f"method={method}", "server_optimizer.name=fedavgm"])
        assert config.server_optimizer.name == "fedavgm"
