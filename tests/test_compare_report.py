"""The compare report reads run folders as plain files: methods added later, DP runs and runs
without accuracy appear with no change to the reader."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedpress import registry
from fedpress.compare_report import (
    detail_tables,
    load_results,
    reference_of,
    summary_rows,
    write_report,
)
from fedpress.errors import FedpressError

MB = 1_000_000


def fake_run(
    folder: Path,
    method: str,
    up_per_client: int,
    accuracy: float | None = 0.8,
    toml_extra: str = "",
    summary_extra: dict | None = None,
    messages: int = 2,
) -> None:
    """A run folder as RunRecorder writes it: 2 rounds of `messages` messages each way (one
    per client, or one per FedCyBGD turn), `up_per_client` bytes each."""
    folder.mkdir(parents=True)
    up = up_per_client if method != "centralized" else 0
    rounds = []
    for r in range(3):
        per_client = [up] * messages if r else []
        rounds.append(
            {
                "round": r,
                "eval_loss": 1.0 - 0.1 * r,
                "accuracy": None if accuracy is None else accuracy - 0.05 * (2 - r),
                "bytes_up": sum(per_client),
                "bytes_down": sum(per_client),
                "bytes_up_per_client": per_client,
                "bytes_down_per_client": per_client,
                "cum_bytes_up": messages * up * r,
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (folder / "config.toml").write_text(f'method = "{method}"\n{toml_extra}')
    summary = {
        "method": method,
        "final_accuracy": accuracy,
        "final_eval_loss": 0.8,
        "final_eval_examples": 872,
        "round_eval_examples": 100,
        "bytes_up_total": 2 * messages * up,
        "bytes_down_total": 2 * messages * up,
        "client_peak_mem_bytes": 900 * MB,
        "wall_s": 12.0,
        **(summary_extra or {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def folder(tmp_path) -> Path:
    fake_run(tmp_path / "lora", "lora-fedavg", 4 * MB)
    # Every resolved config has an [autoencoder] section; only cg-fedllm's codec is the AE.
    fake_run(
        tmp_path / "lora-int8",
        "lora-fedavg",
        MB,
        toml_extra='uplink_codec = "int8"\n[autoencoder]\narch = "resnet3"\n',
    )
    fake_run(tmp_path / "central", "centralized", 0)
    fake_run(
        tmp_path / "ae",
        "cg-fedllm",
        MB // 16,
        toml_extra='[autoencoder]\narch = "uformer1"\ncompression = 64\n',
        summary_extra={
            "dp_epsilon": 7.9,
            "dp_delta": 1e-5,
            "ae_arch": "uformer1",
            "compression_ratio": 64.0,
            "ae_bytes_down": 2 * MB,
            "tgap_snapshots": 16,
            "tgap_bytes_up": 30 * MB,
            "tgap_in_run": True,
            "bytes_up_total": 4 * (MB // 16) + 30 * MB,  # TGAP ran in this run: in its total
            "tgap_val_cosine": 0.389,
            "tgap_val_snr_db": 0.71,
            "codec_s": 1.0,
            "client_train_s": 99.0,
        },
    )
    fake_run(tmp_path / "full", "fed-full", 500 * MB, summary_extra={"client_steps_total": 30})
    # 2 clients taking 6 turns a round between them: 3 messages each way per client.
    fake_run(
        tmp_path / "cybgd",
        "fedcybgd",
        2 * MB,
        toml_extra='num_clients = 2\n[cybgd]\nallocation = "random"\nprune_ratio = 0.5\n'
        'prune_target = "delta"\n',
        messages=6,
        summary_extra={
            "client_peak_mem_bytes": 225 * MB,
            "client_steps_total": 30,
            "download_bytes_per_turn": {
                "first_mean": 540 * MB,
                "later_mean": 18 * MB,
                "later_share_of_full_model": 18 / 540,
            },
            "upload_bytes_per_turn": 14.2 * MB,
            "turns_failed": 0,
        },
    )
    variants = [
        {"name": n, "status": "done", "overrides": {}}
        for n in ("central", "lora", "lora-int8", "ae", "full", "cybgd")
    ]
    variants.append({"name": "crashed", "status": "failed", "error": "RuntimeError: boom"})
    (tmp_path / "compare.json").write_text(json.dumps({"title": "T", "variants": variants}))
    return tmp_path


def test_table_has_ratios_dp_and_unknown_methods(folder):
    header, results = load_results(folder)
    rows = {row["variant"]: row for row in summary_rows(header, results)}
    assert list(rows) == ["central", "lora", "lora-int8", "ae", "full", "cybgd"]
    assert rows["lora"]["uplink ratio"] == "1x (ref)"  # the uncompressed LoRA-FedAvg run
    assert rows["lora-int8"]["uplink ratio"] == "4.0x"
    assert rows["ae"]["uplink ratio"] == "1/2x"  # TGAP's one-off upload included
    assert rows["central"]["uplink ratio"] == "-" and rows["central"]["codec (up / down)"] == "-"
    assert rows["lora-int8"]["codec (up / down)"] == "int8 / none"
    assert rows["ae"]["codec (up / down)"] == "AE uformer1 1/64 / none"
    assert rows["ae"]["DP epsilon"] == "7.90 (delta 1e-05)" and rows["lora"]["DP epsilon"] == "-"
    assert rows["cybgd"]["method"] == "fedcybgd"
    # FedCyBGD's own download compression.
    assert rows["cybgd"]["codec (up / down)"] == "none / prune-change 0.5 + delta"
    assert rows["full"]["uplink ratio"] == "1/125x"  # sends more than the reference
    assert rows["lora"]["MB up / client / round"] == "4.000"
    # FedCyBGD: 6 turn messages of 2 MB a round over 2 clients, not the 2 MB of one turn.
    assert rows["cybgd"]["MB up / client / round"] == "6.000"
    assert rows["cybgd"]["MB down / client / round"] == "6.000"
    assert rows["full"]["MB up / client / round"] == "500.000"
    assert rows["lora"]["accuracy %"] == "80.00" and rows["lora"]["client peak mem MB"] == "900"
    assert (
        rows["ae"]["codec % of client time"] == "1.00"
        and rows["lora"]["codec % of client time"] == "-"
    )


def test_method_detail_tables(folder):
    header, results = load_results(folder)
    tables = {
        title: rows for title, _, rows in detail_tables(results, reference_of(header, results))
    }
    (ae,) = tables["CG-FedLLM autoencoders"]
    assert ae["autoencoder"] == "uformer1" and ae["numbers sent / update numbers"] == "1/64"
    # The summary's MB up holds TGAP's 30 MB; FAF alone is 4 x MB/16 against the ref's 16 MB.
    assert ae["FAF MB up"] == "0.250" and ae["FAF uplink ratio"] == "64.0x"
    assert ae["TGAP MB up"] == "30.000 (this run)" and ae["TGAP val SNR dB"] == "0.71"
    blocks = {
        row["variant"]: row for row in tables["Block-wise and full-parameter costs per client turn"]
    }
    assert list(blocks) == ["full", "cybgd"]
    assert blocks["cybgd"]["allocation"] == "random"
    assert blocks["cybgd"]["MB down, later turns"] == "18.0 (3.3 % of model)"
    assert blocks["cybgd"]["vs fed-full"] == "25 %" and blocks["full"]["vs fed-full"] == "100 %"
    # Per turn and per client per round, both.
    assert blocks["cybgd"]["MB up / turn"] == "14.2"  # the run's own per-turn figure
    assert blocks["cybgd"]["MB up / client / round"] == "6.0"
    assert blocks["full"]["MB up / turn"] == "500.0"
    assert blocks["full"]["MB up / client / round"] == "500.0"
    markdown, page = write_report(folder)
    assert "## CG-FedLLM autoencoders" in markdown.read_text()
    assert "<h2>Block-wise and full-parameter costs per client turn</h2>" in page.read_text()


def test_markdown_and_self_contained_html(folder):
    markdown, page = write_report(folder)
    md = markdown.read_text()
    assert "| variant | method | codec (up / down) | accuracy % |" in md
    assert "| lora-int8 | lora-fedavg | int8 / none | 80.00 |" in md
    assert "`crashed` failed: RuntimeError: boom" in md
    assert "full eval split (872 examples); the curves use the per-round eval subset (100" in md
    for name in ("curves.png", "tradeoff.png", "costs.png"):
        assert f"]({name})" in md and (folder / name).stat().st_size > 10_000
    html = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert not re.search(r'(src|href)="(https?:|//|[^"#d])', html)  # no external assets
    summary = html[html.index('id="summary"') : html.index("</table>")]
    assert summary.count("<tr>") == 1 + 6  # header + one row per finished variant


def test_runs_without_accuracy_or_compare_json(tmp_path):
    """An Alpaca-like compare (loss only), rebuilt from the run folders alone."""
    fake_run(tmp_path / "a", "lora-fedavg", MB, accuracy=None)
    fake_run(tmp_path / "b", "centralized", 0, accuracy=None)
    markdown, _ = write_report(tmp_path)
    md = markdown.read_text()
    assert "| a | lora-fedavg | none / none | n/a | 0.8000 |" in md
    assert (tmp_path / "tradeoff.png").is_file()


def test_an_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(FedpressError, match="holds no runs"):
        write_report(tmp_path)


def test_names_in_the_page_are_escaped(tmp_path):
    """The page is a Jinja2 template with autoescape: a variant name is text, not markup."""
    fake_run(tmp_path / "<script>x", "lora-fedavg", MB)
    entries = [
        {"name": "<script>x", "status": "done", "overrides": {"note": "<b>"}},
        {"name": "<img src=y>", "status": "failed", "error": "<i>boom</i>"},
    ]
    (tmp_path / "compare.json").write_text(
        json.dumps({"title": "<T>", "description": "a & b", "variants": entries})
    )
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert "<script" not in html and "<img src=y" not in html and "<i>" not in html
    assert "<title>&lt;T&gt;</title>" in html and "<p>a &amp; b</p>" in html
    assert "<td>&lt;script&gt;x</td>" in html  # the summary row
    assert "<li><code>&lt;img src=y&gt;</code> failed: &lt;i&gt;boom&lt;/i&gt;</li>" in html
    assert "<code>&lt;script&gt;x</code> (done): note = &#34;&lt;b&gt;&#34;" in html


def test_a_method_brings_its_table_and_can_be_the_reference(tmp_path, monkeypatch):
    """Tables and the default reference come from the registry, not from this module."""
    registry.all_methods()  # the built-in methods first: the new one is registered last

    def tables(results, reference):
        rows = [{"variant": r.name, "reference": reference.name} for r in results if r.finished]
        return [("My table", "About mine.", rows), ("Empty", "Left out.", [])]

    mine = registry.Method(
        name="my-method",
        about="a method registered after the report was written",
        local=lambda config, out, resume: {},
        report_tables=tables,
        reference=True,
    )
    monkeypatch.setitem(registry._METHODS, mine.name, mine)
    fake_run(tmp_path / "a-mine", "my-method", 2 * MB)
    fake_run(tmp_path / "lora", "lora-fedavg", 4 * MB)
    header, results = load_results(tmp_path)
    reference = reference_of(header, results)
    assert reference is not None and reference.name == "a-mine"  # the first such run, in order
    assert detail_tables(results, reference) == [
        (
            "My table",
            "About mine.",
            [
                {"variant": "a-mine", "reference": "a-mine"},
                {"variant": "lora", "reference": "a-mine"},
            ],
        )
    ]
    rows = {row["variant"]: row for row in summary_rows(header, results)}
    assert rows["a-mine"]["uplink ratio"] == "1x (ref)" and rows["lora"]["uplink ratio"] == "1/2x"
    markdown, page = write_report(tmp_path)
    assert "## My table" in markdown.read_text() and "## Empty" not in markdown.read_text()
    assert "<h2>My table</h2>" in page.read_text()
    # Named in the matrix, the reference is that variant whatever its method.
    assert reference_of({"reference": "lora"}, results).name == "lora"


def test_the_report_and_the_method_tables_do_not_import_torch(folder):
    """Reports are written where no training stack is installed or wanted (a laptop)."""
    code = (
        "import sys; from fedpress.compare_report import detail_tables, load_results, "
        "reference_of\n"
        f"header, results = load_results({str(folder)!r})\n"
        "tables = detail_tables(results, reference_of(header, results))\n"
        "assert len(tables) == 2, tables\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
