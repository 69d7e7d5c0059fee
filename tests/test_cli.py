"""The CLI end to end, as a user runs it: real Flower simulation, tiny models, real files."""

import json
import math
import subprocess
import sys
import tomllib

import pytest

from fedpress.config import RunConfig
from plan_check import assert_plan_matches

SUMMARY_KEYS = {
    "method",
    "model",
    "rounds",
    "num_clients",
    "final_eval_loss",
    "final_eval_perplexity",
    "final_accuracy",
    "bytes_up_total",
    "bytes_down_total",
    "wall_s",
    "client_peak_mem_bytes",
    "config",
}


def fedpress(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedpress.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_rounds(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_text_data_rounds_report_perplexity_and_choice_data_does_not():
    from fedpress.run_files import RoundRecord

    text = RoundRecord(round=1, train_loss=2.0, eval_loss=2.5, accuracy=None, eval_examples=8)
    assert text.eval_perplexity == pytest.approx(math.exp(2.5))
    scored = RoundRecord(round=1, train_loss=2.0, eval_loss=0.4, accuracy=0.5, eval_examples=8)
    assert scored.eval_perplexity is None
    lost = RoundRecord(
        round=1, train_loss=None, eval_loss=float("nan"), accuracy=None, eval_examples=8
    )
    assert lost.eval_perplexity is None


@pytest.mark.slow  # a real Flower simulation (or run)
def test_two_client_lora_fedavg_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    result = fedpress(
        "run",
        "--set",
        "model=tiny-llama",
        "--set",
        "num_clients=2",
        "--set",
        "rounds=2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final accuracy" in result.stdout and "MB up" in result.stdout
    for name in (
        "summary.json",
        "metrics.jsonl",
        "adapter.safetensors",
        "curves.png",
        "config.toml",
        "adapter/adapter_config.json",  # a PEFT folder (loaded in test_eval_export.py)
        "adapter/adapter_model.safetensors",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    card = (out / "README.md").read_text()  # a model card, as the Hub expects one
    assert card.startswith("---\nbase_model: tiny-llama\nlibrary_name: peft\n")
    assert f"| final eval loss | {summary['final_eval_loss']:.4f} |" in card
    assert summary["method"] == "lora-fedavg" and summary["rounds"] == 2
    # The saved config re-creates the run exactly.
    saved = RunConfig.from_dict(tomllib.loads((out / "config.toml").read_text()))
    assert saved.to_dict() == summary["config"]
    rounds = read_rounds(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    # Bytes counted from the messages: each client uploads its fp32 adapter change once per
    # round, so per-client uplink is a bit above the adapter size (framing), never below.
    from safetensors.torch import load_file

    adapter_bytes = sum(t.numel() * 4 for t in load_file(out / "adapter.safetensors").values())
    for r in rounds[1:]:
        assert r["clients_ok"] == 2 and r["clients_failed"] == 0
        assert len(r["bytes_up_per_client"]) == 2
        assert all(adapter_bytes < b < adapter_bytes * 1.2 for b in r["bytes_up_per_client"])
        assert all(0 < b < adapter_bytes * 1.5 for b in r["bytes_down_per_client"])
        # The array payload alone, as Flower's ArrayRecord.count_bytes() counts it: the two
        # fp32 changes and a small header each, below the whole messages. (A download can be
        # above its message: Flower sends identical chunks once, e.g. round 1's zero B.)
        assert 2 * adapter_bytes < r["payload_bytes_up"] < 2 * adapter_bytes + 2_048
        assert r["payload_bytes_up"] < r["bytes_up"] and r["payload_bytes_down"] > 0
        assert r["client_peak_mem_bytes"] > 0 and r["client_train_s"] > 0
    assert summary["bytes_up_total"] == sum(r["bytes_up"] for r in rounds)
    assert summary["payload_bytes_up_total"] == sum(r["payload_bytes_up"] for r in rounds)
    # Both memory figures; the peak includes the weights training adds to (this check was in
    # the FFA-LoRA test while it ran a LoRA-FedAvg simulation beside its own).
    assert summary["client_peak_mem_bytes"] > summary["client_train_mem_bytes"] > 0
    assert_plan_matches(out)  # `fedpress plan` of its config.toml: the same messages and bytes


@pytest.mark.slow  # a real Flower simulation (or run)
def test_centralized_reference_run(tmp_path):
    out = tmp_path / "central"
    result = fedpress(
        "run",
        "--set",
        "method=centralized",
        "--set",
        "model=tiny-gpt2",
        "--set",
        "rounds=2",
        "--set",
        "train.local_steps=2",
        "--set",
        "runtime.threads=1",  # two tests at once on two cores (conftest.ONE_CORE)
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "centralized" and summary["bytes_up_total"] == 0
    assert len(read_rounds(out)) == 3
    assert_plan_matches(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "num_client=2"], "did you mean 'num_clients'"),
        (["--set", "data.source=/nonexistent/train.tsv"], "data file not found"),
        (["--set", "model=./no/such/model"], "cannot load"),
        (
            [
                "--set",
                "model=tiny-llama",
                "--set",
                "num_clients=50",
                "--set",
                "data.builtin_size=240",
                "--set",
                "data.eval_size=200",
            ],
            "cannot partition 40",
        ),
        (["/nonexistent/config.toml"], "config file not found"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    result = fedpress("run", *args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["text", "auto"])
def test_binary_data_source_is_one_line_exit_2(tmp_path, fmt):
    """The issue's case: a binary file as data.source, read as text (or guessed)."""
    blob = tmp_path / "weights.bin"
    blob.write_bytes(bytes(range(256)) * 16)
    args = ["--set", "model=tiny-llama", "--set", f"data.source={blob}"]
    result = fedpress("run", *args, "--set", f"data.format={fmt}", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{blob} is not UTF-8 text" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
