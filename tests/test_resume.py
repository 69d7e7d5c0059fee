"""A run killed at a random point and resumed ends exactly where an uninterrupted run ends.

The moment is drawn from a seed the test prints; FEDPRESS_RESUME_SEED=<seed> replays it. Only
the run to be killed is a process of its own (`fedpress run`, killed with its Ray workers);
the reference run and the resumption run in the test's process through what `fedpress run`
and `fedpress run --resume` call, which saves two interpreter start-ups. The runs train over a
4-bit base: this is also QLoRA's kill-and-resume, and its federated run (test_qlora.py)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ONE_CORE
from fedpress.config import load_config
from fedpress.runner import run_config
from test_qlora import check_quantized_run

pytestmark = pytest.mark.slow  # real Flower runs (simulation or deployment)

OVERRIDES = [
    "model=tiny-llama",
    "num_clients=2",
    "rounds=3",
    "train.local_steps=3",
    "data.builtin_size=600",
    # A server optimizer with state (FedAdam's two moments): the resumed run ends on the same
    # adapter only if the checkpoint carried them.
    "server_optimizer.name=fedadam",
    "server_optimizer.lr=0.01",
    # A 4-bit base (QLoRA), the base every process must rebuild quantized the same way.
    "runtime.quantize=4bit",
    *ONE_CORE,
]


def fedpress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedpress.cli", *args], capture_output=True, text=True, timeout=600
    )


def kill_delay(window: float) -> float:
    """Seconds to wait after the first checkpoint: random within `window`, from a printed,
    replayable seed."""
    seed = int(os.environ.get("FEDPRESS_RESUME_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill moment: FEDPRESS_RESUME_SEED={seed}")  # pytest shows it when the test fails
    return random.Random(seed).uniform(0.0, window)


def time_after_first_round(run: Path) -> float:
    """How long the run took from its first checkpoint (end of round 1) to its last round."""
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r["round_wall_s"] for r in rounds if r["round"] > 1)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and everything it started (Ray's workers included): a hard crash."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    reference = tmp_path / "reference"
    expected = run_config(load_config(None, OVERRIDES), reference)
    check_quantized_run(reference, tmp_path)  # QLoRA's federated test, on the way

    crashed = tmp_path / "crashed"
    cli_args = [arg for override in OVERRIDES for arg in ("--set", override)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpress.cli", "run", *cli_args, "--out", str(crashed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Kill at a random moment after the first round's checkpoint, before the run ends.
    deadline = time.monotonic() + 300
    while not (crashed / "checkpoint.safetensors").exists():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Within half the time the uninterrupted run needed after its first round: the kill lands
    # before this run ends (its summary is written before its process exits).
    delay = kill_delay(0.5 * time_after_first_round(reference))
    time.sleep(delay)
    assert proc.poll() is None, f"run finished before it could be killed ({delay:.2f} s)"
    kill_tree(proc)
    assert not (crashed / "summary.json").exists()

    resumed = run_config(load_config(crashed / "config.toml"), crashed, resume=True)
    assert resumed["final_accuracy"] == expected["final_accuracy"]
    assert abs(resumed["final_eval_loss"] - expected["final_eval_loss"]) < 1e-6
    rounds = [
        json.loads(line)["round"] for line in (crashed / "metrics.jsonl").read_text().splitlines()
    ]
    assert rounds == [0, 1, 2, 3]
    a, b = load_file(reference / "adapter.safetensors"), load_file(crashed / "adapter.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-7)


def test_resume_refuses_to_change_the_config(tmp_path):
    result = fedpress("run", "--resume", str(tmp_path), "--set", "rounds=5")
    assert result.returncode == 2 and "--resume takes the run folder only" in result.stderr


@pytest.mark.parametrize("method", ["centralized-full", "centralized-cyclic"])
def test_resuming_a_finished_centralized_run_rewrites_the_same_summary(tmp_path, method):
    """A finished run resumed has no round left to train: it re-scores and re-summarises its
    last checkpoint (centralized-cyclic used to count its steps from the loop's last turns)."""
    overrides = [
        f"method={method}",
        "model=tiny-llama",
        "num_clients=2",
        "rounds=1",
        "train.local_steps=1",
        "data.builtin_size=120",
        "data.eval_size=16",
        "eval.per_round_examples=8",
        "tracking.backend=mlflow",
    ]
    out = tmp_path / method
    first = run_config(load_config(None, overrides), out)
    again = run_config(load_config(out / "config.toml"), out, resume=True)
    assert again["final_accuracy"] == first["final_accuracy"]
    assert again["final_eval_loss"] == pytest.approx(first["final_eval_loss"], abs=1e-6)
    assert again.get("client_steps_total") == first.get("client_steps_total")
    assert [json.loads(line)["round"] for line in (out / "metrics.jsonl").open()] == [0, 1]
    # The resumed run continued the same MLflow run: one run, each round logged once.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("fedpress").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "eval_loss")]
    assert sorted(steps) == [0, 1]
