"""One TOML file fully describes a run.

`RunConfig` is the single source of truth: the CLI loads a TOML file, applies `--set key=value`
overrides, validates every key (unknown keys are errors, with a suggestion), and saves the
resolved config next to the results so any run can be repeated exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedpress import registry
from fedpress.codecs.registry import CODEC_NAMES, CODECS
from fedpress.errors import FedpressError, check_choice

log = logging.getLogger("fedpress")


@dataclass
class DataConfig:
    # "builtin:parity", a file or folder path, or a Hugging Face dataset id.
    source: str = "builtin:parity"
    # auto | builtin | alpaca | classification | mcq | text
    format: str = "auto"
    # Held-out evaluation data; empty = a split of `source` of size `eval_size`.
    eval_source: str = ""
    # Examples in the eval split (the final figures score all of it; eval.per_round_examples of
    # it after each round). With `eval_source`, a cap on the examples taken from it (a seeded
    # draw, file order kept; 0 = the whole file); without, must be >= 1.
    eval_size: int = 100
    # Cap on training examples read from `source` (0 = all).
    max_train_examples: int = 2000
    # iid | dirichlet (over labels or categories)
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    # Fraction of each client's share set aside (SPEC's D1 for autoencoder pre-training).
    holdout_fraction: float = 0.0
    max_length: int = 128
    # Classification TSV: words the label ids map to, and the prompt template.
    label_words: list[str] = field(default_factory=lambda: ["negative", "positive"])
    prompt_template: str = ""
    # Size of the built-in task.
    builtin_size: int = 2000


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # Empty: found automatically for the architecture (attention projections).
    target_modules: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    # Optimizer steps per client per round (centralized: per round on the pooled data).
    local_steps: int = 16
    batch_size: int = 8
    lr: float = 3e-3
    # constant | linear | cosine: over the whole run (rounds x local steps).
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False


@dataclass
class FederationConfig:
    # Fraction of clients sampled each round.
    fraction_train: float = 1.0
    # Simulation resources per client: CPU cores (0 = the machine's cores spread over the
    # clients sampled per round, so they train side by side: on 2 cores 2 clients x 1 thread
    # beat 1 client x 2 threads, benchmarks/results/speed.md), GPU share when CUDA is present.
    client_cpus: int = 0
    client_gpus: float = 0.0
    # A client that has not replied by then counts as failed for the round.
    round_timeout_s: float = 3600.0
    # How long the server waits at start for clients to connect and say which partition they hold.
    connect_timeout_s: float = 600.0
    # Fewest valid replies a round needs; below that it is retried, or the run stops cleanly
    # (its checkpoint of the last complete round intact).
    min_replies: int = 1
    on_too_few: str = "retry"  # retry | stop
    max_retries: int = 2


class Sectioned:
    """A config table whose sub-tables come from a registry, read as attributes: the methods'
    sections of `RunConfig` (`config.cybgd.prune_ratio`) and the codecs' of `CodecConfig`
    (`config.codec.topk.fraction`). Adding a method or a codec adds its table here."""

    sections: dict[str, Any]

    @classmethod
    def section_types(cls) -> list[tuple[str, type]]:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")


@dataclass
class CodecConfig(Sectioned):
    """`[codec]`: error feedback, and one table per codec that has options: the codec's own
    `Options` dataclass (`[codec.topk] fraction = 0.01`; fedpress.codecs.registry)."""

    # auto (on for topk, powersgd, sign) | on | off. Uplink only: the downlink tracks what
    # each client holds, which already carries the compression error forward.
    error_feedback: str = "auto"
    sections: dict[str, Any] = field(default_factory=lambda: _build_sections(CodecConfig, {}, ""))

    @classmethod
    def section_types(cls) -> list[tuple[str, type]]:
        return codec_option_types()


@dataclass
class EvalConfig:
    # Eval examples scored after each round (a fixed subset); the full split at the end.
    per_round_examples: int = 50
    batch_size: int = 16
    # Federated evaluation, after each round: this share of the nodes that hold local held-out
    # data (deployed nodes with `eval-path`) score the global model on it; 0 = off.
    federated_fraction: float = 1.0


@dataclass
class RuntimeConfig:
    # auto | cpu | cuda
    device: str = "auto"
    # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    dtype: str = "auto"
    # none | 8bit | 4bit (QLoRA, NF4): the frozen base in bitsandbytes' 8 or 4 bits, on CPU
    # or CUDA; for the methods that train an adapter over it (registry.Method.quantized_base)
    quantize: str = "none"
    # Torch threads per process (0 = torch default).
    threads: int = 0


@dataclass
class PrivacyConfig:
    """Client-level differential privacy (Geyer et al. 2017; docs/cg_fedllm.md)."""

    enabled: bool = False
    # Gaussian noise multiplier sigma (noise std = sigma * clip_norm / K on the mean of K
    # sampled clients); 0 with target_epsilon > 0: calibrated to reach target_epsilon.
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0
    clip_norm: float = 0.1
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | pld (dp-accounting)
    # Clip on the client before encoding too (keeps the codec's input in range); the server's
    # clip of the decoded update is what the guarantee rests on, and is always applied.
    client_clip: bool = True


@dataclass
class AggregationConfig:
    """How the server combines the round's client updates (fedpress.aggregation says how each
    rule works and what it bounds)."""

    rule: str = "mean"  # mean | median | trimmed_mean | krum | multikrum
    # trimmed_mean: the fraction of updates cut at each end, per coordinate.
    trim_fraction: float = 0.2
    # krum / multikrum: the number of attackers the rule is set to tolerate (f).
    attackers: int = 1
    # multikrum: how many of the best-scored updates are averaged (0: n - attackers).
    keep: int = 0
    # Each update scaled down to a bound before the rule: none | fixed (max_norm) | median
    # (the median of the round's update norms).
    norm_bound: str = "none"
    max_norm: float = 1.0
    # The mean (with no bound or a fixed one) folds each reply in as it arrives, a float64
    # running sum per tensor, so the server holds no update it has read; false: the round's
    # updates are held and summed in fp32 in partition order (fedpress before it streamed).
    stream: bool = True


@dataclass
class TrackingConfig:
    """Where a run's figures go beside metrics.jsonl (fedpress.tracking)."""

    # none | tensorboard | mlflow, or several: "tensorboard,mlflow"
    backend: str = "none"
    # MLflow's tracking URI; "" = a file store in the run folder (<run>/mlruns)
    mlflow_uri: str = ""
    # The MLflow experiment a run is logged under
    experiment: str = "fedpress"

    def backends(self) -> list[str]:
        """`"tensorboard, mlflow"` -> ["tensorboard", "mlflow"]; "none" -> []."""
        names = [name.strip() for name in self.backend.split(",") if name.strip()]
        return [name for name in names if name != "none"]


@dataclass
class ServerOptimizerConfig:
    """How the server steps the global state with the clients' mean change (Reddi et al. 2021,
    "Adaptive Federated Optimization"; fedpress.server_optimizer)."""

    # fedavg (add lr x the mean) | fedavgm (server momentum, Hsu et al. 2019) | fedadam
    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam
    beta2: float = 0.99  # fedadam
    eps: float = 1e-3  # fedadam's tau: the smallest step scale per coordinate


@dataclass
class RunConfig(Sectioned):
    method: str = "lora-fedavg"
    model: str = "smollm2-135m"
    # The defaults are the demo (`fedpress run`): ~1.5 minutes on 2 cores, parity learned.
    num_clients: int = 2
    rounds: int = 5
    seed: int = 0
    # What compresses client -> server updates and server -> client adapters (see fedpress.codecs).
    uplink_codec: str = "none"
    downlink_codec: str = "none"
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    server_optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # The sections methods bring (`[cybgd]`, `[autoencoder]`): name -> that method's dataclass
    # (registry.Method.section), read as attributes: `config.cybgd.prune_ratio`.
    sections: dict[str, Any] = field(default_factory=lambda: _build_sections(RunConfig, {}, ""))

    @classmethod
    def section_types(cls) -> list[tuple[str, type]]:
        return registry.sections()

    def validate(self) -> RunConfig:
        check_choice("method", self.method, registry.names())
        method = registry.get(self.method)
        check_choice("uplink_codec", self.uplink_codec, CODEC_NAMES)
        check_choice("downlink_codec", self.downlink_codec, CODEC_NAMES)
        check_choice("codec.error_feedback", self.codec.error_feedback, ("auto", "on", "off"))
        check_choice("data.partition", self.data.partition, ("iid", "dirichlet"))
        check_choice(
            "data.format",
            self.data.format,
            ("auto", "builtin", "alpaca", "classification", "mcq", "text"),
        )
        check_choice("train.lr_schedule", self.train.lr_schedule, ("constant", "linear", "cosine"))
        check_choice("runtime.device", self.runtime.device, ("auto", "cpu", "cuda"))
        check_choice("federation.on_too_few", self.federation.on_too_few, ("retry", "stop"))
        check_choice(
            "runtime.dtype", self.runtime.dtype, ("auto", "float32", "bfloat16", "float16")
        )
        check_choice("runtime.quantize", self.runtime.quantize, ("none", "8bit", "4bit"))
        check_choice(
            "server_optimizer.name", self.server_optimizer.name, ("fedavg", "fedavgm", "fedadam")
        )
        for key, value, low in (
            ("num_clients", self.num_clients, 1),
            ("rounds", self.rounds, 1),
            ("train.local_steps", self.train.local_steps, 1),
            ("train.batch_size", self.train.batch_size, 1),
            ("lora.r", self.lora.r, 1),
            ("data.max_length", self.data.max_length, 8),
            ("eval.batch_size", self.eval.batch_size, 1),
            ("federation.min_replies", self.federation.min_replies, 1),
            ("federation.max_retries", self.federation.max_retries, 0),
            ("federation.client_cpus", self.federation.client_cpus, 0),
        ):
            if value < low:
                raise FedpressError(f"config key '{key}' must be >= {low}, got {value}")
        if self.data.eval_size < (0 if self.data.eval_source else 1):
            raise FedpressError(
                f"config key 'data.eval_size' must be >= 1 (0 = all of data.eval_source, "
                f"when one is set), got {self.data.eval_size}"
            )
        if not 0.0 <= self.eval.federated_fraction <= 1.0:
            raise FedpressError("config key 'eval.federated_fraction' must be in [0, 1]")
        if not 0.0 < self.federation.fraction_train <= 1.0:
            raise FedpressError("config key 'federation.fraction_train' must be in (0, 1]")
        if not 0.0 <= self.data.holdout_fraction < 1.0:
            raise FedpressError("config key 'data.holdout_fraction' must be in [0, 1)")
        if self.federation.min_replies > self.num_clients:
            raise FedpressError("config key 'federation.min_replies' exceeds num_clients")
        if self.train.lr <= 0:
            raise FedpressError("config key 'train.lr' must be > 0")
        _validate_server_optimizer(self.server_optimizer)
        _validate_tracking(self.tracking)
        refuse_unread_keys(self, method.keys_read(self))
        if covers(method.keys_read(self), "privacy"):
            _validate_privacy(self.privacy)
        _validate_aggregation(self.aggregation, self.privacy.enabled)
        if self.runtime.quantize != "none" and not method.quantized_base:
            adapters = ", ".join(m.name for m in registry.all_methods() if m.quantized_base)
            raise FedpressError(
                f"runtime.quantize = {self.runtime.quantize!r}: {self.method} trains the base "
                f"model's weights, which a quantized base cannot; the methods that train an "
                f"adapter over a frozen base can ({adapters})"
            )
        if method.validate is not None:
            method.validate(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values and nested tables; a key whose value is None (an optional codec option
        left unset) is left out, as TOML has no null."""
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: Path) -> None:
        path.write_text(self.to_toml())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return _build(cls, raw, prefix="").validate()

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


def _validate_server_optimizer(opt: ServerOptimizerConfig) -> None:
    if not (opt.lr > 0 and math.isfinite(opt.lr)):
        raise FedpressError("config key 'server_optimizer.lr' must be > 0")
    if not opt.eps > 0:
        raise FedpressError("config key 'server_optimizer.eps' must be > 0")
    for key in ("momentum", "beta1", "beta2"):
        if not 0.0 <= getattr(opt, key) < 1.0:
            raise FedpressError(f"config key 'server_optimizer.{key}' must be in [0, 1)")


# What `tracking.backend` may name (fedpress.tracking.BACKENDS implements each).
TRACKING_BACKENDS = ("tensorboard", "mlflow")


def _validate_tracking(tracking: TrackingConfig) -> None:
    for name in tracking.backends():
        if name not in TRACKING_BACKENDS:
            raise FedpressError(
                f"config key 'tracking.backend': {name!r} is not one of none, "
                f'{", ".join(TRACKING_BACKENDS)} (several: "tensorboard,mlflow")'
            )


def _validate_aggregation(agg: AggregationConfig, private: bool) -> None:
    check_choice(
        "aggregation.rule", agg.rule, ("mean", "median", "trimmed_mean", "krum", "multikrum")
    )
    check_choice("aggregation.norm_bound", agg.norm_bound, ("none", "fixed", "median"))
    if not 0.0 <= agg.trim_fraction < 0.5:
        raise FedpressError("config key 'aggregation.trim_fraction' must be in [0, 0.5)")
    for key in ("attackers", "keep"):
        if getattr(agg, key) < 0:
            raise FedpressError(f"config key 'aggregation.{key}' must be >= 0")
    if not (agg.max_norm > 0 and math.isfinite(agg.max_norm)):
        raise FedpressError("config key 'aggregation.max_norm' must be > 0")
    if private and (agg.rule != "mean" or agg.norm_bound != "none"):
        # The DP guarantee rests on every update clipped to privacy.clip_norm and their uniform
        # mean noised; another rule would change the sensitivity the accountant assumes.
        raise FedpressError(
            "with privacy.enabled every update is clipped to privacy.clip_norm (its norm bound) "
            "and their mean noised: aggregation.rule must be 'mean', aggregation.norm_bound "
            "'none'"
        )


def _validate_privacy(dp: PrivacyConfig) -> None:
    check_choice("privacy.accountant", dp.accountant, ("rdp", "pld"))
    if dp.clip_norm <= 0:
        raise FedpressError("config key 'privacy.clip_norm' must be > 0")
    if not 0.0 < dp.delta < 1.0:
        raise FedpressError("config key 'privacy.delta' must be in (0, 1)")
    if dp.noise_multiplier < 0 or dp.target_epsilon < 0:
        raise FedpressError("config keys 'privacy.noise_multiplier/target_epsilon' must be >= 0")
    if dp.enabled and dp.noise_multiplier == 0 and dp.target_epsilon == 0:
        raise FedpressError(
            "privacy is enabled with noise_multiplier = 0 and no target_epsilon: no guarantee"
        )


def covers(keys: tuple[str, ...], key: str) -> bool:
    """Whether `key` (dotted) is one of `keys` or inside one of their sections."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables and dotted keys (quoted or not) to one `section.key -> value` map."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def changed_keys(config: RunConfig) -> list[str]:
    """Dotted keys whose value differs from the default."""
    changed: list[str] = []

    def walk(value: Any, default: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key in value:
                walk(value[key], default.get(key), f"{prefix}{key}.")
        elif value != default:
            changed.append(prefix.rstrip("."))

    walk(config.to_dict(), RunConfig().to_dict(), "")
    return changed


def refuse_unread_keys(config: RunConfig, reads: tuple[str, ...]) -> None:
    """A key set away from its default that the chosen method never reads is a mistake."""
    for key in changed_keys(config):
        if not covers(reads, key):
            raise FedpressError(
                f"config key '{key}' is not used by method '{config.method}': remove it, or "
                f"choose a method that reads it"
            )


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line user error naming
    `what` it was meant to be ("config file", "matrix file")."""
    path = Path(path)
    if not path.is_file():
        raise FedpressError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FedpressError(f"{what} {path} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML file (or the defaults), apply `key=value` overrides, validate."""
    raw: dict[str, Any] = {} if path is None else read_toml(path, "config file")
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return RunConfig.from_dict(raw)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FedpressError(f"--set expects key=value, got '{item}'")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # bare words are strings: --set model=tiny-llama
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FedpressError(f"config key '{part}' is not a table, cannot set '{key}'")
        node = child
    node[parts[-1]] = value


def _plain(value: Any) -> Any:
    if not dataclasses.is_dataclass(value):
        return value
    out = {
        f.name: _plain(getattr(value, f.name))
        for f in dataclasses.fields(value)
        if f.name != "sections"
    }
    if isinstance(value, Sectioned):
        out.update({name: _plain(section) for name, section in value.sections.items()})
    return {key: v for key, v in out.items() if v is not None}


def codec_option_types() -> list[tuple[str, type]]:
    """(codec name, its Options dataclass) for every registered codec that has options."""
    return [(name, cls.Options) for name, cls in CODECS.items() if dataclasses.fields(cls.Options)]


def _build_sections(cls: type[Sectioned], raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Each registered section of `cls`, built from `raw` where it has the section's table."""
    return {
        name: _build(section, raw.get(name, {}), f"{prefix}{name}.")
        for name, section in cls.section_types()
    }


# Keys renamed when each codec's options became its own table ([codec.topk]): read for one
# release, with a warning naming the new key.
RENAMED_KEYS = {
    "codec.block_size": ("codec.int8.block_size", "codec.int4.block_size"),
    "codec.topk_fraction": ("codec.topk.fraction",),
    "codec.topk_value_dtype": ("codec.topk.value_dtype",),
    "codec.topk_packed_indices": ("codec.topk.packed_indices",),
    "codec.powersgd_rank": ("codec.powersgd.rank",),
    "codec.powersgd_iterations": ("codec.powersgd.power_iterations",),
    "codec.powersgd_warm_start": ("codec.powersgd.warm_start",),
    "codec.qsgd_levels": ("codec.qsgd.levels",),
}
_warned: set[str] = set()


def _rename_old_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with the keys of RENAMED_KEYS moved to their new names (a copy where any moved)."""
    found = [old for old in RENAMED_KEYS if _get_dotted(raw, old) is not _MISSING]
    if not found:
        return raw
    raw = copy.deepcopy(raw)
    for old in found:
        section, name = old.split(".")
        value = raw[section].pop(name)
        for new in RENAMED_KEYS[old]:
            if _get_dotted(raw, new) is not _MISSING:
                raise FedpressError(f"config keys '{old}' and '{new}' both set: keep '{new}'")
            _set_dotted(raw, new, value)
    fresh = [old for old in found if old not in _warned]
    if fresh:
        _warned.update(fresh)
        renames = ", ".join(f"{old} -> {' and '.join(RENAMED_KEYS[old])}" for old in fresh)
        log.warning("config keys renamed (the old names work until the next release): %s", renames)
    return raw


_MISSING = object()


def _get_dotted(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise FedpressError(f"config key '{prefix.rstrip('.')}' must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "sections"}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    if cls is RunConfig:
        raw = _rename_old_keys(raw)
    if issubclass(cls, Sectioned):
        sections = _build_sections(cls, raw, prefix)
        raw = {k: v for k, v in raw.items() if k not in sections}
        kwargs["sections"] = sections
        fields.update({name: None for name in sections})  # for "did you mean"
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            known = ", ".join(sorted(fields))
            raise FedpressError(
                f"unknown config key '{prefix}{key}'{hint}; valid keys here: {known}"
            )
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(f"{prefix}{key}", value, hint_type)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a codec's Options checks its own ranges: name the key
        named = [name for name in fields if re.search(rf"\b{name}\b", str(exc))]
        where = f"key '{prefix}{named[0]}'" if named else f"section [{prefix.rstrip('.')}]"
        raise FedpressError(f"config {where}: {exc}") from None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str):  # --set lora.target_modules=q_proj,v_proj
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise FedpressError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(key, v, item_type) for v in value]
    if origin in (typing.Union, types.UnionType):  # `int | None`: an optional codec option
        inner = [t for t in typing.get_args(hint) if t is not type(None)]
        if value is None and len(inner) < len(typing.get_args(hint)):
            return None
        if len(inner) != 1:
            raise FedpressError(f"config key '{key}' has an unsupported type")  # pragma: no cover
        return _coerce(key, value, inner[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise FedpressError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FedpressError(f"config key '{key}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise FedpressError(f"config key '{key}' must be a finite number, got {value!r}")
            return float(value)
        raise FedpressError(f"config key '{key}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # --set model=123 is a name, not a number
        raise FedpressError(f"config key '{key}' must be a string, got {value!r}")
    raise FedpressError(f"config key '{key}' has an unsupported type")  # pragma: no cover
