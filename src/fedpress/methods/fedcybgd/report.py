"""FedCyBGD's table in a compare report (`Method.report_tables`): what one client turn costs
in bytes and memory, beside fed-full (full-parameter FedAvg), the claim FedCyBGD is about.
Reads summary.json keys FedCyBGD writes (per-turn bytes, client steps); torch-free, like the
report."""

from __future__ import annotations

from typing import Any

from fedpress.accounting import MB
from fedpress.compare_report import (
    Table,
    VariantResult,
    client_steps,
    fmt,
    in_mb,
    per_client_round_mb,
)

TITLE = "Block-wise and full-parameter costs per client turn"
NOTE = (
    "A turn is one client's training between a download and an upload (FedCyBGD: one block; "
    "fed-full: one client's round). A FedCyBGD client takes several turns a round: per "
    "client per round is a round's bytes over the clients that took part. Peak MB: the "
    "client's peak resident memory during its training, the weights it holds included; "
    "train MB: what training adds above the loaded model (sampled RSS; CUDA allocator "
    "peak on GPU). Runs from before both were recorded show only the older figure."
)


def per_turn_mb(result: VariantResult, key: str) -> float | None:
    """Mean bytes of one message up (`bytes_up_per_client`, one entry per message) or down, in
    MB: one client's round in round-based methods, one turn in FedCyBGD."""
    values = [b for r in result.rounds if r.get("round", 0) > 0 for b in r.get(key) or []]
    return sum(values) / len(values) / MB if values else None


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
                "client steps": fmt(client_steps(r), "{}"),
                "MB down, first turn": fmt(in_mb(down.get("first_mean")), "{:.1f}"),
                "MB down, later turns": fmt(in_mb(down.get("later_mean")), "{:.1f}")
                + ("" if share is None else f" ({100 * share:.1f} % of model)"),
                "MB up / turn": fmt(
                    in_mb(s.get("upload_bytes_per_turn")) or per_turn_mb(r, "bytes_up_per_client"),
                    "{:.1f}",
                ),
                "MB up / client / round": fmt(
                    per_client_round_mb(r, "bytes_up_per_client"), "{:.1f}"
                ),
                "MB down / client / round": fmt(
                    per_client_round_mb(r, "bytes_down_per_client"), "{:.1f}"
                ),
                "peak MB (with weights)": fmt(in_mb(peak), "{:.0f}"),
                "vs fed-full": _share(peak, full_peak),
                "train MB (added)": fmt(in_mb(train), "{:.0f}"),
                "train vs fed-full": _share(train, full_train),
                "failed turns": str(s.get("turns_failed", "-")),
            }
        )
    return rows


def _share(value: Any, of: Any) -> str:
    """`value` as a percentage of fed-full's `of`; "-" where either is missing."""
    return "-" if not (value and of) else f"{100 * value / of:.0f} %"


def tables(results: list[VariantResult], reference: VariantResult | None = None) -> list[Table]:
    """The report's FedCyBGD table (empty rows: the report leaves it out)."""
    return [(TITLE, NOTE, block_rows(results, reference))]
