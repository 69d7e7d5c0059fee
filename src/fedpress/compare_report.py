"""The report of a compare folder: `report.md` and a self-contained `report.html`.

It reads only what every run writes (summary.json, metrics.jsonl, config.toml), as plain
dicts, so methods added later appear without changes here and optional keys (`dp_epsilon`,
per-client bytes) are shown where present. Tables about one method (CG-FedLLM's autoencoders)
come from that method's package, through `registry.Method.report_tables`. Plots are PNG files
next to the report; the HTML page (templates/report.html.j2) embeds them as base64, so it is
one file with no external assets.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from fedpress import registry
from fedpress.accounting import MB
from fedpress.errors import FedpressError

# (title, note, rows) of a method's own table in the report.
Table = tuple[str, str, list[dict[str, str]]]

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


def method_of(result: VariantResult) -> registry.Method | None:
    """The registered method of a run; None for a method this install does not know."""
    try:
        return registry.get(result.method)
    except FedpressError:
        return None


def reference_of(header: dict[str, Any], results: list[VariantResult]) -> VariantResult | None:
    """The variant compression ratios refer to: named in the matrix (`reference`), else the
    first finished run with no codec on either link of a method registered as the default
    reference (`Method.reference`: LoRA-FedAvg)."""
    by_name = {r.name: r for r in results if r.finished}
    if header.get("reference"):
        return by_name.get(header["reference"])
    for result in by_name.values():
        c = result.config
        method = method_of(result)
        if (
            method is not None
            and method.reference
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
    method = method_of(result)
    if method is not None and method.codec_label is not None:
        return method.codec_label(c)
    return f"{c.get('uplink_codec', 'none')} / {c.get('downlink_codec', 'none')}"


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
    ref_up = uplink_total(reference)
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
            ratio = "1x (ref)" if r is reference else ratio_label(ref_up / up)
        per_up = per_client_round_mb(r, "bytes_up_per_client")
        per_down = per_client_round_mb(r, "bytes_down_per_client")
        row = {
            "variant": r.name,
            "method": r.method,
            "codec (up / down)": codec_label(r),
            "accuracy %": "n/a" if acc is None else f"{100 * acc:.2f}",
            "eval loss": fmt(s.get("final_eval_loss"), "{:.4f}"),
            "MB up": f"{up / MB:.3f}",
            "MB down": f"{down / MB:.3f}",
            "uplink ratio": ratio,
            "MB up / client / round": fmt(per_up, "{:.3f}"),
            "MB down / client / round": fmt(per_down, "{:.3f}"),
            "client peak mem MB": fmt(in_mb(s.get("client_peak_mem_bytes")), "{:.0f}"),
            "train mem MB": fmt(in_mb(s.get("client_train_mem_bytes")), "{:.0f}"),
            "codec % of client time": fmt(codec_share(s), "{:.2f}"),
            "wall s": fmt(s.get("wall_s"), "{:.0f}"),
        }
        if show_dp:
            eps = s.get("dp_epsilon")
            row["DP epsilon"] = (
                "-" if eps is None else f"{eps:.2f} (delta {s.get('dp_delta', 0):.0e})"
            )
        rows.append(row)
    return rows


def uplink_total(result: VariantResult | None) -> int:
    """A run's uplink bytes, all of them (0 without a run)."""
    return (result.summary or {}).get("bytes_up_total", 0) if result else 0


def ratio_label(value: float) -> str:
    """4.0x for savings; 1/146x when a variant sends more than the reference."""
    return f"{value:.1f}x" if value >= 1 else f"1/{1 / value:.0f}x"


def codec_share(summary: dict[str, Any]) -> float | None:
    """Encode + decode time as a percentage of the client time it sits in (training + codec)."""
    codec, train = summary.get("codec_s"), summary.get("client_train_s")
    if codec is None or not train:
        return None
    return 100 * codec / (train + codec)


def client_steps(result: VariantResult) -> int | None:
    """Client optimizer steps: the run's own count, else (round-based runs) clients that
    reported in the training rounds x local steps (round 0's one-off work is not a step)."""
    counted = (result.summary or {}).get("client_steps_total")
    if counted:
        return int(counted)
    steps = (result.config.get("train") or {}).get("local_steps")
    done = sum(r.get("clients_ok") or 0 for r in result.rounds if r.get("round", 1) > 0)
    return done * steps if steps and done else None


def in_mb(value: Any) -> float | None:
    """Bytes in MB; None stays None (a figure the run did not record)."""
    return None if value is None else value / MB


def detail_tables(
    results: list[VariantResult], reference: VariantResult | None = None
) -> list[Table]:
    """(title, note, rows) of each method's own table with at least one row, in registration
    order. Every registered method is asked, not only those in the results: a table may show
    other methods' runs (FedCyBGD's sets fed-full beside it) and picks its rows itself."""
    tables = [
        table
        for method in registry.all_methods()
        if method.report_tables is not None
        for table in method.report_tables(results, reference)
    ]
    return [(title, note, rows) for title, note, rows in tables if rows]


def fmt(value: Any, pattern: str) -> str:
    """A figure formatted, or "-" where it is missing or not finite."""
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


@functools.cache
def _templates() -> jinja2.Environment:
    """The page templates (package data); every value put into the page is escaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fedpress", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty cell
        keep_trailing_newline=True,
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
    details: list[Table],
) -> str:
    """The self-contained page: the report's tables and lists, the plots inlined."""
    figures = [
        {"caption": caption, "png": base64.b64encode((folder / name).read_bytes()).decode()}
        for name, caption in plots.items()
    ]
    return (
        _templates()
        .get_template("report.html.j2")
        .render(
            title=title,
            description=description,
            rows=rows,
            notes=notes,
            details=details,
            problems=problems,
            plots=figures,
            variants=variants,
        )
    )
