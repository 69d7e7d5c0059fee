"""The report of a compare folder: `report.md` and a self-contained `report.html`.

It reads only what every run writes (summary.json, metrics.jsonl, config.toml), as plain
dicts, so methods added later appear without changes here and optional keys (`dp_epsilon`,
per-client bytes) are shown where present. Plots are PNG files next to the report; the HTML
page embeds them as base64, so it is one file with no external assets.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpress.accounting import MB
from fedpress.errors import FedpressError

PLOTS = {
    "curves.png": "Accuracy and eval loss against rounds",
    "tradeoff.png": "Accuracy against cumulative uplink MB in training rounds (the communication "
    "trade-off; one-off pre-training uploads such as TGAP's are left out)",
    "costs.png": "Client peak memory and bytes per client per round",
}


@dataclass
class VariantResult:
    name: str
    status: str  # done | skipped | failed | running | pending | interrupted
    error: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def method(self) -> str:
        return str((self.summary or {}).get("method") or self.config.get("method", "?"))

    @property
    def federated(self) -> bool:
        return any(r.get("bytes_up", 0) for r in self.rounds) or bool(
            (self.summary or {}).get("bytes_up_total")
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    rounds = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rounds.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash: the others still count
    return [r for r in rounds if isinstance(r, dict) and "round" in r]


def load_results(folder: Path) -> tuple[dict[str, Any], list[VariantResult]]:
    """The compare header (compare.json) and one result per variant, in matrix order.

    Without compare.json, every subfolder holding a run is a variant (by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FedpressError(f"compare folder not found: {folder}")
    header = _read_json(folder / "compare.json") or {}
    entries = header.get("variants") or [
        {"name": p.name, "status": ""}
        for p in sorted(folder.iterdir())
        if (p / "summary.json").is_file() or (p / "config.toml").is_file()
    ]
    if not entries:
        raise FedpressError(f"{folder} holds no runs (no compare.json, no run folders)")
    return header, [load_run(folder / entry["name"], entry) for entry in entries]


def load_run(run: Path, entry: dict[str, Any] | None = None) -> VariantResult:
    """One run folder; `entry` is its line in compare.json, if it has one."""
    entry = entry or {}
    summary = _read_json(run / "summary.json")
    try:
        config = tomllib.loads((run / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        config = (summary or {}).get("config") or {}
    return VariantResult(
        name=entry.get("name", run.name),
        status=entry.get("status") or ("done" if summary else "incomplete"),
        error=entry.get("error", ""),
        config=config,
        summary=summary,
        rounds=_read_rounds(run / "metrics.jsonl"),
        overrides=entry.get("overrides", {}),
    )


def reference_of(header: dict[str, Any], results: list[VariantResult]) -> VariantResult | None:
    """The variant compression ratios refer to: named in the matrix, else the first finished
    LoRA-FedAvg run with no codec on either link."""
    by_name = {r.name: r for r in results if r.finished}
    if header.get("reference"):
        return by_name.get(header["reference"])
    for result in by_name.values():
        c = result.config
        if (
            result.method == "lora-fedavg"
            and c.get("uplink_codec", "none") == "none"
            and c.get("downlink_codec", "none") == "none"
        ):
            return result
    return None


def codec_label(result: VariantResult) -> str:
    """ "uplink / downlink" of a federated run; methods with their own codecs say it themselves."""
    if not result.federated:
        return "-"
    c = result.config
    from fedpress import registry

    try:
        method = registry.get(result.method)
    except FedpressError:
        method = None
    if method is not None and method.codec_label is not None:
        return method.codec_label(c)
    return f"{c.get('uplink_codec', 'none')} / {c.get('downlink_codec', 'none')}"


def per_turn_mb(result: VariantResult, key: str) -> float | None:
    """Mean bytes of one message up (`bytes_up_per_client`, one entry per message) or down, in
    MB: one client's round in round-based methods, one turn in FedCyBGD."""
    values = [b for r in result.rounds if r.get("round", 0) > 0 for b in r.get(key) or []]
    return sum(values) / len(values) / MB if values else None


def per_client_round_mb(result: VariantResult, key: str) -> float | None:
    """Mean bytes one client sends (`bytes_up_per_client`) or receives in a round, in MB: each
    round's bytes over the clients that took part. A FedCyBGD client takes several turns a
    round, one message each. Runs record how many distinct clients a round reached
    (`clients_participated`); for older runs, turns go to the clients in cyclic order
    (FedBAvg's groups too), so a round of n messages reached min(n, num_clients) clients."""
    clients = result.config.get("num_clients") or (result.summary or {}).get("num_clients")
    total = taking_part = 0
    for r in result.rounds:
        messages = r.get(key) or []
        if r.get("round", 0) > 0 and messages:
            total += sum(messages)
            recorded = r.get("clients_participated")
            if recorded:
                taking_part += recorded
            else:
                taking_part += min(len(messages), clients) if clients else len(messages)
    return total / taking_part / MB if taking_part else None


def summary_rows(header: dict[str, Any], results: list[VariantResult]) -> list[dict[str, str]]:
    """One row of display strings per finished variant."""
    reference = reference_of(header, results)
    ref_up = _uplink_total(reference)
    show_dp = any((r.summary or {}).get("dp_epsilon") is not None for r in results)
    rows = []
    for r in results:
        if not r.finished:
            continue
        s = r.summary or {}
        acc = s.get("final_accuracy")
        up, down = s.get("bytes_up_total", 0), s.get("bytes_down_total", 0)
        ratio = "-"
        if r.federated and up and ref_up:
            ratio = "1x (ref)" if r is reference else _ratio(ref_up / up)
        per_up = per_client_round_mb(r, "bytes_up_per_client")
        per_down = per_client_round_mb(r, "bytes_down_per_client")
        row = {
            "variant": r.name,
            "method": r.method,
            "codec (up / down)": codec_label(r),
            "accuracy %": "n/a" if acc is None else f"{100 * acc:.2f}",
            "eval loss": _fmt(s.get("final_eval_loss"), "{:.4f}"),
            "MB up": f"{up / MB:.3f}",
            "MB down": f"{down / MB:.3f}",
            "uplink ratio": ratio,
            "MB up / client / round": _fmt(per_up, "{:.3f}"),
            "MB down / client / round": _fmt(per_down, "{:.3f}"),
            "client peak mem MB": _fmt(_mb(s.get("client_peak_mem_bytes")), "{:.0f}"),
            "train mem MB": _fmt(_mb(s.get("client_train_mem_bytes")), "{:.0f}"),
            "codec % of client time": _fmt(codec_share(s), "{:.2f}"),
            "wall s": _fmt(s.get("wall_s"), "{:.0f}"),
        }
        if show_dp:
            eps = s.get("dp_epsilon")
            row["DP epsilon"] = (
                "-" if eps is None else f"{eps:.2f} (delta {s.get('dp_delta', 0):.0e})"
            )
        rows.append(row)
    return rows


def _uplink_total(result: VariantResult | None) -> int:
    return (result.summary or {}).get("bytes_up_total", 0) if result else 0


def _ratio(value: float) -> str:
    """4.0x for savings; 1/146x when a variant sends more than the reference."""
    return f"{value:.1f}x" if value >= 1 else f"1/{1 / value:.0f}x"


def codec_share(summary: dict[str, Any]) -> float | None:
    """Encode + decode time as a percentage of the client time it sits in (training + codec)."""
    codec, train = summary.get("codec_s"), summary.get("client_train_s")
    if codec is None or not train:
        return None
    return 100 * codec / (train + codec)


def autoencoder_rows(
    results: list[VariantResult], reference: VariantResult | None = None
) -> list[dict[str, str]]:
    """CG-FedLLM's autoencoder per cg-fedllm variant: rate, FAF uplink without TGAP's one-off
    upload, shipping, TGAP reconstruction."""
    ref_up = _uplink_total(reference)
    rows = []
    for r in results:
        s = r.summary or {}
        if not r.finished or "ae_arch" not in s:
            continue
        ratio = s.get("compression_ratio")
        tgap_up = s.get("tgap_bytes_up") or 0
        faf_up = training_bytes(r)
        rows.append(
            {
                "variant": r.name,
                "autoencoder": str(s.get("ae_arch")),
                "numbers sent / update numbers": "-" if not ratio else f"1/{ratio:.0f}",
                "FAF MB up": f"{faf_up / MB:.3f}",
                "FAF uplink ratio": _ratio(ref_up / faf_up) if ref_up and faf_up else "-",
                "AE shipped MB (down)": f"{(s.get('ae_bytes_down') or 0) / MB:.3f}",
                "TGAP snapshots": str(s.get("tgap_snapshots") or "-"),
                "TGAP MB up": f"{tgap_up / MB:.3f}"
                + (" (this run)" if s.get("tgap_in_run") else " (earlier run)"),
                "TGAP val cosine": _fmt(s.get("tgap_val_cosine"), "{:.4f}"),
                "TGAP val SNR dB": _fmt(s.get("tgap_val_snr_db"), "{:.2f}"),
            }
        )
    return rows


def block_rows(
    results: list[VariantResult], reference: VariantResult | None = None
) -> list[dict[str, str]]:
    """Per-turn costs of block-wise and full-parameter variants (FedCyBGD's claims)."""
    finished = [r for r in results if r.finished]
    full = next((r for r in finished if r.method == "fed-full"), None)
    full_peak = (full.summary or {}).get("client_peak_mem_bytes") if full else None
    full_train = (full.summary or {}).get("client_train_mem_bytes") if full else None
    rows = []
    for r in finished:
        s = r.summary or {}
        if "client_steps_total" not in s and r.method != "fed-full":
            continue
        down = s.get("download_bytes_per_turn") or {}
        if not down:  # fed-full: a turn is one client's round
            per_down = per_turn_mb(r, "bytes_down_per_client")
            down = {"first_mean": per_down and per_down * MB, "later_mean": None}
        share = down.get("later_share_of_full_model")
        peak, train = s.get("client_peak_mem_bytes"), s.get("client_train_mem_bytes")
        cybgd = r.config.get("cybgd") or {}
        rows.append(
            {
                "variant": r.name,
                "method": r.method,
                "allocation": str(cybgd.get("allocation", "-")) if r.method == "fedcybgd" else "-",
                "client steps": _fmt(client_steps(r), "{}"),
                "MB down, first turn": _fmt(_mb(down.get("first_mean")), "{:.1f}"),
                "MB down, later turns": _fmt(_mb(down.get("later_mean")), "{:.1f}")
                + ("" if share is None else f" ({100 * share:.1f} % of model)"),
                "MB up / turn": _fmt(
                    _mb(s.get("upload_bytes_per_turn")) or per_turn_mb(r, "bytes_up_per_client"),
                    "{:.1f}",
                ),
                "MB up / client / round": _fmt(
                    per_client_round_mb(r, "bytes_up_per_client"), "{:.1f}"
                ),
                "MB down / client / round": _fmt(
                    per_client_round_mb(r, "bytes_down_per_client"), "{:.1f}"
                ),
                "peak MB (with weights)": _fmt(_mb(peak), "{:.0f}"),
                "vs fed-full": _share(peak, full_peak),
                "train MB (added)": _fmt(_mb(train), "{:.0f}"),
                "train vs fed-full": _share(train, full_train),
                "failed turns": str(s.get("turns_failed", "-")),
            }
        )
    return rows


def client_steps(result: VariantResult) -> int | None:
    """Client optimizer steps: the run's own count, else (round-based runs) clients that
    reported x local steps."""
    counted = (result.summary or {}).get("client_steps_total")
    if counted:
        return int(counted)
    steps = (result.config.get("train") or {}).get("local_steps")
    done = sum(r.get("clients_ok") or 0 for r in result.rounds)
    return done * steps if steps and done else None


def _mb(value: Any) -> float | None:
    return None if value is None else value / MB


def _share(value: Any, of: Any) -> str:
    return "-" if not (value and of) else f"{100 * value / of:.0f} %"


DETAILS = (
    (
        "CG-FedLLM autoencoders",
        autoencoder_rows,
        "Numbers sent: latent plus per-tensor scales. FAF MB up: the run's uplink without "
        "TGAP's one-off snapshot upload, which the summary's MB up includes only for a run "
        "that ran TGAP itself; the ratio is against the reference variant. TGAP val: "
        "reconstruction of the held-out TGAP snapshots (per-element means, with the "
        "per-tensor scales the client fits).",
    ),
    (
        "Block-wise and full-parameter costs per client turn",
        block_rows,
        "A turn is one client's training between a download and an upload (FedCyBGD: one block; "
        "fed-full: one client's round). A FedCyBGD client takes several turns a round: per "
        "client per round is a round's bytes over the clients that took part. Peak MB: the "
        "client's peak resident memory during its training, the weights it holds included; "
        "train MB: what training adds above the loaded model (sampled RSS; CUDA allocator "
        "peak on GPU). Runs from before both were recorded show only the older figure.",
    ),
)


def detail_tables(
    results: list[VariantResult], reference: VariantResult | None = None
) -> list[tuple[str, str, list[dict[str, str]]]]:
    """(title, note, rows) of each method-specific table with at least one row."""
    tables = [(title, note, rows(results, reference)) for title, rows, note in DETAILS]
    return [(title, note, rows) for title, note, rows in tables if rows]


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_No variant finished yet._"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------


def _colors(results: list[VariantResult]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(results) <= 10 else "tab20"]
    return {r.name: cmap(i % cmap.N) for i, r in enumerate(results)}


MARKERS = "osD^v<>pP*hX"


def _markers(results: list[VariantResult]) -> dict[str, str]:
    """Lines that coincide (round 0 is the same for every variant) stay distinguishable."""
    return {r.name: MARKERS[i % len(MARKERS)] for i, r in enumerate(results)}


def _has_accuracy(results: list[VariantResult]) -> bool:
    return any(r.get("accuracy") is not None for v in results for r in v.rounds)


def plot_curves(results: list[VariantResult], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors, markers = _colors(results), _markers(results)
    has_acc = _has_accuracy(results)
    panels = ["accuracy", "eval_loss"] if has_acc else ["eval_loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for r in results:
            points = [(x["round"], x.get(key)) for x in r.rounds if x.get(key) is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            scale = 100 if key == "accuracy" else 1
            ax.plot(
                xs,
                [y * scale for y in ys],
                f"{markers[r.name]}-",
                color=colors[r.name],
                label=r.name,
                lw=1.8,
                alpha=0.85,
            )
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy % (per-round eval subset)" if key == "accuracy" else "eval loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_bytes(
    result: VariantResult, link: str = "up", record: dict[str, Any] | None = None
) -> int:
    """Bytes on one link ("up" or "down") of the training rounds up to `record` (default: the
    last), without round 0's: the connection and one-off phases before training, such as
    CG-FedLLM's TGAP snapshots, which variants that reuse a collection do not pay again."""
    if record is None:
        record = result.rounds[-1] if result.rounds else {}
    before = sum(x.get(f"bytes_{link}", 0) for x in result.rounds if x["round"] == 0)
    return max(0, record.get(f"cum_bytes_{link}", 0) - before)


def plot_tradeoff(results: list[VariantResult], path: Path) -> None:
    """Per-round points of each federated variant; methods that send nothing (centralized)
    and the untrained start are horizontal reference lines."""
    import matplotlib.pyplot as plt

    colors, markers = _colors(results), _markers(results)
    key = "accuracy" if _has_accuracy(results) else "eval_loss"
    scale = 100 if key == "accuracy" else 1
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    start = next(
        (x.get(key) for r in results for x in r.rounds if x["round"] == 0 and x.get(key)), None
    )
    if start is not None:
        ax.axhline(start * scale, color="0.5", ls=":", lw=1.2, label="before training (round 0)")
    for r in results:
        points = [
            (training_bytes(r, "up", x) / MB, x[key] * scale)
            for x in r.rounds
            if x["round"] > 0 and x.get(key) is not None
        ]
        if not points:
            continue
        if not r.federated:
            ax.axhline(
                points[-1][1], color=colors[r.name], ls="--", lw=1.5, label=f"{r.name} (no uplink)"
            )
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, f"{markers[r.name]}-", color=colors[r.name], label=r.name, lw=1.8)
        ax.annotate(
            f"{ys[-1]:.1f}" if key == "accuracy" else f"{ys[-1]:.3f}",
            (xs[-1], ys[-1]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color=colors[r.name],
        )
    spread = [training_bytes(r, "up", x) for r in results if r.federated for x in r.rounds]
    spread = [b for b in spread if b > 0]
    log_scale = bool(spread) and max(spread) / min(spread) > 20  # codecs apart by orders
    if log_scale:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    scale_note = " (log scale)" if log_scale else ""
    ax.set_xlabel(f"cumulative uplink MB in training rounds, all clients{scale_note}")
    ax.set_ylabel("accuracy % (per-round eval subset)" if key == "accuracy" else "eval loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_costs(results: list[VariantResult], path: Path) -> None:
    """Horizontal bars, one row per variant, the value written at the end of each bar."""
    import matplotlib.pyplot as plt

    finished = [r for r in results if r.finished]
    names = [r.name for r in finished]
    mem = [(r.summary or {}).get("client_peak_mem_bytes", 0) / MB for r in finished]
    up = [per_client_round_mb(r, "bytes_up_per_client") or 0.0 for r in finished]
    down = [per_client_round_mb(r, "bytes_down_per_client") or 0.0 for r in finished]
    height = max(2.6, 0.45 * len(names) + 1.2)
    fig, (ax_mem, ax_bytes) = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    ys = list(range(len(names)))
    bars = ax_mem.barh(ys, mem, color="tab:purple")
    ax_mem.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax_mem.set_xlabel("client peak memory, weights included, MB")
    ax_mem.set_yticks(ys, names)
    ax_mem.invert_yaxis()
    width = 0.4
    b_up = ax_bytes.barh([y - width / 2 for y in ys], up, width, label="up", color="tab:blue")
    b_down = ax_bytes.barh(
        [y + width / 2 for y in ys], down, width, label="down", color="tab:orange"
    )
    ax_bytes.bar_label(b_up, fmt="%.3g", fontsize=8, padding=2)
    ax_bytes.bar_label(b_down, fmt="%.3g", fontsize=8, padding=2)
    ax_bytes.set_xlabel("MB per client per round")
    ax_bytes.legend(fontsize=8, loc="lower right")
    for ax, values in ((ax_mem, mem), (ax_bytes, up + down)):
        ax.set_xlim(0, max(values + [1e-9]) * 1.22)  # room for the labels
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the report ------------------------------------------------------------------------------


def _notes(header: dict[str, Any], results: list[VariantResult]) -> list[str]:
    reference = reference_of(header, results)
    eval_sizes = sorted({(r.summary or {}).get("final_eval_examples") for r in results} - {None})
    round_sizes = sorted({(r.summary or {}).get("round_eval_examples") for r in results} - {None})
    notes = [
        "MB = 10^6 bytes, counted from the Flower messages actually sent "
        "(all clients, all rounds).",
        "MB up / down per client per round: a round's bytes over the clients that took part "
        "(a FedCyBGD client sends and receives one message per turn, several turns a round).",
        "Uplink ratio = uplink bytes of the reference variant"
        + (f" (`{reference.name}`)" if reference else " (none finished)")
        + " / this variant's.",
        "Client memory, the same measure for every method, around each client's training: "
        "peak mem = peak resident memory with the weights the client holds (in the simulation "
        "the worker process's, interpreter and libraries included; CUDA allocator peak on "
        "GPU); train mem = what training adds above the loaded model.",
    ]
    if eval_sizes:
        notes.append(
            "Final accuracy and loss on the full eval split ("
            + ", ".join(str(n) for n in eval_sizes)
            + " examples); the curves use the per-round eval subset"
            + (f" ({', '.join(str(n) for n in round_sizes)} examples)." if round_sizes else ".")
        )
    return notes


def _problems(results: list[VariantResult]) -> list[str]:
    lines = []
    for r in results:
        if r.status == "failed":
            lines.append(f"`{r.name}` failed: {r.error or 'see its error.log'}")
        elif not r.finished:
            lines.append(f"`{r.name}` has no result yet (status: {r.status}).")
    return lines


def _variant_lines(results: list[VariantResult]) -> list[str]:
    lines = []
    for r in results:
        keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in r.overrides.items()) or "(base)"
        status = "done in an earlier compare" if r.status == "skipped" else r.status
        lines.append(f"`{r.name}` ({status}): {keys}")
    return lines


def write_report(folder: Path) -> tuple[Path, Path]:
    """Write the plots, report.md and report.html into the compare folder."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    header, results = load_results(folder)
    plotted = [r for r in results if r.rounds]
    plots: dict[str, str] = {}
    if plotted:
        plot_curves(plotted, folder / "curves.png")
        plot_tradeoff(plotted, folder / "tradeoff.png")
        if any(r.finished for r in plotted):
            plot_costs(plotted, folder / "costs.png")
        plots = {name: caption for name, caption in PLOTS.items() if (folder / name).is_file()}
    rows = summary_rows(header, results)
    title = header.get("title") or folder.name
    description = header.get("description", "")
    notes, problems, variants = _notes(header, results), _problems(results), _variant_lines(results)
    details = detail_tables(results, reference_of(header, results))

    md = [f"# {title}", ""]
    if description:
        md += [description, ""]
    md += ["## Summary", "", markdown_table(rows), ""]
    md += [f"- {n}" for n in notes] + [""]
    for heading, note, detail in details:
        md += [f"## {heading}", "", markdown_table(detail), "", note, ""]
    if problems:
        md += ["## Failed or unfinished", ""] + [f"- {p}" for p in problems] + [""]
    md += ["## Plots", ""]
    for name, caption in plots.items():
        md += [f"### {caption}", "", f"![{caption}]({name})", ""]
    md += ["## Variants", ""] + [f"- {v}" for v in variants] + [""]
    markdown_path = folder / "report.md"
    markdown_path.write_text("\n".join(md))

    html_path = folder / "report.html"
    html_path.write_text(
        _html(title, description, rows, notes, problems, plots, variants, folder, details)
    )
    return markdown_path, html_path


def _inline_code(text: str) -> str:
    """Escape, then show `x` as <code>x</code> (the only markup the notes use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(rows: list[dict[str, str]], table_id: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    id_attr = f' id="{table_id}"' if table_id else ""
    return (
        f'<div class="wide"><table{id_attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html(
    title: str,
    description: str,
    rows: list[dict[str, str]],
    notes: list[str],
    problems: list[str],
    plots: dict[str, str],
    variants: list[str],
    folder: Path,
    details: list[tuple[str, str, list[dict[str, str]]]] = (),
) -> str:
    esc = html.escape
    table = _html_table(rows, "summary") if rows else "<p><em>No variant finished yet.</em></p>"
    detail_html = "".join(
        f"<h2>{esc(heading)}</h2>{_html_table(detail)}<p>{esc(note)}</p>"
        for heading, note, detail in details
    )
    figures = "".join(
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode((folder / name).read_bytes()).decode()}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in plots.items()
    )

    def items(lines: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{_inline_code(line)}</li>" for line in lines) + "</ul>"

    problem_html = f"<h2>Failed or unfinished</h2>{items(problems)}" if problems else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222;
        padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td {{ white-space: nowrap; }}
.wide {{ overflow-x: auto; }}
th {{ background: #f0f0f0; }}
td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
tr:nth-child(even) td {{ background: #fafafa; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(description)}</p>
<h2>Summary</h2>
{table}
{items(notes)}
{detail_html}
{problem_html}
<h2>Plots</h2>
{figures}
<h2>Variants</h2>
{items(variants)}
</body></html>
"""
