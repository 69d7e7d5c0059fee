"""Run outputs: resolved config, metrics.jsonl, summary.json, the adapter, plots, a table.

Every method writes the same files through `RunRecorder`, so runs compare field by field.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedpress.accounting import MB
from fedpress.config import RunConfig


def perplexity(loss: float, accuracy: float | None) -> float | None:
    """Perplexity per token of a text-continuation loss; None for choice-scored data."""
    if accuracy is not None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))


@dataclass
class RoundRecord:
    round: int
    train_loss: float | None
    eval_loss: float
    accuracy: float | None
    eval_examples: int
    clients_sampled: int = 0  # messages sent (a client takes several FedCyBGD turns a round)
    clients_participated: int = 0  # distinct clients those messages went to
    clients_ok: int = 0
    clients_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_up_per_client: list[int] = field(default_factory=list)
    bytes_down_per_client: list[int] = field(default_factory=list)
    # The array payload alone (Flower's ArrayRecord.count_bytes(), what the FlowerTune
    # leaderboard counts); bytes_up / bytes_down are the whole messages.
    payload_bytes_up: int = 0
    payload_bytes_down: int = 0
    # Peak resident memory of a client during its turn, the model it holds included (CUDA:
    # allocator peak), and what training added above the loaded model (fedpress.memory).
    client_peak_mem_bytes: int = 0
    client_train_mem_bytes: int = 0
    client_train_s: float = 0.0
    codec_s: float = 0.0
    eval_s: float = 0.0
    round_wall_s: float = 0.0
    orchestration_s: float = 0.0
    cum_bytes_up: int = 0
    cum_bytes_down: int = 0
    # Federated evaluation: nodes' own held-out data, example-weighted (None: no node scored).
    # Its messages are counted here, not in bytes_up/bytes_down (training traffic).
    fed_eval_loss: float | None = None
    fed_eval_accuracy: float | None = None
    fed_eval_examples: int = 0
    fed_eval_nodes: int = 0
    fed_eval_failed: int = 0
    fed_eval_bytes_down: int = 0
    fed_eval_bytes_up: int = 0
    # exp(eval_loss) where the held-out data is text to continue (no choices to score).
    eval_perplexity: float | None = None

    def __post_init__(self) -> None:
        self.eval_perplexity = perplexity(self.eval_loss, self.accuracy)


class RunRecorder:
    """Appends one line per round as it finishes, so a crashed run keeps what it measured."""

    def __init__(
        self,
        out_dir: Path,
        config: RunConfig,
        resume_round: int | None = None,
        elapsed_s: float = 0.0,
    ) -> None:
        """A new run, or (resume_round set) one that continues after that round."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[RoundRecord] = []
        self.started = time.perf_counter() - elapsed_s
        from fedpress.tracking import open_trackers

        self.trackers = open_trackers(config, self.out_dir, resume_round)
        metrics = self.out_dir / "metrics.jsonl"
        if resume_round is None:
            config.save(self.out_dir / "config.toml")
            metrics.write_text("")
            return
        # Rounds logged after the last checkpoint are redone: drop them.
        kept = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        known = set(RoundRecord.__dataclass_fields__)
        self.rounds = [
            RoundRecord(**{k: v for k, v in r.items() if k in known})
            for r in kept
            if r["round"] <= resume_round
        ]
        metrics.write_text("".join(json.dumps(r.__dict__) + "\n" for r in self.rounds))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log_round(self, record: RoundRecord) -> None:
        previous = self.rounds[-1] if self.rounds else None
        record.cum_bytes_up = record.bytes_up + (previous.cum_bytes_up if previous else 0)
        record.cum_bytes_down = record.bytes_down + (previous.cum_bytes_down if previous else 0)
        self.rounds.append(record)
        with (self.out_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record.__dict__) + "\n")
        for tracker in self.trackers:
            tracker.log_round(record.__dict__)

    def finish(
        self,
        adapter: dict[str, torch.Tensor] | None,
        final_eval_loss: float,
        final_accuracy: float | None,
        final_eval_examples: int,
        extra: dict[str, Any] | None = None,
        weights_file: str = "adapter.safetensors",
    ) -> dict[str, Any]:
        """Save the final weights (`weights_file`: the adapter, also as the PEFT folder
        `adapter/`, or `model.safetensors` for full-parameter methods, also as the transformers
        folder `model/`) and write summary.json and the plot."""
        if adapter is not None:
            from fedpress import standard_folders

            weights = self.out_dir / weights_file
            # Unlinked first: `model/` may hold a hard link to the file a resumed run replaces.
            weights.unlink(missing_ok=True)
            save_file(
                {k: v.contiguous() for k, v in adapter.items()},
                str(weights),
                metadata={"format": "pt"},
            )
            if weights_file == "adapter.safetensors":
                standard_folders.write_adapter_folder(self.out_dir, self.config, adapter)
            elif weights_file == "model.safetensors":
                names = set(adapter)
                standard_folders.write_model_folder(self.out_dir, self.config, weights, names)
        wall = self.elapsed()
        trained = [r for r in self.rounds if r.round > 0]
        summary = {
            "method": self.config.method,
            "model": self.config.model,
            "rounds": self.config.rounds,
            "num_clients": self.config.num_clients,
            "final_eval_loss": final_eval_loss,
            "final_eval_perplexity": perplexity(final_eval_loss, final_accuracy),
            "final_accuracy": final_accuracy,
            "final_eval_examples": final_eval_examples,
            # The per-round figures (metrics.jsonl, the curves) score this many: a fixed subset.
            "round_eval_examples": self.rounds[-1].eval_examples if self.rounds else 0,
            "bytes_up_total": sum(r.bytes_up for r in self.rounds),
            "bytes_down_total": sum(r.bytes_down for r in self.rounds),
            "payload_bytes_up_total": sum(r.payload_bytes_up for r in self.rounds),
            "payload_bytes_down_total": sum(r.payload_bytes_down for r in self.rounds),
            "wall_s": wall,
            "client_train_s": sum(r.client_train_s for r in trained),
            "codec_s": sum(r.codec_s for r in trained),
            "eval_s": sum(r.eval_s for r in self.rounds),
            "orchestration_s": sum(r.orchestration_s for r in trained),
            "client_peak_mem_bytes": max((r.client_peak_mem_bytes for r in self.rounds), default=0),
            "client_train_mem_bytes": max(
                (r.client_train_mem_bytes for r in self.rounds), default=0
            ),
            "clients_failed_total": sum(r.clients_failed for r in self.rounds),
            # Federated evaluation of the last round (nodes' own held-out data), if any.
            "fed_eval_loss": self.rounds[-1].fed_eval_loss if self.rounds else None,
            "fed_eval_accuracy": self.rounds[-1].fed_eval_accuracy if self.rounds else None,
            "out_dir": str(self.out_dir),
            "config": self.config.to_dict(),
            **(extra or {}),
        }
        summary["orchestration_share"] = summary["orchestration_s"] / wall if wall else 0.0
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        for tracker in self.trackers:
            tracker.finish(summary)
        write_model_card(self.out_dir, self.config, summary, weights_file)
        # Drawn beside the rest of the shutdown (Flower stopping its clients); `wait_for_plots`
        # (the runner, the deployed ServerApp) returns once it is written.
        plotter = threading.Thread(
            target=plot_run,
            args=(list(self.rounds), self.out_dir / "curves.png"),
            kwargs={"title": f"{self.config.method} / {self.config.model}"},
            name="curves-png",
        )
        plotter.start()
        _PLOTS.append(plotter)
        return summary


_PLOTS: list[threading.Thread] = []


def write_model_card(
    out_dir: Path, config: RunConfig, summary: dict[str, Any], weights_file: str
) -> None:
    """README.md of the run folder, as the Hugging Face Hub expects a model card: metadata,
    what was trained on what, the final figures, and the config that repeats the run."""
    acc = summary["final_accuracy"]
    lora = weights_file == "adapter.safetensors"
    rows = [
        ("method", config.method),
        ("base model", config.model),
        ("data", f"{Path(config.data.source).name} ({config.data.format})"),
        ("clients, rounds", f"{config.num_clients}, {config.rounds}"),
        ("final accuracy", "n/a" if acc is None else f"{100 * acc:.2f} %"),
        ("final eval loss", f"{summary['final_eval_loss']:.4f}"),
        *_perplexity_row("final perplexity", summary),
        (
            "uplink / download MB",
            f"{summary['bytes_up_total'] / MB:.3f} / {summary['bytes_down_total'] / MB:.3f}",
        ),
        ("client peak memory MB", f"{summary['client_peak_mem_bytes'] / MB:.0f}"),
        ("wall time s", f"{summary['wall_s']:.0f}"),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    weights = (
        "`adapter/`: a PEFT LoRA adapter (`PeftModel.from_pretrained(base, 'adapter')`)"
        if lora
        else "`model/`: a transformers folder (`AutoModelForCausalLM.from_pretrained('model')`)"
    )
    (out_dir / "README.md").write_text(
        "---\n"
        f"base_model: {config.model}\n"
        f"library_name: {'peft' if lora else 'transformers'}\n"
        f"tags: [fedpress, federated-learning, {config.method}]\n"
        "---\n\n"
        f"# {config.method} on {config.model}, trained federatedly with fedpress\n\n"
        f"{table}\n\nWeights: {weights}. Per-round figures: `metrics.jsonl`, `curves.png`.\n\n"
        "## The config (`fedpress run config.toml` repeats the run)\n\n"
        f"```toml\n{config.to_toml()}```\n"
    )


def wait_for_plots() -> None:
    """Return once every run's curves.png started by this process is written."""
    while _PLOTS:
        _PLOTS.pop().join()


def plot_run(rounds: list[RoundRecord], path: Path, title: str = "") -> None:
    """Loss and accuracy against rounds and against cumulative uplink MB. Uses the figure
    API without pyplot's global state, so it may run in any thread."""
    from matplotlib.figure import Figure

    xs_round = [r.round for r in rounds]
    xs_mb = [r.cum_bytes_up / MB for r in rounds]
    has_acc = any(r.accuracy is not None for r in rounds)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, xs, label in ((axes[0], xs_round, "round"), (axes[1], xs_mb, "cumulative uplink MB")):
        ax.plot(xs, [r.eval_loss for r in rounds], "o-", color="tab:blue", label="eval loss")
        ax.set_xlabel(label)
        ax.set_ylabel("eval loss", color="tab:blue")
        ax.grid(alpha=0.3)
        if has_acc:
            twin = ax.twinx()
            twin.plot(
                xs,
                [r.accuracy if r.accuracy is not None else float("nan") for r in rounds],
                "s--",
                color="tab:orange",
                label="accuracy",
            )
            twin.set_ylabel("accuracy", color="tab:orange")
            twin.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _perplexity_row(label: str, summary: dict[str, Any]) -> list[tuple[str, str]]:
    value = summary.get("final_eval_perplexity")
    return [] if value is None else [(label, f"{value:.2f}")]


def format_summary_table(summary: dict[str, Any]) -> str:
    acc = summary["final_accuracy"]
    rows = [
        ("method", summary["method"]),
        ("model", summary["model"]),
        ("final accuracy", "n/a" if acc is None else f"{100 * acc:.1f} %"),
        ("eval loss", f"{summary['final_eval_loss']:.4f}"),
        *_perplexity_row("perplexity", summary),
        ("MB up", f"{summary['bytes_up_total'] / MB:.2f}"),
        ("MB down", f"{summary['bytes_down_total'] / MB:.2f}"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
        ("output", summary["out_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 3 + max(len(str(v)) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}} | {v}" for k, v in rows), line])
