"""`fedpress export` and `fedpress eval` on a real tiny LoRA run.

The exported folders are loaded in a fresh interpreter with plain transformers / peft (no
fedpress import) and must give the same logits as the tuned model inside fedpress."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedpress.config import load_config
from fedpress.data import load_classification_tsv, load_mcq_csv
from fedpress.errors import FedpressError
from fedpress.export import export_run, load_run
from fedpress.mcq_eval import run_mcq_eval, with_shots
from fedpress.models import load_base_model
from fedpress.runner import run_config
from fedpress.training import encode, evaluate
from fresh_interpreter import logits_elsewhere, logits_here


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "method=centralized",
            "num_clients=2",
            "rounds=1",
            "train.local_steps=3",
            "train.lr=0.01",
            "data.builtin_size=100",
            "data.eval_size=16",
            "eval.per_round_examples=8",
            "tracking.backend=tensorboard,mlflow",
        ],
    )
    run_config(config, out)
    return out


@pytest.mark.slow  # a real Flower simulation (or run)
def test_tracked_figures_read_back_equal_metrics_jsonl(lora_run):
    """TensorBoard's event files and MLflow's file store, read back with their own readers."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    expected = {r["round"]: r["eval_loss"] for r in rows}
    summary = json.loads((lora_run / "summary.json").read_text())

    events = EventAccumulator(str(lora_run / "tensorboard")).Reload()
    logged = {e.step: e.value for e in events.Scalars("round/eval_loss")}
    assert logged.keys() == expected.keys()
    assert all(abs(logged[k] - v) < 1e-6 * abs(v) for k, v in expected.items())  # float32
    assert [e.value for e in events.Scalars("round/bytes_up")] == [r["bytes_up"] for r in rows]
    assert any(tag.startswith("config") for tag in events.Tags()["tensors"])  # the config text
    assert events.Scalars("summary/final_eval_loss")[0].value == pytest.approx(
        summary["final_eval_loss"], rel=1e-6
    )

    client = MlflowClient(tracking_uri=(lora_run / "mlruns").resolve().as_uri())
    run = client.get_run((lora_run / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval_loss")
    assert {m.step: m.value for m in history} == expected
    assert run.data.params["method"] == "centralized" and run.data.params["lora.r"] == "8"
    assert run.data.metrics["summary/final_eval_loss"] == summary["final_eval_loss"]


@pytest.mark.slow  # a real Flower simulation (or run)
def test_exported_lora_loads_without_fedpress_with_the_same_logits(lora_run, tmp_path):
    tuned = logits_here(load_run(lora_run).model)
    base = logits_here(load_base_model("tiny-llama", load_config(lora_run / "config.toml").runtime))
    assert (tuned - base).abs().max() > 1e-3  # the adapter changes the model

    merged = export_run(lora_run, tmp_path / "merged", merge=True)
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()
    adapter = export_run(lora_run, tmp_path / "adapter", merge=False)
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert keys and all(".default." not in k and "lora_" in k for k in keys)  # PEFT's names
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    # The run's own adapter/ folder, on the same base: a PEFT folder as it stands.
    run_adapter = f"adapter:{adapter / 'base_model'}"
    assert json.loads((lora_run / "adapter" / "adapter_config.json").read_text())["r"] == 8
    exports = {"merged": merged, "adapter": adapter, run_adapter: lora_run / "adapter"}
    elsewhere = logits_elsewhere(exports, tmp_path)
    torch.testing.assert_close(elsewhere["merged"], tuned)
    torch.testing.assert_close(elsewhere["adapter"], tuned)
    torch.testing.assert_close(elsewhere[run_adapter], tuned)


@pytest.mark.slow  # a real Flower simulation (or run)
def test_full_parameter_run_exports_as_a_model_folder(lora_run, tmp_path):
    """A full-parameter method saves the whole state dict as model.safetensors."""
    run = tmp_path / "full-run"
    run.mkdir()
    shutil.copy(lora_run / "config.toml", run / "config.toml")
    model = load_base_model("tiny-llama", load_config(run / "config.toml").runtime)
    generator = torch.Generator().manual_seed(0)
    state = {
        k: v + 0.01 * torch.randn(v.shape, generator=generator)
        for k, v in model.state_dict().items()
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(run / "model.safetensors"))
    model.load_state_dict(state)
    loaded = load_run(run)
    assert loaded.kind == "full"
    torch.testing.assert_close(logits_here(loaded.model), logits_here(model))
    folder = export_run(run, tmp_path / "out")
    elsewhere = logits_elsewhere({"merged": folder}, tmp_path)["merged"]
    torch.testing.assert_close(elsewhere, logits_here(model))


@pytest.mark.slow  # a real Flower simulation (or run)
def test_export_refuses_to_overwrite_and_needs_tuned_weights(lora_run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(FedpressError, match="not empty"):
        export_run(lora_run, tmp_path / "busy")
    empty = tmp_path / "unfinished"
    empty.mkdir()
    shutil.copy(lora_run / "config.toml", empty / "config.toml")
    with pytest.raises(FedpressError, match="neither adapter.safetensors nor model.safetensors"):
        export_run(empty, tmp_path / "out")


@pytest.fixture
def mmlu_subset(shared_data, tmp_path) -> Path:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    for subject in ("anatomy", "astronomy"):
        shutil.copy(shared_data / "mmlu" / "test" / f"{subject}_test.csv", folder)
    return folder


def test_k_shot_prompts_show_solved_dev_questions_of_the_same_subject(shared_data):
    dev = load_mcq_csv(shared_data / "mmlu" / "dev")
    test = load_mcq_csv(shared_data / "mmlu" / "test" / "anatomy_test.csv")[:2]
    prompted = with_shots(test, dev, 3)
    anatomy_dev = [d for d in dev if d.label == "anatomy"]
    for original, example in zip(test, prompted, strict=True):
        assert example.prompt.startswith("The following are multiple choice questions")
        assert "about anatomy." in example.prompt and example.prompt.endswith(original.prompt)
        for solved in anatomy_dev[:3]:
            assert f"{solved.prompt}{solved.answer}\n\n" in example.prompt
        assert anatomy_dev[3].prompt not in example.prompt
    with pytest.raises(FedpressError, match="has 5 questions of .anatomy., 6-shot needs 6"):
        with_shots(test, dev, 6)


@pytest.mark.slow  # a real Flower simulation (or run)
def test_eval_cli_zero_and_k_shot(lora_run, mmlu_subset, shared_data, tmp_path, capsys):
    zero = run_mcq_eval(str(lora_run), data=str(mmlu_subset), limit=4, show=False)
    assert zero["questions"] == 8 and set(zero["subjects"]) == {"anatomy", "astronomy"}
    assert json.loads((lora_run / "mcq-0shot.json").read_text())["questions"] == 8
    per_subject = [s["accuracy"] * s["questions"] for s in zero["subjects"].values()]
    assert zero["overall_accuracy"] == pytest.approx(sum(per_subject) / 8)
    dev = shared_data / "mmlu" / "dev"
    two = run_mcq_eval(str(lora_run), data=str(mmlu_subset), dev=str(dev), shots=2, limit=4)
    assert "overall (micro)" in capsys.readouterr().out
    assert two["shots"] == 2 and two["questions"] == 8 and 0.0 <= two["overall_accuracy"] <= 1.0

    # lm-evaluation-harness on the same tuned model: every shipped task in one call.
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("".join((shared_data / "sst2" / "test.tsv").open().readlines()[:5]))
    maths = tmp_path / "maths.jsonl"
    maths.write_text('{"question": "What is 2 + 3?", "answer": "2 + 3 = 5\\n#### 5"}\n')
    text = tmp_path / "text.txt"
    text.write_text(
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak.\n"
    )
    out = tmp_path / "harness.json"
    tasks = f"mmlu,sst2={sst2},gsm8k={maths},perplexity={text}"
    argv = ["eval", str(lora_run), "--tasks", tasks, "--data", str(mmlu_subset), "--dev", str(dev)]
    from fedpress.cli import main

    assert main([*argv, "--shots", "2", "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mmlu (2 subjects)" in printed and "fedpress_sst2" in printed
    harness = json.loads(out.read_text())
    assert harness["mmlu"]["subjects"] == two["subjects"]
    # Question by question: the harness's prompt is the built-in scorer's, and it picks the
    # answer fedpress's scorer picks.
    run = load_run(lora_run)
    pad = int(run.tokenizer.pad_token_id)
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").open()]
    mmlu = [s for s in samples if s["task"].startswith("fedpress_mmlu_")]
    assert len(mmlu) == 8
    prompted = with_shots(load_mcq_csv(mmlu_subset), load_mcq_csv(dev), 2)
    for sample in mmlu:
        subject = sample["task"].removeprefix("fedpress_mmlu_")
        example = [e for e in prompted if e.label == subject][sample["doc_id"]]
        assert sample["arguments"][0][0] == example.prompt
        ours = evaluate(run.model, [encode(example, run.tokenizer, 1024)], batch_size=1, pad_id=pad)
        assert sample["acc"] == ours.accuracy
    # SST-2 with the run's label words: the accuracy fedpress's own evaluation gives.
    examples = load_classification_tsv(sst2, run.config.data.label_words)
    encoded = [encode(e, run.tokenizer, 1024) for e in examples]
    ours = evaluate(run.model, encoded, batch_size=4, pad_id=pad).accuracy
    assert harness["results"]["fedpress_sst2"]["acc,none"] == pytest.approx(ours)
    assert harness["n-samples"]["fedpress_sst2"]["effective"] == 4
    ppl = harness["results"]["fedpress_perplexity"]
    assert ppl["word_perplexity,none"] > 1 and ppl["bits_per_byte,none"] > 0
    assert 0 <= harness["results"]["fedpress_gsm8k"]["exact_match,strict-match"] <= 1


def test_eval_mistakes_are_one_line_errors(capsys):
    from fedpress.cli import main

    assert main(["eval", "tiny-llama", "--data", "nowhere.csv"]) == 2
    assert "data not found: nowhere.csv" in capsys.readouterr().err
    assert main(["eval", "tiny-llama", "--data", "nowhere.csv", "--shots", "2"]) == 2
    assert "needs --dev" in capsys.readouterr().err
    assert main(["eval", "tiny-llama"]) == 2
    assert "--data is needed (or --tasks" in capsys.readouterr().err
    # lm-evaluation-harness tasks: told before the harness is imported.
    assert main(["eval", "tiny-llama", "--tasks", "mmlu"]) == 2
    assert "task 'mmlu' reads an MMLU-layout CSV folder or file: give --data" in (
        capsys.readouterr().err
    )
    assert main(["eval", "tiny-llama", "--tasks", "sst2=nowhere.tsv"]) == 2
    assert "data for task 'sst2' not found: nowhere.tsv" in capsys.readouterr().err
    assert main(["eval", "tiny-llama", "--tasks", "hellaswag=x.txt"]) == 2
    assert "only fedpress's own tasks take a file" in capsys.readouterr().err
    assert main(["eval", "tiny-llama", "--tasks", "mine.yaml"]) == 2
    assert "task file not found: mine.yaml" in capsys.readouterr().err
