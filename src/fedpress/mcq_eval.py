"""Multiple-choice evaluation on MMLU-layout CSVs (`fedpress eval`), 0-shot and k-shot.

The papers' benchmark: each question is scored by which answer letter (A-D) gets the highest
log-probability after the prompt, through the same `training.evaluate` every run uses. As in
the original MMLU evaluation, each prompt starts with a line naming the subject; k-shot
prompts then show the first k dev questions of the same subject with their answers.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedpress.config import RuntimeConfig
from fedpress.data import Example, load_mcq_csv
from fedpress.errors import FedpressError
from fedpress.export import is_run_folder, load_run
from fedpress.models import load_base_model, load_tokenizer
from fedpress.training import encode, evaluate


def subject_header(subject: str) -> str:
    topic = subject.replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {topic}.\n\n"


def with_shots(test: list[Example], dev: list[Example], shots: int) -> list[Example]:
    """Each test question behind the subject line and `shots` solved dev questions."""
    by_subject: dict[str, list[Example]] = defaultdict(list)
    for example in dev:
        by_subject[str(example.label)].append(example)
    prompted = []
    for example in test:
        subject = str(example.label)
        solved = by_subject[subject][:shots]
        if len(solved) < shots:
            raise FedpressError(
                f"the dev split has {len(solved)} questions of '{subject}', "
                f"{shots}-shot needs {shots}"
            )
        prefix = "".join(f"{d.prompt}{d.answer}\n\n" for d in solved)
        prompted.append(replace(example, prompt=subject_header(subject) + prefix + example.prompt))
    return prompted


def first_per_subject(examples: list[Example], limit: int) -> list[Example]:
    if limit <= 0:
        return examples
    counts: dict[str, int] = defaultdict(int)
    kept = []
    for example in examples:
        counts[str(example.label)] += 1
        if counts[str(example.label)] <= limit:
            kept.append(example)
    return kept


def load_model(target: str):  # noqa: ANN201
    """(model, tokenizer) of a run folder (base + its tuned weights) or a model by name."""
    path = Path(target)
    if is_run_folder(path):
        run = load_run(path)
        return run.model, run.tokenizer
    if (path / "config.toml").is_file():
        raise FedpressError(f"{path} holds no adapter.safetensors or model.safetensors yet")
    return load_base_model(target, RuntimeConfig()).eval(), load_tokenizer(target)


def run_mcq_eval(
    target: str,
    *,
    data: str,
    dev: str | None = None,
    shots: int = 0,
    limit: int = 0,
    max_length: int = 1024,
    batch_size: int = 8,
    out: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Accuracy per subject and overall; printed as a table and saved as JSON."""
    if shots < 0 or limit < 0:
        raise FedpressError("--shots and --limit must be >= 0")
    if shots and not dev:
        raise FedpressError(f"{shots}-shot needs --dev (the folder of *_dev.csv files)")
    data_path = Path(data)
    if not data_path.exists():
        raise FedpressError(f"data not found: {data}")
    test = first_per_subject(load_mcq_csv(data_path), limit)
    if shots:
        dev_path = Path(dev)  # type: ignore[arg-type]
        if not dev_path.exists():
            raise FedpressError(f"dev data not found: {dev}")
        test = with_shots(test, load_mcq_csv(dev_path), shots)
    else:
        test = [replace(e, prompt=subject_header(str(e.label)) + e.prompt) for e in test]
    started = time.perf_counter()
    model, tokenizer = load_model(target)
    pad_id = int(tokenizer.pad_token_id)
    by_subject: dict[str, list[Example]] = defaultdict(list)
    for example in test:
        by_subject[str(example.label)].append(example)
    subjects: dict[str, dict[str, Any]] = {}
    correct, truncated = 0.0, 0
    for subject, examples in tqdm(sorted(by_subject.items()), desc="subjects", unit="subject"):
        encoded = [encode(e, tokenizer, max_length) for e in examples]
        truncated += sum(
            len(tokenizer(e.prompt, add_special_tokens=False)["input_ids"]) > x.answer_start
            for e, x in zip(examples, encoded, strict=True)
        )
        result = evaluate(model, encoded, batch_size=batch_size, pad_id=pad_id)
        accuracy = result.accuracy or 0.0
        subjects[subject] = {"questions": len(examples), "accuracy": accuracy}
        correct += accuracy * len(examples)
    report = {
        "target": target,
        "data": str(data),
        "dev": dev,
        "shots": shots,
        "limit": limit,
        "questions": len(test),
        "overall_accuracy": correct / len(test) if test else 0.0,
        "macro_accuracy": sum(s["accuracy"] for s in subjects.values()) / max(len(subjects), 1),
        "truncated_prompts": truncated,
        "max_length": max_length,
        "seconds": time.perf_counter() - started,
        "subjects": subjects,
    }
    path = Path(out) if out else default_output(target, shots)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    report["output"] = str(path)
    if show:
        print(format_table(report))
    return report


def default_output(target: str, shots: int) -> Path:
    if is_run_folder(Path(target)):
        return Path(target) / f"mcq-{shots}shot.json"
    return Path(f"mcq-{re.sub(r'[^A-Za-z0-9._-]+', '_', target)}-{shots}shot.json")


def format_table(report: dict[str, Any]) -> str:
    subjects = report["subjects"]
    width = max([len("overall (micro)"), *(len(s) for s in subjects)])
    lines = [f"{'subject':<{width}} | questions | accuracy %", "-" * (width + 26)]
    for name, row in subjects.items():
        lines.append(f"{name:<{width}} | {row['questions']:>9} | {100 * row['accuracy']:>10.2f}")
    lines.append("-" * (width + 26))
    lines.append(
        f"{'overall (micro)':<{width}} | {report['questions']:>9} | "
        f"{100 * report['overall_accuracy']:>10.2f}"
    )
    lines.append(
        f"{'mean of subjects':<{width}} | {len(subjects):>9} | "
        f"{100 * report['macro_accuracy']:>10.2f}"
    )
    notes = f"{report['shots']}-shot, {report['target']}"
    if report["truncated_prompts"]:
        notes += f"; {report['truncated_prompts']} prompts cut to {report['max_length']} tokens"
    return "\n".join([*lines, notes, f"saved {report.get('output', '')}"])
