"""`fedpress compare`: a real matrix of tiny runs, skipping, resuming, refusing mixed configs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ONE_CORE_SETTINGS, once_per_session
from fedpress.checkpoint import CHECKPOINT, save_checkpoint
from fedpress.compare import load_matrix, run_matrix
from fedpress.errors import FedpressError

BASE = {
    "model": "tiny-llama",
    "num_clients": 2,
    "rounds": 2,
    "seed": 0,
    "data.builtin_size": 200,
    "data.eval_size": 32,
    "train.local_steps": 2,
    "train.batch_size": 4,
    "eval.per_round_examples": 16,
    **ONE_CORE_SETTINGS,
}
CENTRAL = {"name": "central", "method": "centralized"}
FEDAVG = {"name": "fedavg", "method": "lora-fedavg", "uplink_codec": "int8"}
# Valid config, but LoRA finds no such module in the model: fails inside the run.
BROKEN = {"name": "broken", "method": "centralized", "lora.target_modules": ["no_such_proj"]}


def write_matrix(path: Path, variants: list[dict], base: dict | None = None, **header) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in header.items()]
    lines.append("[base]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in (base or BASE).items()]
    for variant in variants:
        lines.append("[[variant]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in variant.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real compare through the CLI, once per session: a centralized and a federated
    variant, and one that fails."""

    def run_compare(root: Path) -> dict:
        matrix = write_matrix(
            root / "tiny.toml", [CENTRAL, FEDAVG, BROKEN], title="tiny matrix", reference="fedavg"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedpress.cli",
                "compare",
                str(matrix),
                "--out",
                str(root / "out"),
            ],
            capture_output=True,
            text=True,
            timeout=900,  # took 135-270 s here at load average 10-25; generous for loaded runners
        )
        return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

    root, result = once_per_session(tmp_path_factory, "compare", run_compare)
    return root / "out", subprocess.CompletedProcess([], **result)


@pytest.mark.slow  # a real Flower simulation (or run)
def test_compare_runs_every_variant_and_records_the_failing_one(compared):
    out, result = compared
    assert result.returncode == 1, result.stderr[-3000:]  # one variant failed
    assert "variant 'broken' failed" in result.stderr
    status = json.loads((out / "compare.json").read_text())
    by_name = {v["name"]: v for v in status["variants"]}
    assert by_name["central"]["status"] == "done" and by_name["fedavg"]["status"] == "done"
    assert by_name["broken"]["status"] == "failed"
    assert "no_such_proj" in by_name["broken"]["error"] and "\n" not in by_name["broken"]["error"]
    assert (out / "broken" / "error.log").is_file()
    for name, method in (("central", "centralized"), ("fedavg", "lora-fedavg")):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["method"] == method
        rounds = (out / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["round"] for r in rounds] == [0, 1, 2]
    assert json.loads((out / "fedavg" / "summary.json").read_text())["bytes_up_total"] > 0
    report = (out / "report.md").read_text()
    assert (
        "| central | centralized |" in report and "| fedavg | lora-fedavg | int8 / none |" in report
    )
    assert "`broken` failed" in report
    assert (out / "report.html").is_file() and (out / "matrix.toml").is_file()


@pytest.mark.slow  # a real Flower simulation (or run)
def test_a_repeated_compare_skips_finished_variants(compared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(compared[0], out)
    before = {n: (out / n / "summary.json").stat().st_mtime_ns for n in ("central", "fedavg")}
    matrix = write_matrix(tmp_path / "m.toml", [CENTRAL, FEDAVG, BROKEN], reference="fedavg")
    status = run_matrix(matrix, out, report=False)
    states = {v["name"]: v["status"] for v in status["variants"]}
    assert states == {"central": "skipped", "fedavg": "skipped", "broken": "failed"}
    saved = json.loads((out / "compare.json").read_text())["variants"]
    assert {v["name"]: v["status"] for v in saved} == states
    after = {n: (out / n / "summary.json").stat().st_mtime_ns for n in ("central", "fedavg")}
    assert after == before


@pytest.mark.slow  # a real Flower simulation (or run)
def test_an_interrupted_variant_resumes_from_its_checkpoint(compared, tmp_path):
    """Rewind a finished run to 'killed after round 1': the compare must continue it, not
    start over (it keeps the round-1 record, marked here, and redoes round 2)."""
    out = tmp_path / "out"
    shutil.copytree(compared[0] / "central", out / "central")
    run = out / "central"
    (run / "summary.json").unlink()
    tensors = load_file(str(run / CHECKPOINT))
    save_checkpoint(run, tensors, {"round": 1, "elapsed_s": 1.0})
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rounds[1]["train_loss"] = 123.0  # a fresh run would overwrite this record
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    status = run_matrix(write_matrix(tmp_path / "m.toml", [CENTRAL]), out, report=False)
    assert status["variants"][0]["status"] == "done"
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumed] == [0, 1, 2]
    assert resumed[1]["train_loss"] == 123.0 and resumed[2]["train_loss"] != 123.0
    assert (run / "summary.json").is_file()


@pytest.mark.slow  # a real Flower simulation (or run)
def test_a_folder_of_another_config_is_refused_or_moved_aside(compared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(compared[0] / "central", out / "central")
    other = {**CENTRAL, "train.lr": 1e-4}
    matrix = write_matrix(tmp_path / "m.toml", [other, {**CENTRAL, "name": "second"}])
    with pytest.raises(FedpressError, match=r"variant 'central'.*train\.lr"):
        run_matrix(matrix, out, report=False)
    assert not (out / "second").exists()  # nothing ran
    assert (out / "central" / "summary.json").is_file()  # nothing lost
    one = write_matrix(tmp_path / "one.toml", [other])
    status = run_matrix(one, out, move_aside=True, report=False)
    assert status["variants"][0]["status"] == "done"
    aside = [p for p in out.iterdir() if p.name.startswith("central.stale-")]
    assert len(aside) == 1 and (aside[0] / "summary.json").is_file()
    saved = json.loads((out / "central" / "summary.json").read_text())
    assert saved["config"]["train"]["lr"] == 1e-4


@pytest.mark.parametrize(
    ("variants", "header", "message"),
    [
        ([CENTRAL, {**FEDAVG, "train.lrr": 0.1}], {}, r"variant 'fedavg'.*'train\.lrr'.*train\.lr"),
        ([CENTRAL, {"name": "x", "method": "nope"}], {}, r"variant 'x'.*method"),
        ([CENTRAL, CENTRAL], {}, "used twice"),
        ([{"name": "a/b"}], {}, "needs a 'name'"),
        ([CENTRAL], {"titel": "x"}, "unknown top-level key 'titel'"),
        ([CENTRAL], {"reference": "fedavg"}, "not a variant name"),
    ],
)
def test_matrix_mistakes_fail_before_anything_runs(tmp_path, variants, header, message):
    matrix = write_matrix(tmp_path / "m.toml", variants, **header)
    with pytest.raises(FedpressError, match=message):
        run_matrix(matrix, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overrides_as_nested_tables_and_dotted_keys_agree(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(
        '[base]\nmodel = "tiny-llama"\n[base.train]\nlr = 0.01\n'
        '[[variant]]\nname = "a"\ntrain = { lr = 0.002, local_steps = 3 }\n'
        '[[variant]]\nname = "b"\n"train.lr" = 0.002\ntrain.local_steps = 3\n'
    )
    a, b = load_matrix(matrix).variants
    assert a.config.to_dict() == b.config.to_dict()
    assert a.config.train.lr == 0.002 and a.config.model == "tiny-llama"


def test_compare_folder_placeholder_points_variants_at_each_other(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(
        '[base]\nmodel = "tiny-llama"\nmethod = "cg-fedllm"\n'
        "[base.data]\nholdout_fraction = 0.3\n"
        '[[variant]]\nname = "first"\n'
        '[[variant]]\nname = "second"\n'
        'autoencoder = { arch = "cnn1d", snapshots_from = "{compare}/first" }\n'
    )
    first, second = load_matrix(matrix, tmp_path / "out").variants
    assert second.config.autoencoder.snapshots_from == f"{tmp_path / 'out'}/first"
    assert first.config.autoencoder.snapshots_from == ""
    assert second.overrides["autoencoder.snapshots_from"] == "{compare}/first"  # as written


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a real Flower simulation (or run)
def test_report_html_renders_in_headless_chromium(compared, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: scripts/test.sh installs Debian's chromium, it failed")
    page = (compared[0] / "report.html").resolve().as_uri()
    dom = chromium(tmp_path / "profile1", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    table = dom.stdout[dom.stdout.index('<table id="summary">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 3  # header, central, fedavg
    assert ">central<" in table and ">fedavg<" in table and ">1x (ref)<" in table
    assert dom.stdout.count('src="data:image/png;base64,') == 3

    shot = tmp_path / "page.png"
    result = chromium(
        tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1300,2600", page
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    # Plot lines and bars are saturated colours; a blank page or broken images have none.
    colourful = sum(1 for r, g, b in image.getdata() if max(r, g, b) - min(r, g, b) > 80)
    assert colourful > 2000, f"only {colourful} coloured pixels: are the plots there?"
