"""CG-FedLLM's table in a compare report (`Method.report_tables`): each cg-fedllm run's
autoencoder, its training-round uplink apart from TGAP's one-off upload, and how well TGAP's
autoencoder reconstructs held-out updates. Reads summary.json keys only CG-FedLLM writes;
torch-free, like the report."""

from __future__ import annotations

from fedpress.accounting import MB
from fedpress.compare_report import (
    Table,
    VariantResult,
    fmt,
    ratio_label,
    training_bytes,
    uplink_total,
)

TITLE = "CG-FedLLM autoencoders"
NOTE = (
    "Numbers sent: latent plus per-tensor scales. FAF MB up: the run's uplink without "
    "TGAP's one-off snapshot upload, which the summary's MB up includes only for a run "
    "that ran TGAP itself; the ratio is against the reference variant. TGAP val: "
    "reconstruction of the held-out TGAP snapshots (per-element means, with the "
    "per-tensor scales the client fits)."
)


def autoencoder_rows(
    results: list[VariantResult], reference: VariantResult | None = None
) -> list[dict[str, str]]:
    """CG-FedLLM's autoencoder per cg-fedllm variant: rate, FAF uplink without TGAP's one-off
    upload, shipping, TGAP reconstruction."""
    ref_up = uplink_total(reference)
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
                "FAF uplink ratio": ratio_label(ref_up / faf_up) if ref_up and faf_up else "-",
                "AE shipped MB (down)": f"{(s.get('ae_bytes_down') or 0) / MB:.3f}",
                "TGAP snapshots": str(s.get("tgap_snapshots") or "-"),
                "TGAP MB up": f"{tgap_up / MB:.3f}"
                + (" (this run)" if s.get("tgap_in_run") else " (earlier run)"),
                "TGAP val cosine": fmt(s.get("tgap_val_cosine"), "{:.4f}"),
                "TGAP val SNR dB": fmt(s.get("tgap_val_snr_db"), "{:.2f}"),
            }
        )
    return rows


def tables(results: list[VariantResult], reference: VariantResult | None = None) -> list[Table]:
    """The report's CG-FedLLM table (empty rows: the report leaves it out)."""
    return [(TITLE, NOTE, autoencoder_rows(results, reference))]
