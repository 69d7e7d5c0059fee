"""`fedpress compare`: run a matrix of configs one after another and report them side by side.

A matrix file is a base config plus variants, each a name and the keys it overrides:

    title = "SST-2: codecs"            # optional
    reference = "lora"                 # optional: the variant compression ratios refer to

    [base]                             # any run-config keys (as in `fedpress run` files)
    model = "smollm2-135m"
    data.source = "../shared/data/sst2/train.tsv"

    [[variant]]
    name = "lora"
    method = "lora-fedavg"

    [[variant]]
    name = "lora-int8"
    uplink_codec = "int8"
    codec = { int8.block_size = 128 }  # nested tables and dotted keys both work

Each variant runs in `<out>/<name>/` through `runner.run_config`, so every method `fedpress
run` knows works here too. A compare can be repeated: finished variants (summary.json
present and its config equal to the variant's) are skipped, an interrupted one resumes from
its checkpoint, and a folder that holds a different config is never reused silently.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedpress import registry
from fedpress.config import (
    RunConfig,
    _build,
    _set_dotted,
    covers,
    flatten,
    load_config,
    read_toml,
)
from fedpress.errors import FedpressError

STATUS_FILE = "compare.json"
MATRIX_COPY = "matrix.toml"
TOP_LEVEL_KEYS = {"title", "description", "reference", "base", "variant"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,79}$")


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted key -> value, as written in the matrix
    config: RunConfig  # base + overrides, validated


@dataclass
class Matrix:
    title: str
    description: str
    reference: str  # variant name, or "" to pick the uncompressed LoRA-FedAvg one
    variants: list[Variant] = field(default_factory=list)


COMPARE_FOLDER = "{compare}"  # in a string value: the compare folder (e.g. shared TGAP snapshots)


def resolve(
    base: dict[str, Any], overrides: dict[str, Any], compare_dir: Path | None = None
) -> dict[str, Any]:
    """The raw config of one variant: the base (less the keys the variant's method does not
    read: a base is shared by variants of several methods) with the variant's dotted keys set
    on it, and "{compare}" in string values replaced by the compare folder."""
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    method = str(raw.get("method", "lora-fedavg"))
    if method in registry.names():  # an unknown one fails validation, with a suggestion
        reads = registry.get(method).keys_read(_build(RunConfig, raw, ""))
        raw = _only_read(copy.deepcopy(base), reads)
    else:
        raw = copy.deepcopy(base)
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    return _fill_compare_folder(raw, compare_dir) if compare_dir is not None else raw


def _only_read(table: dict[str, Any], reads: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if covers(reads, dotted):
            kept[key] = value
        elif isinstance(value, dict) and any(r.startswith(dotted + ".") for r in reads):
            kept[key] = _only_read(value, reads, dotted + ".")
    return kept


def _fill_compare_folder(value: Any, compare_dir: Path) -> Any:
    if isinstance(value, dict):
        return {k: _fill_compare_folder(v, compare_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_compare_folder(v, compare_dir) for v in value]
    if isinstance(value, str):
        return value.replace(COMPARE_FOLDER, str(compare_dir))
    return value


def read_matrix(path: str | Path) -> tuple[dict[str, str], dict[str, Any], list[tuple[str, dict]]]:
    """The matrix file's header, base table and (name, dotted overrides) per variant, checked
    for shape only (`load_matrix` validates the configs)."""
    path = Path(path)
    raw = read_toml(path, "matrix file")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise FedpressError(
            f"{path}: unknown top-level key '{unknown[0]}'; a matrix has "
            f"{', '.join(sorted(TOP_LEVEL_KEYS))} (run-config keys go under [base] or a variant)"
        )
    base = raw.get("base", {})
    entries = raw.get("variant", [])
    if not isinstance(base, dict):
        raise FedpressError(f"{path}: 'base' must be a table")
    if not isinstance(entries, list) or not entries:
        raise FedpressError(f"{path}: no variants (add [[variant]] tables with a name)")
    header = {k: str(raw.get(k, "")) for k in ("title", "description", "reference")}
    header["title"] = header["title"] or path.stem
    variants: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise FedpressError(f"{path}: variant {index} must be a table")
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise FedpressError(
                f"{path}: variant {index} needs a 'name' of letters, digits, '.', '_', '+', '-' "
                f"(it names the variant's folder), got {name!r}"
            )
        if name in {n for n, _ in variants}:
            raise FedpressError(f"{path}: variant name '{name}' is used twice")
        variants.append((name, flatten(entry)))
    if header["reference"] and header["reference"] not in {n for n, _ in variants}:
        raise FedpressError(f"{path}: reference '{header['reference']}' is not a variant name")
    return header, base, variants


def load_matrix(path: str | Path, compare_dir: Path | None = None) -> Matrix:
    """Parse and validate every variant's config, so a typo fails before anything runs."""
    header, base, entries = read_matrix(path)
    matrix = Matrix(header["title"], header["description"], header["reference"])
    for name, overrides in entries:
        try:
            config = RunConfig.from_dict(resolve(base, overrides, compare_dir))
        except FedpressError as exc:
            raise FedpressError(f"{path}: variant '{name}': {exc}") from None
        matrix.variants.append(Variant(name, overrides, config))
    return matrix


# --- what a variant folder holds -------------------------------------------------------------


def saved_config(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """The config a run folder was made with (defaults filled in), or None and why not."""
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            raw = json.loads(summary.read_text())["config"]
            return RunConfig.from_dict(raw).to_dict(), ""
        except (ValueError, KeyError, TypeError, FedpressError) as exc:
            return None, f"its summary.json has no readable config ({exc})"
    if (folder / "config.toml").is_file():
        try:
            return load_config(folder / "config.toml").to_dict(), ""
        except FedpressError as exc:
            return None, f"its config.toml is not a valid config ({exc})"
    return None, "it is not a fedpress run folder (no config.toml)"


def config_diff(saved: dict[str, Any], wanted: dict[str, Any], limit: int = 4) -> str:
    a, b = flatten(saved), flatten(wanted)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more


def folder_state(folder: Path, config: RunConfig) -> tuple[str, str]:
    """("new" | "done" | "resume" | "restart" | "conflict", why)."""
    if not folder.exists() or not any(folder.iterdir()):
        return "new", ""
    saved, why = saved_config(folder)
    if saved is None:
        return "conflict", why
    if saved != config.to_dict():
        return (
            "conflict",
            f"it holds a run of a different config ({config_diff(saved, config.to_dict())})",
        )
    if (folder / "summary.json").is_file():
        return "done", ""
    from fedpress.checkpoint import CHECKPOINT  # here: it imports torch

    if (folder / CHECKPOINT).is_file():
        return "resume", ""
    return "restart", ""  # started, but no round completed: nothing to keep


# --- running ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"{exc.__class__.__name__}: {text}" if not isinstance(exc, FedpressError) else text
    return line[:400]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def run_matrix(
    matrix_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    move_aside: bool = False,
    verbose: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """Run every variant of the matrix into `out_dir` (default runs/<matrix name>); the status.

    Nothing runs unless every variant's config is valid, its data and model can be found, and
    its folder is new, finished, resumable or (with `move_aside`) renamed out of the way.
    """
    from fedpress.runner import preflight, run_config

    matrix_path = Path(matrix_path)
    if (
        out_dir is None
        and matrix_path.name == MATRIX_COPY
        and (matrix_path.parent / STATUS_FILE).is_file()
    ):
        out_dir = matrix_path.parent  # `fedpress compare runs/x/matrix.toml` continues runs/x
    out = Path(out_dir or Path("runs") / matrix_path.stem)
    matrix = load_matrix(matrix_path, out)
    states = {v.name: folder_state(out / v.name, v.config)[0] for v in matrix.variants}
    for variant in matrix.variants:
        if states[variant.name] == "conflict" and not move_aside:
            why = folder_state(out / variant.name, variant.config)[1]
            raise FedpressError(
                f"variant '{variant.name}': {out / variant.name} cannot be reused: {why}. "
                "Delete or rename it, choose another --out, or pass --move-aside"
            )
    checked: set[str] = set()
    for variant in matrix.variants:
        c = variant.config
        key = json.dumps([c.model, c.to_dict()["data"], c.num_clients, c.seed], sort_keys=True)
        if key not in checked and states[variant.name] != "done":
            try:
                preflight(c)
            except FedpressError as exc:
                raise FedpressError(f"variant '{variant.name}': {exc}") from None
            checked.add(key)
    for name, state in states.items():
        if state == "conflict":  # only with move_aside, and only once all checks passed
            folder = out / name
            aside = folder.with_name(f"{name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            tqdm.write(f"moved {folder} aside to {aside}")
            states[name] = "new"

    out.mkdir(parents=True, exist_ok=True)
    (out / MATRIX_COPY).write_text(matrix_path.read_text())
    status: dict[str, Any] = {
        "title": matrix.title,
        "description": matrix.description,
        "reference": matrix.reference,
        "matrix": str(matrix_path),
        "variants": [
            {"name": v.name, "status": "pending", "error": "", "overrides": v.overrides}
            for v in matrix.variants
        ],
    }
    _write_json(out / STATUS_FILE, status)
    bar = tqdm(matrix.variants, desc="compare", unit="variant", position=0, dynamic_ncols=True)
    for variant, entry in zip(bar, status["variants"], strict=True):
        state = states[variant.name]
        folder = out / variant.name
        bar.set_postfix_str(variant.name)
        if state == "done":
            entry["status"] = "skipped"
            _write_json(out / STATUS_FILE, status)
            tqdm.write(f"{variant.name}: finished before with this config, skipped")
            continue
        tqdm.write(
            f"{variant.name}: {'resuming from its checkpoint' if state == 'resume' else 'running'}"
        )
        entry["status"] = "running"
        _write_json(out / STATUS_FILE, status)
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.log").unlink(missing_ok=True)  # from an earlier failed attempt
        if not (folder / "config.toml").is_file():
            # Marks the folder as this variant's even if the run fails before writing anything.
            variant.config.save(folder / "config.toml")
        try:
            run_config(variant.config, folder, resume=state == "resume", verbose=verbose)
            entry["status"] = "done"
        except KeyboardInterrupt:
            entry["status"] = "interrupted"
            _write_json(out / STATUS_FILE, status)
            raise
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the others
            entry["status"] = "failed"
            entry["error"] = _one_line(exc)
            (folder / "error.log").write_text(traceback.format_exc())
            tqdm.write(f"{variant.name}: FAILED: {entry['error']} (traceback in error.log)")
        entry["wall_s"] = time.perf_counter() - started
        _write_json(out / STATUS_FILE, status)
        if report:
            _report(out)
    bar.close()
    if report:
        paths = _report(out)
        tqdm.write(f"report: {paths[0]} and {paths[1]}")
    return status


def _report(out: Path) -> tuple[Path, Path]:
    from fedpress.compare_report import write_report

    return write_report(out)
