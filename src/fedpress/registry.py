"""The methods fedpress knows, by name: the one place the CLI, the runner, the ServerApp, the
ClientApp, the config loader and the reports learn about a method.

A method is one package under `fedpress.methods` that calls `register(Method(...))` once when
imported (as PEFT's tuners register themselves). Adding a method is adding that package and
its name to `BUILTIN`; nothing else changes.

A package's `__init__` names its heavy parts (server, client handlers: torch, transformers,
peft) as `Lazy("module:function")`, imported on first call, so that the registry, config
validation and every CLI usage error load in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpress.errors import FedpressError

if TYPE_CHECKING:
    from flwr.app import Context, Message

    from fedpress.config import RunConfig

# Keys every method reads; a method declares the rest in `Method.reads`.
SHARED_KEYS = (
    "method",
    "model",
    "num_clients",
    "rounds",
    "seed",
    "data",
    "train",
    "eval",
    "runtime",
    "tracking",
)

# Packages imported on first use; a third-party method registers by being imported.
BUILTIN = (
    "lora_fedavg",
    "ffa_lora",
    "cg_fedllm",
    "fedcybgd",
    "fed_full",
    "fed_sb",
    "fedkseed",
    "centralized",
)

EVALUATE = "evaluate"  # the client phase Flower's evaluate messages go to

ClientHandler = Callable[["Message", "Context", "RunConfig"], "Message"]


@dataclass(frozen=True)
class Command:
    """A `fedpress` subcommand: `add_arguments(parser)` declares its arguments (torch-free,
    it runs for every `fedpress --help`); `run(args)` does the work and returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Lazy:
    """A function named "package.module:function", imported when first called."""

    target: str

    def __post_init__(self) -> None:
        module, _, name = self.target.partition(":")
        if not module or not name:
            raise ValueError(f"Lazy({self.target!r}): give 'package.module:function'")

    def resolve(self) -> Callable[..., Any]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Method:
    """What a method is made of. Exactly one of `server` (federated) and `local` is set."""

    name: str
    # One line for help texts and reports.
    about: str
    # Config keys this method honours beyond SHARED_KEYS: a section ("cybgd") or one key
    # ("federation.fraction_train"). A key of another method set to a non-default value is refused.
    reads: tuple[str, ...] = ()
    # The config section this method brings (name, dataclass), e.g. ("cybgd", CybgdConfig):
    # every config carries it; methods that read it list its name in `reads`.
    section: tuple[str, type] | None = None
    # Federated: builds the server side (fedpress.flower.server.FederatedServer) from
    # (config, out_dir, parallel_clients).
    server: Callable[..., Any] | None = None
    # Federated: what a client builds before its first turn (model, tokenizer), from the run
    # config: started in the background when the node joins, while the server evaluates the
    # untrained model.
    client_task: Callable[[RunConfig], Any] | None = None
    # Federated: the client handlers by phase; "" is the method's ordinary training turn,
    # EVALUATE scores the global model on a node's local held-out data (federated evaluation).
    client: Mapping[str, ClientHandler] = field(default_factory=dict)
    # Local references: run(config, out_dir, resume) -> summary.
    local: Callable[[RunConfig, Path, bool], dict[str, Any]] | None = None
    # Extra checks of the keys it reads (beyond their types), and the keys it reads only in
    # some settings (e.g. fedcybgd reads [lora] only with cybgd.peft).
    validate: Callable[[RunConfig], None] | None = None
    reads_when: Callable[[RunConfig], tuple[str, ...]] | None = None
    # Short description of a finished run's codecs for reports, from its config dict.
    codec_label: Callable[[dict[str, Any]], str] | None = None
    # Its own tables in a compare report, (title, note, rows) each, from (results, reference
    # variant) of fedpress.compare_report: a torch-free Lazy. Asked for every report; it picks
    # its rows (it may show other methods' runs beside its own) and an empty table is left out.
    report_tables: Callable[..., list[tuple[str, str, list[dict[str, str]]]]] | None = None
    # The default reference of a compare whose matrix names none: compression ratios refer to
    # its first finished run with no codec on either link (LoRA-FedAvg's).
    reference: bool = False
    # Keys (dotted) naming files only the server opens (an autoencoder checkpoint): a deployed
    # server sends nodes a placeholder instead of the path.
    server_files: tuple[str, ...] = ()
    # Trains only an adapter over a frozen base, so the base may be loaded in 8 or 4 bits
    # (`runtime.quantize`, QLoRA); methods that train or perturb base weights leave it False.
    quantized_base: bool = False
    # Subcommands of its own (CG-FedLLM's `tgap`), listed by `fedpress --help` beside the core's.
    commands: tuple[Command, ...] = ()
    # `fedpress plan`: (fedpress.plan.Planner) -> fedpress.plan.MethodPlan, the run's messages
    # round by round and its client's memory, from the model on the meta device (a Lazy);
    # None: this method cannot be planned.
    plan: Callable[..., Any] | None = None

    @property
    def federated(self) -> bool:
        return self.server is not None

    def keys_read(self, config: RunConfig) -> tuple[str, ...]:
        extra = self.reads_when(config) if self.reads_when else ()
        return SHARED_KEYS + self.reads + extra


_METHODS: dict[str, Method] = {}
_loaded = False


def register(method: Method) -> Method:
    if (method.server is None) == (method.local is None):
        raise ValueError(f"method {method.name}: give exactly one of server and local")
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"method {method.name} is registered twice")
    _METHODS[method.name] = method
    return method


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in BUILTIN:
            importlib.import_module(f"fedpress.methods.{package}")


def names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_METHODS)


def get(name: str) -> Method:
    _load_builtin()
    if name not in _METHODS:
        raise FedpressError(f"unknown method '{name}'; known: {', '.join(_METHODS)}")
    return _METHODS[name]


def sections() -> list[tuple[str, type]]:
    """The config sections methods bring, in registration order."""
    _load_builtin()
    return [m.section for m in _METHODS.values() if m.section is not None]


def all_methods() -> tuple[Method, ...]:
    _load_builtin()
    return tuple(_METHODS.values())
