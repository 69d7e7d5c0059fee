"""`fedpress` command line. User mistakes end in one line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from fedpress.console import add_config_arguments, quiet
from fedpress.errors import FedpressError
from fedpress.registry import Command, Lazy


def main(argv: list[str] | None = None) -> int:
    from fedpress import registry

    parser = argparse.ArgumentParser(prog="fedpress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    method_commands = [c for m in registry.all_methods() for c in m.commands]
    for command in (*COMMANDS, *method_commands):
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    runs = {c.name: c.run for c in (*COMMANDS, *method_commands)}
    args = parser.parse_args(argv)
    try:
        return runs[args.command](args)
    except FedpressError as exc:
        # One line whatever the message quotes (a key or value may hold a line break).
        one_line = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"fedpress: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpress: interrupted", file=sys.stderr)
        return 130


def _run_arguments(run: argparse.ArgumentParser) -> None:
    add_config_arguments(run)
    run.add_argument("--out", help="output folder (default: runs/<method>-<time>)")
    run.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last complete round"
    )
    run.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")


def _methods(args: argparse.Namespace) -> int:
    from fedpress import registry

    for method in registry.all_methods():
        kind = "federated" if method.federated else "local"
        print(f"{method.name:20s} {kind:9s}  {method.about}")
        print(f"{'':32s}reads: {', '.join(method.reads) or '(shared keys only)'}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from fedpress.config import load_config

    print(load_config(args.config, args.overrides).to_toml(), end="")
    return 0


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
    from fedpress import lean_imports

    lean_imports.skip_bitsandbytes(config.runtime.quantize)  # not in main() called by a program
    from fedpress.runner import preflight, run_config

    preflight(config)
    summary = run_config(config, out_dir, resume=bool(args.resume), verbose=args.verbose)
    from fedpress.run_files import format_summary_table

    print(format_summary_table(summary))
    return 0


def _compare_arguments(compare: argparse.ArgumentParser) -> None:
    compare.add_argument("matrix", help="matrix TOML: [base] config plus [[variant]] overrides")
    compare.add_argument("--out", help="compare folder (default: runs/<matrix name>)")
    compare.add_argument(
        "--move-aside",
        action="store_true",
        help="rename variant folders that hold a different config instead of stopping",
    )
    compare.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")


def _eval_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("target", help="run folder, or model alias / Hugging Face id / path")
    evaluate.add_argument(
        "--tasks",
        help="run lm-evaluation-harness instead of the built-in MMLU scorer: comma-separated "
        "tasks, each fedpress's own (mmlu, sst2, gsm8k, perplexity: reads --data, or "
        "name=<path>), a task YAML, or a harness task name",
    )
    evaluate.add_argument(
        "--data", help="MMLU-layout CSV file or folder (with --tasks: the shipped task's file)"
    )
    evaluate.add_argument("--dev", help="dev folder the k-shot examples come from")
    evaluate.add_argument(
        "--shots", type=int, default=0, help="dev examples per MMLU subject (k-shot; other tasks 0)"
    )
    evaluate.add_argument("--limit", type=int, default=0, help="questions per subject (0 = all)")
    evaluate.add_argument("--max-length", type=int, default=1024, help="tokens per prompt")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument(
        "--out",
        help="JSON result (default: <run>/mcq-<k>shot.json, with --tasks "
        "<run>/lm-eval-<tasks>-<k>shot.json and its .samples.jsonl)",
    )


def _export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("run_folder")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--merge", action="store_true", help="LoRA merged into the base (default)")
    mode.add_argument("--adapter", action="store_true", help="a PEFT adapter folder")
    export.add_argument("--out", required=True, help="folder to write")


def _deploy_local_arguments(local: argparse.ArgumentParser) -> None:
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
    quiet()
    if args.tasks:
        from fedpress.harness import run_harness

        evaluate = functools.partial(run_harness, tasks=args.tasks)
    else:
        from fedpress.mcq_eval import run_mcq_eval

        if not args.data:
            raise FedpressError("--data is needed (or --tasks, to run lm-evaluation-harness)")
        evaluate = run_mcq_eval
    evaluate(
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


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _folder_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder")


# The core's commands; a method adds its own through `registry.Method.commands`.
COMMANDS = (
    Command("run", "run one federated (or centralized) fine-tuning job", _run_arguments, _run),
    Command("config", "print the resolved config as TOML", add_config_arguments, _config),
    Command(
        "methods", "list the methods and the config keys each one reads", _no_arguments, _methods
    ),
    Command(
        "compare", "run a matrix of configs and report them together", _compare_arguments, _compare
    ),
    Command(
        "report", "rebuild report.md / report.html of a compare folder", _folder_argument, _report
    ),
    Command(
        "eval",
        "MMLU accuracy (built-in), or any lm-evaluation-harness task (--tasks)",
        _eval_arguments,
        _eval,
    ),
    Command(
        "plan",
        "bytes and client memory of a run, before running it (any model size, no weights)",
        Lazy("fedpress.plan:add_arguments"),
        Lazy("fedpress.plan:run"),
    ),
    Command("export", "the tuned model as a Hugging Face folder", _export_arguments, _export),
    Command(
        "deploy-local",
        "try the deployment engine on this machine: SuperLink + one SuperNode per client",
        _deploy_local_arguments,
        _deploy_local,
    ),
)


if __name__ == "__main__":
    sys.exit(main())
