"""`fedpress eval --tasks`: EleutherAI's lm-evaluation-harness on a run's tuned model.

The harness scores exactly the model fedpress scores (a run folder's base with its adapter or
full weights, or any model by name), so its figures can be held against published ones. The
tasks fedpress ships (`harness_tasks/*.yaml`) read local files, offline; fedpress fills in
where each file lies. Any other harness task, by name or YAML path, runs as the harness
defines it (a task on the Hub needs the network).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fedpress.config import load_config
from fedpress.data import mcq_files, mcq_subject
from fedpress.errors import FedpressError
from fedpress.export import is_run_folder
from fedpress.mcq_eval import load_model, subject_header

SHIPPED = ("mmlu", "sst2", "gsm8k", "perplexity")
# What each shipped task reads, for messages and --help.
SHIPPED_DATA = {
    "mmlu": "an MMLU-layout CSV folder or file",
    "sst2": "a TSV with header sentence<TAB>label",
    "gsm8k": 'a JSON-lines file of {"question", "answer"} records',
    "perplexity": "a plain-text file",
}
MMLU_PREFIX = "fedpress_mmlu_"
# Columns read as text, as fedpress's own loaders read them (pandas would make "0.50" 0.5).
TEXT_COLUMNS = {
    "mmlu": ("question", "choice0", "choice1", "choice2", "choice3", "answer"),
    "sst2": ("sentence", "label"),
}


@dataclass(frozen=True)
class TaskRequest:
    """One entry of `--tasks`: a shipped task with the file it reads, a task YAML, or a name
    the harness knows."""

    name: str
    data: Path | None = None
    yaml: Path | None = None


def parse_tasks(text: str, data: str | None) -> list[TaskRequest]:
    """`mmlu`, `sst2=path.tsv`, `my_task.yaml` or a harness name, comma-separated; a shipped
    task without `=path` reads `--data`."""
    requests = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, path = entry.partition("=")
        if name.endswith((".yaml", ".yml")):
            yaml_path = Path(name)
            if not yaml_path.is_file():
                raise FedpressError(f"task file not found: {name}")
            requests.append(TaskRequest(yaml_path.stem, yaml=yaml_path))
        elif name in SHIPPED:
            source = path or data
            if not source:
                raise FedpressError(
                    f"task '{name}' reads {SHIPPED_DATA[name]}: give --data or {name}=<path>"
                )
            if not Path(source).exists():
                raise FedpressError(f"data for task '{name}' not found: {source}")
            requests.append(TaskRequest(name, data=Path(source)))
        elif path:
            raise FedpressError(
                f"'{entry}': only fedpress's own tasks take a file ({', '.join(SHIPPED)})"
            )
        else:
            requests.append(TaskRequest(name))
    if not requests:
        raise FedpressError("--tasks names no task")
    return requests


def shipped_config(name: str, data_files: dict[str, str]) -> dict[str, Any]:
    """A shipped task's YAML, reading `data_files`."""
    import yaml  # a dependency of transformers; the shipped tasks use no harness YAML tags
    from datasets import Features, Value

    text = (resources.files("fedpress") / "harness_tasks" / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)
    kwargs = {**config.get("dataset_kwargs", {}), "data_files": data_files}
    if name in TEXT_COLUMNS:
        kwargs["features"] = Features({c: Value("string") for c in TEXT_COLUMNS[name]})
    return {**config, "dataset_kwargs": kwargs}


def task_configs(
    request: TaskRequest, *, dev: str | None, shots: int, run_folder: Path | None
) -> list[dict[str, Any] | str]:
    """The harness's task configs for one request: one per subject for MMLU."""
    if request.yaml is not None or request.data is None:
        return [request.name]
    data = request.data
    if request.name == "mmlu":
        return _mmlu_configs(data, dev, shots)
    if data.is_dir():
        raise FedpressError(f"task '{request.name}' reads {SHIPPED_DATA[request.name]}: {data}")
    config = {
        **shipped_config(request.name, {"test": str(data)}),
        "task": f"fedpress_{request.name}",
        "num_fewshot": 0,
    }
    if request.name == "sst2" and run_folder is not None:
        # Score what the run was trained to answer: its own label words and prompt.
        run = load_config(run_folder / "config.toml").data
        config["doc_to_choice"] = list(run.label_words)
        if run.prompt_template:
            config["doc_to_text"] = run.prompt_template.replace("{text}", "{{sentence.strip()}}")
    return [config]


def _mmlu_configs(data: Path, dev: str | None, shots: int) -> list[dict[str, Any] | str]:
    if shots and not dev:
        raise FedpressError(f"{shots}-shot needs --dev (the folder of *_dev.csv files)")
    configs: list[dict[str, Any] | str] = []
    for file in mcq_files(data):
        subject = mcq_subject(file)
        data_files = {"test": str(file)}
        if shots:
            dev_file = Path(dev) / f"{subject}_dev.csv"  # type: ignore[arg-type]
            if not dev_file.is_file():
                raise FedpressError(f"{shots}-shot: no dev questions of '{subject}' ({dev_file})")
            data_files["dev"] = str(dev_file)
        config = {
            **shipped_config("mmlu", data_files),
            "task": MMLU_PREFIX + subject,
            "description": subject_header(subject),
            "num_fewshot": shots,
        }
        if shots:
            config["fewshot_split"] = "dev"
        configs.append(config)
    return configs


def run_harness(
    target: str,
    tasks: str,
    *,
    data: str | None = None,
    dev: str | None = None,
    shots: int = 0,
    limit: int = 0,
    max_length: int = 1024,
    batch_size: int = 4,
    out: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Run the harness; write its results JSON (and every scored sample beside it)."""
    if shots < 0 or limit < 0:
        raise FedpressError("--shots and --limit must be >= 0")
    requests = parse_tasks(tasks, data)  # a mistake in --tasks is told before the slow imports
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise FedpressError(
            "fedpress eval --tasks runs lm-evaluation-harness: pip install 'fedpress[harness]' "
            "(scripts/install.sh installs it)"
        ) from None
    run_folder = Path(target) if is_run_folder(Path(target)) else None
    configs = [
        c for r in requests for c in task_configs(r, dev=dev, shots=shots, run_folder=run_folder)
    ]
    manager = None
    if any(r.yaml is not None or r.data is None for r in requests):
        from lm_eval.tasks import TaskManager

        paths = sorted({str(r.yaml.parent.resolve()) for r in requests if r.yaml is not None})
        manager = TaskManager(include_path=paths or None)
        unknown = [c for c in configs if isinstance(c, str) and c not in manager.all_tasks]
        if unknown:
            raise FedpressError(
                f"lm-eval knows no task {', '.join(map(repr, unknown))} (give a shipped task: "
                f"{', '.join(SHIPPED)}, a task YAML path, or a name from `lm-eval ls tasks`)"
            )
    started = time.perf_counter()
    model, tokenizer = load_model(target)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=configs,
        limit=limit or None,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
        verbosity="WARNING",
    )
    if output is None:
        raise FedpressError("lm-eval returned no results")
    samples = output.pop("samples", {})
    report = {
        "target": target,
        "tasks": tasks,
        "shots": shots,
        "limit": limit,
        "max_length": max_length,
        "lm_eval_version": lm_eval.__version__,
        "seconds": time.perf_counter() - started,
        "results": output["results"],
        "n-samples": output.get("n-samples", {}),
        "configs": output.get("configs", {}),
    }
    mmlu = _mmlu_summary(output["results"], output.get("n-samples", {}))
    if mmlu:
        report["mmlu"] = mmlu
    path = Path(out) if out else _default_output(target, tasks, shots)
    path.parent.mkdir(parents=True, exist_ok=True)
    from lm_eval.utils import handle_non_serializable

    path.write_text(json.dumps(report, indent=2, default=handle_non_serializable))
    with path.with_suffix(".samples.jsonl").open("w") as handle:
        for task, rows in samples.items():
            for row in rows:
                line = {"task": task, **row}
                handle.write(json.dumps(line, default=handle_non_serializable) + "\n")
    report["output"] = str(path)
    if show:
        print(format_results(report))
    return report


def _mmlu_summary(results: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any] | None:
    """Accuracy over every question (micro) and the mean of subjects, as the built-in scorer
    reports them."""
    subjects = {
        name.removeprefix(MMLU_PREFIX): {
            "questions": int(counts[name]["effective"]),
            "accuracy": float(row["acc,none"]),
        }
        for name, row in results.items()
        if name.startswith(MMLU_PREFIX)
    }
    if not subjects:
        return None
    questions = sum(s["questions"] for s in subjects.values())
    return {
        "questions": questions,
        "overall_accuracy": sum(s["accuracy"] * s["questions"] for s in subjects.values())
        / max(questions, 1),
        "macro_accuracy": sum(s["accuracy"] for s in subjects.values()) / len(subjects),
        "subjects": subjects,
    }


def _default_output(target: str, tasks: str, shots: int) -> Path:
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", ",".join(t.split("=")[0] for t in tasks.split(",")))
    if is_run_folder(Path(target)):
        return Path(target) / f"lm-eval-{label}-{shots}shot.json"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", target)
    return Path(f"lm-eval-{name}-{label}-{shots}shot.json")


def format_results(report: dict[str, Any]) -> str:
    lines = [f"{'task':<28} | {'metric':<26} | value", "-" * 66]
    for task, row in report["results"].items():
        if task.startswith(MMLU_PREFIX):
            continue
        for key, value in row.items():
            metric = key.split(",")[0]
            if metric in {"alias", "name", "sample_len"} or metric.endswith("_stderr"):
                continue
            if isinstance(value, int | float):
                lines.append(f"{task:<28} | {key:<26} | {value:.4f}")
    if "mmlu" in report:
        mmlu = report["mmlu"]
        n = len(mmlu["subjects"])
        lines.append(
            f"{f'mmlu ({n} subjects)':<28} | {'acc (micro)':<26} | {mmlu['overall_accuracy']:.4f}"
        )
        lines.append(f"{'':<28} | {'acc (mean of subjects)':<26} | {mmlu['macro_accuracy']:.4f}")
    lines.append(f"lm-eval {report['lm_eval_version']}, {report['shots']}-shot, {report['target']}")
    return "\n".join([*lines, f"saved {report['output']}"])
