"""benchmarks/converged.py's reading of run folders: bytes to target, TGAP kept apart, seeds
aggregated, runs that did not finish listed as not run (never filled in)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import converged  # noqa: E402 - a script in benchmarks/, not a package


def write_run(
    folder: Path,
    method: str,
    accuracies: list[float],
    up_per_round: int,
    *,
    tgap_up: int = 0,
    peak: int = 1000,
    wall: float = 10.0,
    extra: dict | None = None,
) -> None:
    folder.mkdir(parents=True)
    connect = 3  # round 0's connection query, beside TGAP's snapshots
    cum = cum_down = 0
    lines = []
    for round_index, accuracy in enumerate(accuracies):
        up = up_per_round if round_index else tgap_up + connect
        down = 5 * up_per_round if round_index else 11
        cum, cum_down = cum + up, cum_down + down
        lines.append(
            json.dumps(
                {
                    "round": round_index,
                    "accuracy": accuracy,
                    "eval_loss": 1.0 - accuracy,
                    "bytes_up": up,
                    "bytes_down": down,
                    "cum_bytes_up": cum,
                    "cum_bytes_down": cum_down,
                    "clients_ok": 2 if round_index else 0,
                }
            )
        )
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = {"uplink_codec": "none", "train": {"local_steps": 2}, "autoencoder": {}}
    if method == "cg-fedllm":
        config["autoencoder"] = {"arch": "resnet3", "compression": 64}
    summary = {
        "config": config,
        "method": method,
        "rounds": len(accuracies) - 1,
        "final_accuracy": accuracies[-1],
        "final_eval_loss": 1.0 - accuracies[-1],
        "bytes_up_total": cum,
        "bytes_down_total": cum_down,
        "client_peak_mem_bytes": peak,
        "wall_s": wall,
    }
    if tgap_up:
        summary.update(tgap_in_run=True, tgap_bytes_up=tgap_up, tgap_bytes_down=7)
    summary.update(extra or {})
    (folder / "summary.json").write_text(json.dumps(summary))


RAW = {
    "title": "t",
    "reference": "ref",
    "variant": [{"name": "ref"}, {"name": "cg"}, {"name": "never"}],
}


def test_summary_of_seeds_target_tgap_and_unrun(tmp_path: Path) -> None:
    write_run(tmp_path / "seed-0" / "ref", "lora-fedavg", [0.7, 0.80, 0.86, 0.90], 100)
    write_run(tmp_path / "seed-1" / "ref", "lora-fedavg", [0.7, 0.84, 0.885, 0.88], 100)
    # Reaches 0.9 >= 0.89 (ref seed 0's final 0.90 less 1 point) in round 3, after 3 x 10 bytes.
    write_run(tmp_path / "seed-0" / "cg", "cg-fedllm", [0.9, 0.5, 0.6, 0.9], 10, tgap_up=500)
    (tmp_path / "seed-1" / "cg").mkdir(parents=True)
    (tmp_path / "seed-1" / "cg" / "error.log").write_text("boom")
    statuses = [{"name": "ref", "status": "done"}, {"name": "cg", "status": "failed"}]
    (tmp_path / "seed-1" / "compare.json").write_text(json.dumps({"variants": statuses}))

    rows = converged.collect(RAW, [0, 1], tmp_path)
    by = {(r["variant"], r["seed"]): r for r in rows}
    cg = by[("cg", 0)]
    assert cg["bytes_up_total"] == 30  # TGAP's 500 and the connection's 3 apart
    assert cg["bytes_down_total"] == 150 and cg["client_steps"] == 3 * 2 * 2
    assert cg["tgap_bytes_up"] == 500
    assert [p["cum_bytes_up"] for p in cg["curve"]] == [0, 10, 20, 30]
    assert by[("cg", 1)]["status"] == "failed"
    assert by[("never", 0)]["status"] == "not run"

    table = converged.summarize(RAW, rows, [0, 1], points=1.0, percent=1.0)
    # Paired: each seed against the reference run of the same seed (its final - 1 point).
    assert table["targets"]["0"]["accuracy"] == pytest.approx(0.89)
    assert table["targets"]["1"]["accuracy"] == pytest.approx(0.87)
    assert table["accuracy_target_met_untuned"] == []  # round 0 (0.7) is below both
    variants = {v["variant"]: v for v in table["variants"]}
    ref, cg_row = variants["ref"], variants["cg"]
    assert ref["final_accuracy"] == pytest.approx((0.89, 0.0141421356))
    # ref seed 0 reaches 0.89 in round 3 (300 bytes), seed 1 0.87 in round 2 (200 bytes).
    assert ref["bytes_up_to_target"] == pytest.approx((250.0, 70.7106781))
    assert cg_row["bytes_up_to_target"] == (pytest.approx(30.0), None)  # one seed: no spread
    # Loss target: the same seed's reference final eval loss + 1 %.
    assert table["loss_targets"]["1"]["eval_loss"] == pytest.approx(0.1212)
    assert ref["bytes_up_to_loss_target"] == pytest.approx((250.0, 70.7106781))
    assert cg_row["bytes_up_to_loss_target"] == (pytest.approx(30.0), None)
    assert cg_row["to_target_saving_x"] == pytest.approx(250 / 30)
    assert cg_row["uplink_saving_x"] == pytest.approx(300 / 30)
    assert cg_row["uplink_saving_with_tgap_x"] == pytest.approx(300 / 530)
    assert cg_row["seeds_done"] == [0] and cg_row["not_run"] == [1]
    assert variants["never"]["seeds_done"] == [] and variants["never"]["not_run"] == [0, 1]
    # The round-0 accuracy (0.9, untuned) never counts as reaching the target.
    assert converged.bytes_to_target({"curve": cg["curve"][:2]}, table["targets"]["0"]) is None

    table["command"] = "x"
    text = converged.markdown(table)
    assert "| never | not run |" in text
    assert "0 (not run: 1)" in text
    assert "(1 seed)" in text and "seed 1: accuracy >= 87 %, eval loss <= 0.1212" in text


def test_loss_target_when_there_is_no_accuracy() -> None:
    curve = [
        {"round": 0, "accuracy": None, "eval_loss": 3.0, "cum_bytes_up": 0},
        {"round": 1, "accuracy": None, "eval_loss": 2.05, "cum_bytes_up": 10},
        {"round": 2, "accuracy": None, "eval_loss": 2.01, "cum_bytes_up": 20},
    ]
    assert converged.bytes_to_target({"curve": curve}, {"eval_loss": 2.02}) == 20
    assert converged.bytes_to_target({"curve": curve}, {"eval_loss": 2.0}) is None
    assert converged.bytes_to_target({"curve": curve}, None) is None


def test_fedcybgd_targets_against_fed_full(tmp_path: Path) -> None:
    raw = {"title": "t", "variant": [{"name": "full"}, {"name": "cy"}, {"name": "cy-big"}]}
    for seed in (0, 1):
        # Eval loss is 1 - accuracy in these runs: fed-full ends at 0.2, cy at 0.1.
        write_run(tmp_path / f"seed-{seed}" / "full", "fed-full", [0.5, 0.7, 0.8], 9, peak=1000)
        turns = {"download_bytes_per_turn": {"later_share_of_full_model": 0.05 + seed / 100}}
        write_run(
            tmp_path / f"seed-{seed}" / "cy", "fedcybgd", [0.5, 0.8, 0.9], 1, peak=300, extra=turns
        )
    big = {"download_bytes_per_turn": {"later_share_of_full_model": 0.6}}
    write_run(tmp_path / "seed-0" / "cy-big", "fedcybgd", [0.5, 0.6, 0.7], 1, peak=500, extra=big)

    rows = converged.collect(raw, [0, 1], tmp_path)
    table = converged.summarize(raw, rows, [0, 1], points=1.0, percent=1.0)
    variants = {v["variant"]: v for v in table["variants"]}
    cy, big_row = variants["cy"], variants["cy-big"]
    assert cy["mem_vs_fed_full"] == pytest.approx(0.3)
    assert cy["download_later_share"][0] == pytest.approx(0.055)
    assert [x["relative"] for x in cy["eval_loss_vs_fed_full"]] == pytest.approx([-0.5, -0.5])
    assert big_row["eval_loss_vs_fed_full"][0]["relative"] == pytest.approx(0.5)
    table["command"] = "x"
    text = converged.markdown(table)
    met = "seed 0: 0.1000 vs 0.2000, -50.0 % met; seed 1: 0.1000 vs 0.2000, -50.0 % met |"
    assert f"| cy | 8 (8) | 30 % met | 6 % met | {met}" in text
    assert "| cy-big | 8 (8) | 50 % MISSED | 60 % MISSED | seed 0: 0.3000 vs 0.2000" in text
    assert "+50.0 % MISSED" in text
    assert "not reached" not in text  # no reference run: no target to reach


def test_recorded_runs_stay_until_a_run_folder_replaces_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path / "seed-0" / "ref", "lora-fedavg", [0.7, 0.8, 0.9], 100)
    write_run(tmp_path / "seed-0" / "cg", "cg-fedllm", [0.7, 0.8, 0.85], 10)
    rows = converged.collect(RAW, [0], tmp_path)
    table = converged.summarize(RAW, rows, [0], points=1.0, percent=1.0)
    results = tmp_path / "results"
    results.mkdir()
    (results / "converged.json").write_text(json.dumps({"m": table}))
    monkeypatch.setattr(converged, "RESULTS", results)

    # The run folders are gone; cg of seed 0 has been run again and ends elsewhere.
    later = tmp_path / "later"
    write_run(later / "seed-0" / "cg", "cg-fedllm", [0.7, 0.8, 0.6], 10)
    recorded = converged.recorded_runs("m")
    assert set(recorded) == {("ref", 0), ("cg", 0)}
    rows = converged.collect(RAW, [0, 1], later, recorded)
    by = {(r["variant"], r["seed"]): r for r in rows}
    assert by[("ref", 0)]["recorded"] and by[("ref", 0)]["final_accuracy"] == 0.9
    assert not by[("cg", 0)].get("recorded") and by[("cg", 0)]["final_accuracy"] == 0.6
    assert by[("never", 0)]["status"] == "not run" and by[("ref", 1)]["status"] == "not run"
    table = converged.summarize(RAW, rows, [0, 1], points=1.0, percent=1.0)
    assert table["recorded"] == ["ref/seed-0"]
    assert table["targets"]["0"]["accuracy"] == pytest.approx(0.89)  # from the recorded curve
    table["command"] = "x"
    assert "earlier invocation recorded them: ref/seed-0." in converged.markdown(table)
    assert converged.recorded_runs("absent") == {}


def test_runs_of_other_invocations_are_read_although_compare_json_lists_only_its_own(
    tmp_path: Path,
) -> None:
    write_run(tmp_path / "seed-0" / "ref", "lora-fedavg", [0.7, 0.8, 0.9], 100)
    write_run(tmp_path / "seed-0" / "cg", "cg-fedllm", [0.7, 0.8, 0.85], 10)
    statuses = [{"name": "cg", "status": "done"}]  # the later `--variants cg` invocation
    (tmp_path / "seed-0" / "compare.json").write_text(json.dumps({"variants": statuses}))
    rows = converged.collect(RAW, [0], tmp_path)
    by = {r["variant"]: r for r in rows}
    assert by["ref"]["status"] == "done" and by["ref"]["final_accuracy"] == 0.9
    assert not by["ref"].get("recorded") and by["never"]["status"] == "not run"
