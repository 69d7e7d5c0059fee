"""`fedpress` command line. User mistakes end in one line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from fedpress.errors import FedpressError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedpress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated (or centralized) fine-tuning job")
    run.add_argument("config", nargs="?", help="TOML config (default: the built-in demo)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model=tiny-llama --set train.lr=1e-3",
    )
    run.add_argument("--out", help="output folder (default: runs/<method>-<time>)")
    run.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last complete round"
    )
    run.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    show = sub.add_parser("config", help="print the resolved config as TOML")
    show.add_argument("config", nargs="?")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("methods", help="list the methods and the config keys each one reads")
    _add_report_commands(sub)
    tgap = sub.add_parser("tgap", help="CG-FedLLM pre-training alone: collect snapshots, train")
    tgap.add_argument("config", nargs="?")
    tgap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tgap.add_argument("--out", help="output folder (default: runs/tgap-<time>)")
    tgap.add_argument("--snapshots", help="train on these saved snapshots instead of collecting")
    tgap.add_argument("--verbose", action="store_true")
    analyze = sub.add_parser("ae-analyze", help="SNR and noise robustness of a trained autoencoder")
    analyze.add_argument("folder", help="folder with autoencoder.safetensors/.json")
    analyze.add_argument("--snapshots", help="snapshots file (default: the folder's)")
    analyze.add_argument("--sigmas", default="5e-5,5e-4,5e-3,5e-2,5e-1")
    args = parser.parse_args(argv)
    try:
        if args.command in ("tgap", "ae-analyze"):
            from fedpress.methods.cg_fedllm.cli import main as ae_main

            return ae_main(args)
        if args.command == "methods":
            from fedpress import registry

            for method in registry.all_methods():
                kind = "federated" if method.federated else "local"
                print(f"{method.name:20s} {kind:9s}  {method.about}")
                print(f"{'':32s}reads: {', '.join(method.reads) or '(shared keys only)'}")
            return 0
        if args.command == "config":
            from fedpress.config import load_config

            print(load_config(args.config, args.overrides).to_toml(), end="")
            return 0
        if args.command in REPORT_COMMANDS:
            return REPORT_COMMANDS[args.command](args)
        return _run(args)
    except FedpressError as exc:
        # One line whatever the message quotes (a key or value may hold a line break).
        one_line = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"fedpress: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpress: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from fedpress.config import load_config

    if args.resume:
        if args.config or args.overrides or args.out:
            raise FedpressError("--resume takes the run folder only: its config.toml is the run")
        out_dir = Path(args.resume)
        config = load_config(out_dir / "config.toml")
    else:
        config = load_config(args.config, args.overrides)
        out_dir = Path(args.out or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    quiet(args.verbose)
    from fedpress.runner import preflight, run_config

    preflight(config)
    summary = run_config(config, out_dir, resume=bool(args.resume), verbose=args.verbose)
    from fedpress.run_files import format_summary_table

    print(format_summary_table(summary))
    return 0


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    """compare, report, eval, export: working with finished runs."""
    compare = sub.add_parser("compare", help="run a matrix of configs and report them together")
    compare.add_argument("matrix", help="matrix TOML: [base] config plus [[variant]] overrides")
    compare.add_argument("--out", help="compare folder (default: runs/<matrix name>)")
    compare.add_argument(
        "--move-aside",
        action="store_true",
        help="rename variant folders that hold a different config instead of stopping",
    )
    compare.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    report = sub.add_parser("report", help="rebuild report.md / report.html of a compare folder")
    report.add_argument("folder")
    evaluate = sub.add_parser("eval", help="multiple-choice accuracy on MMLU-layout CSVs")
    evaluate.add_argument("target", help="run folder, or model alias / Hugging Face id / path")
    evaluate.add_argument("--data", required=True, help="MMLU-layout CSV file or folder")
    evaluate.add_argument("--dev", help="dev folder the k-shot examples come from")
    evaluate.add_argument("--shots", type=int, default=0, help="examples per subject (k-shot)")
    evaluate.add_argument("--limit", type=int, default=0, help="questions per subject (0 = all)")
    evaluate.add_argument("--max-length", type=int, default=1024, help="tokens per prompt")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--out", help="JSON result (default: <run>/mcq-<k>shot.json)")
    export = sub.add_parser("export", help="the tuned model as a Hugging Face folder")
    export.add_argument("run_folder")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--merge", action="store_true", help="LoRA merged into the base (default)")
    mode.add_argument("--adapter", action="store_true", help="a PEFT adapter folder")
    export.add_argument("--out", required=True, help="folder to write")
    local = sub.add_parser(
        "deploy-local",
        help="try the deployment engine on this machine: SuperLink + one SuperNode per client",
    )
    local.add_argument("config", help="fedpress run TOML")
    local.add_argument("--out", help="output folder (default: runs/deployed-<time>)")
    local.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    local.add_argument(
        "--node",
        action="append",
        metavar="NODE_CONFIG",
        help="one SuperNode's own data, as its --node-config: 'data-path=\"a.json\"' (optional "
        "data-format, eval-path, model-path); once per node (default: every node keeps part of "
        "the config's data.source)",
    )


def _compare(args: argparse.Namespace) -> int:
    from fedpress.compare import run_matrix

    quiet(args.verbose)
    status = run_matrix(args.matrix, args.out, move_aside=args.move_aside, verbose=args.verbose)
    failed = [v for v in status["variants"] if v["status"] == "failed"]
    for variant in failed:
        print(f"fedpress: variant '{variant['name']}' failed: {variant['error']}", file=sys.stderr)
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from fedpress.compare_report import write_report

    quiet()
    markdown, html = write_report(Path(args.folder))
    print(markdown.read_text())
    print(f"written: {markdown} and {html}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fedpress.mcq_eval import run_mcq_eval

    quiet()
    run_mcq_eval(
        args.target,
        data=args.data,
        dev=args.dev,
        shots=args.shots,
        limit=args.limit,
        max_length=args.max_length,
        batch_size=args.batch_size,
        out=args.out,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedpress.export import export_run

    quiet()
    folder = export_run(Path(args.run_folder), Path(args.out), merge=not args.adapter)
    print(f"exported to {folder}")
    return 0


def _deploy_local(args: argparse.Namespace) -> int:
    from fedpress.config import load_config
    from fedpress.local_deployment import DeploymentError, launch_local_deployment

    config = load_config(args.config)
    out = Path(args.out or f"runs/deployed-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    app = Path(__file__).resolve().parents[2] / "deploy"
    if not (app / "pyproject.toml").is_file():
        raise FedpressError(f"the Flower app bundle is not at {app} (run from a source checkout)")
    node_configs = None
    if args.node:
        from flwr.common.config import parse_config_args

        node_configs = [parse_config_args([text]) for text in args.node]
    try:
        result = launch_local_deployment(
            app,
            Path(args.config).resolve(),
            out,
            num_supernodes=config.num_clients,
            timeout_s=args.timeout,
            echo=True,
            node_configs=node_configs,
        )
    except DeploymentError as exc:
        raise FedpressError(f"local deployment failed: {str(exc).splitlines()[0]}") from None
    print(
        f"{result.status} in {result.elapsed_s:.0f} s; results in {out}, logs in {result.log_dir}"
    )
    return 0


REPORT_COMMANDS = {
    "compare": _compare,
    "report": _report,
    "eval": _eval,
    "export": _export,
    "deploy-local": _deploy_local,
}


def quiet(verbose: bool = False) -> None:
    """Keep the terminal to progress bars, warnings and the result table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    # Flower resets its console handler to INFO when a simulation starts; a logger filter holds.
    logging.getLogger("flwr").addFilter(lambda record: record.levelno >= logging.WARNING)
    if "transformers" in sys.modules:  # imported already: it has read the variables above
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
