"""`fedpress plan`: what a run will cost before it runs, for models too large for this machine.

From a run config (the TOML and `--set` overrides `fedpress run` takes) and a model's
architecture (a Hugging Face `config.json`, a built-in one, or the config's own model), the
model is built on the meta device (shapes, no weights, nothing downloaded); each method's
`Method.plan` walks the run's rounds with the messages its server and clients send, built as
Flower messages from shapes (`flower.planning`), and says what its client holds; the client's
peak memory is `memory.PlannedMemory`. docs/plan.md defines every term and holds the plan
against what fedpress measured.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpress.accounting import MB
from fedpress.console import add_config_arguments, quiet
from fedpress.errors import FedpressError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from fedpress.config import RunConfig
    from fedpress.flower.planning import Traffic
    from fedpress.memory import PlannedMemory

# Architectures by name, as their published config.json files give them (the fields that set
# a shape); `--model NAME` plans one of these, `--model-config FILE` any other.
_LLAMA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
_MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
}
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "llama-7b": _LLAMA_7B,  # huggyllama/llama-7b (LLaMA 1, CG-FedLLM's)
    "llama-2-7b": {**_LLAMA_7B, "max_position_embeddings": 4096},  # meta-llama/Llama-2-7b-hf
    "mistral-7b": {**_MISTRAL_7B, "vocab_size": 32768},  # mistralai/Mistral-7B-v0.3 (FlowerTune)
    "llama-3-8b": {  # meta-llama/Meta-Llama-3-8B
        **_MISTRAL_7B,
        "model_type": "llama",
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
    },
    "qwen2.5-7b": {  # Qwen/Qwen2.5-7B
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-config", metavar="CONFIG_JSON", help="a Hugging Face config.json")
    model.add_argument(
        "--model",
        metavar="NAME",
        help=f"a known architecture: {', '.join(KNOWN_MODELS)}, or a fedpress model alias",
    )
    parser.add_argument(
        "--methods",
        default="all",
        help="methods to plan beside the config's own, comma-separated, or all (default)",
    )
    parser.add_argument(
        "--codecs",
        default="",
        help="uplink codecs to plan the config's method with, comma-separated, or all",
    )
    parser.add_argument("--seq-len", type=int, help="tokens per example (default: data.max_length)")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        help="scored tokens per example (default: 1 for choice data, else --seq-len)",
    )
    parser.add_argument("--json", action="store_true", help="the rows as a JSON list")


def run(args: argparse.Namespace) -> int:
    from fedpress.config import load_config

    config = load_config(args.config, args.overrides)
    quiet()
    arch, label = architecture(config, args.model_config, args.model)
    rows, skipped = plan_rows(
        config,
        arch,
        label,
        _names(args.methods, "methods"),
        _names(args.codecs, "codecs"),
        args.seq_len,
        args.answer_tokens,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, skipped))
    return 0


def _names(text: str, what: str) -> list[str] | None:
    """None for "all", else the listed names (checked against what exists)."""
    from fedpress import registry
    from fedpress.codecs import CODEC_NAMES

    if text.strip() == "all":
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = registry.names() if what == "methods" else CODEC_NAMES
    for name in names:
        if name not in known:
            raise FedpressError(f"--{what}: unknown '{name}'; known: {', '.join(known)}")
    return names


# --------------------------------------------------------------------------- the model


def architecture(
    config: RunConfig, model_config: str | None, known: str | None
) -> tuple[PretrainedConfig, str]:
    """The architecture to plan, and its name: a config.json, a known name, or the config's
    own model (an alias, a local folder or a model in the offline cache)."""
    from transformers import AutoConfig

    from fedpress.models import SMOLLM2_ALIAS, TINY_MODELS, config_of

    if known in (SMOLLM2_ALIAS, *TINY_MODELS):
        return config_of(known), known
    if known is not None:
        key = known.lower()
        if key not in KNOWN_MODELS:
            raise FedpressError(f"--model: unknown '{known}'; known: {', '.join(KNOWN_MODELS)}")
        fields = dict(KNOWN_MODELS[key])
        return AutoConfig.for_model(fields.pop("model_type"), **fields), key
    if model_config is not None:
        path = Path(model_config)
        try:
            fields = json.loads(path.read_text())
            return AutoConfig.for_model(fields.pop("model_type"), **fields), path.name
        except OSError as exc:
            raise FedpressError(f"--model-config: cannot read {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            reason = f"no model_type in {path}" if isinstance(exc, KeyError) else str(exc)
            raise FedpressError(f"--model-config: not a model config.json: {reason}") from None
    return config_of(config.model), config.model


@dataclass
class Planner:
    """What a method's plan is made from: the run config, the architecture on the planned
    device, the training batch's shape; and the shared ways to build and measure."""

    config: RunConfig
    arch: PretrainedConfig
    seq_len: int
    answer_tokens: int  # per example
    device: str = "cpu"
    _drawn: list[list[int]] = field(default_factory=list, repr=False)  # rounds' participants

    @property
    def dtype(self) -> torch.dtype:
        import torch

        if self.config.runtime.dtype != "auto":
            return getattr(torch, self.config.runtime.dtype)
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def base_model(self) -> torch.nn.Module:
        """The model on the meta device, every parameter trainable."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.arch, dtype=self.dtype)
        model.config.use_cache = False
        return model

    def lora_model(self) -> torch.nn.Module:
        """The base with the run's LoRA adapter (`models.add_lora`), on the meta device."""
        from fedpress.models import add_lora

        return add_lora(self.base_model(), self.config.lora)

    def participants(self, server_round: int) -> list[int]:
        """The partitions sampled in `server_round` (1, 2, ... in order: the sampler is the
        loop's own, seeded; under DP, whose sampling is secret, the expected count)."""
        from fedpress.flower.sampling import Sampler

        if not self._drawn:
            sampler = Sampler(self.config)
            partitions = list(range(self.config.num_clients))
            count = max(1, round(len(partitions) * sampler.fraction))
            for _ in range(self.config.rounds):
                secret = sampler.secret
                self._drawn.append(partitions[:count] if secret else sampler.sample(partitions))
        return self._drawn[server_round - 1]

    def memory(
        self,
        model: torch.nn.Module,
        *,
        held: int = 0,
        messages: int = 0,
        optimizer: bool = True,
        backward: bool = True,
        fp32_master: bool = False,
    ) -> MemoryPlan:
        """The client's peak training `model` (its trainable parameters are what trains),
        holding `held` bytes of its own copies and receiving `messages` bytes: as configured,
        with gradient checkpointing, and (an adapter over a frozen base) with a 4-bit base.
        `fp32_master`: the trainable parameters train as an fp32 copy that replaces them for
        the turn (their gradients and moments fp32), computing in the model's dtype."""
        from dataclasses import replace

        from fedpress import registry
        from fedpress.memory import (
            CPU_BACKWARD_FACTOR,
            CPU_RUNTIME_BYTES,
            ENGINE_MESSAGE_COPIES,
            Activations,
            PlannedMemory,
            planned_weight_bytes,
            saved_activations,
        )

        trainable = [p for p in model.parameters() if p.requires_grad]
        state = sum(p.numel() * (4 if fp32_master else p.element_size()) for p in trainable)
        master = state - sum(p.numel() * p.element_size() for p in trainable)
        batch = self.config.train.batch_size
        saved = (  # no gradient taken (zeroth order): nothing is saved for a backward
            saved_activations(model, batch, self.seq_len, batch * self.answer_tokens)
            if backward
            else Activations(0, [], 0)
        )
        cpu = self.device == "cpu"
        quantize = self.config.runtime.quantize
        planned = PlannedMemory(
            weights=planned_weight_bytes(model, quantize) + master,
            gradients=state if backward else 0,
            optimizer=2 * state if optimizer else 0,
            activations=saved.total,
            # Host memory: in a CUDA client's peak (the allocator's) only on CPU.
            held=held if cpu else 0,
            messages=int(ENGINE_MESSAGE_COPIES * messages) if cpu else 0,
            runtime=CPU_RUNTIME_BYTES if cpu else 0,
            backward_factor=CPU_BACKWARD_FACTOR if cpu else 1.0,
        )
        checkpointed = replace(planned, activations=saved.checkpointed)
        by_checkpointing = {False: planned, True: checkpointed}
        configured = by_checkpointing[self.config.train.gradient_checkpointing]
        quantizable = registry.get(self.config.method).quantized_base
        four_bit = None
        if quantizable:
            four_bit = replace(configured, weights=planned_weight_bytes(model, "4bit") + master)
        return MemoryPlan(configured, by_checkpointing, four_bit)


@dataclass
class MemoryPlan:
    """The client's peak as configured, without and with gradient checkpointing (the rest
    as configured), and as configured with a 4-bit base (a method that trains an adapter)."""

    configured: PlannedMemory
    by_checkpointing: dict[bool, PlannedMemory]
    four_bit: PlannedMemory | None = None


@dataclass
class MethodPlan:
    """A method's plan: its messages round by round (0: its one-off phase before round 1, the
    connection aside) and its client's memory."""

    rounds: dict[int, Traffic]
    memory: MemoryPlan
    participants: dict[int, int] = field(default_factory=dict)  # round -> distinct clients


# --------------------------------------------------------------------------- rows


def plan_rows(
    config: RunConfig,
    arch: PretrainedConfig,
    label: str,
    methods: list[str] | None = None,
    codecs: list[str] | None = None,
    seq_len: int | None = None,
    answer_tokens: int | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (method, codecs): the config's own first, then `methods` (None: all) with
    its codecs, then its method with each of `codecs` (None: all) as the uplink; and the
    variants that could not be planned, each with why."""
    from fedpress import registry
    from fedpress.codecs import CODEC_NAMES

    wanted: list[dict[str, Any]] = [{}]
    for name in registry.names() if methods is None else methods:
        wanted.append({"method": name})
    skipped = []
    uplinks = CODEC_NAMES if codecs is None else codecs
    if "uplink_codec" in registry.get(config.method).reads:
        wanted += [{"uplink_codec": c} for c in uplinks]
    elif codecs:
        skipped.append(f"--codecs: method '{config.method}' has no uplink codec to vary")
    rows, seen = [], set()
    for overrides in wanted:
        try:
            variant = _variant(config, overrides)
            key = (variant.method, variant.uplink_codec, variant.downlink_codec)
            if key in seen:
                continue
            seen.add(key)
            rows.append(plan_one(variant, arch, label, seq_len, answer_tokens))
        except FedpressError as exc:
            if not overrides:
                raise
            skipped.append(f"{' '.join(f'{k}={v}' for k, v in overrides.items())}: {exc}")
    return rows, skipped


def _variant(config: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """The config with `overrides`, less the keys the variant's method does not read (as a
    compare matrix's variants are built)."""
    from fedpress.compare import resolve
    from fedpress.config import RunConfig

    if not overrides:
        return config
    return RunConfig.from_dict(resolve(config.to_dict(), overrides))


def plan_run(
    config: RunConfig,
    arch: PretrainedConfig,
    seq_len: int | None = None,
    answer_tokens: int | None = None,
) -> tuple[MethodPlan, Planner]:
    """The plan of one run config, round 0 with the connection's messages (summary.json's
    round 0 holds them too), and what it was planned with."""
    from fedpress import registry
    from fedpress.flower.planning import Traffic, handshake

    method = registry.get(config.method)
    if method.plan is None:
        raise FedpressError(f"method '{config.method}' cannot be planned (it has no Method.plan)")
    seq = seq_len or config.data.max_length
    answers = answer_tokens or _answer_tokens(config, seq)
    planner = Planner(config, arch, seq, answers, _device(config))
    plan: MethodPlan = method.plan(planner)
    if method.federated:
        setup = plan.rounds.setdefault(0, Traffic())
        connection = handshake(config)
        setup.down[:0] = connection.down
        setup.up[:0] = connection.up
    return plan, planner


def plan_one(
    config: RunConfig,
    arch: PretrainedConfig,
    label: str,
    seq_len: int | None = None,
    answer_tokens: int | None = None,
) -> dict[str, Any]:
    """The row of one run config: its bytes (totals as summary.json counts them) and its
    client's peak memory."""
    from fedpress import registry

    plan, planner = plan_run(config, arch, seq_len, answer_tokens)
    up = sum(sum(t.up) for t in plan.rounds.values())
    down = sum(sum(t.down) for t in plan.rounds.values())
    trained = [r for r in plan.rounds if r > 0]

    def per_client(direction: str) -> float:
        totals = [sum(getattr(plan.rounds[r], direction)) / plan.participants[r] for r in trained]
        return sum(totals) / len(totals) if totals else 0.0

    memory = plan.memory
    setup = plan.rounds.get(0)
    return {
        "method": config.method,
        "uplink_codec": config.uplink_codec,
        "downlink_codec": config.downlink_codec,
        "codec": (registry.get(config.method).codec_label or _codec_label)(config.to_dict()),
        "model": label,
        "device": planner.device,
        "rounds": config.rounds,
        "bytes_up_total": up,
        "bytes_down_total": down,
        "bytes_up_round0": sum(setup.up) if setup else 0,
        "bytes_down_round0": sum(setup.down) if setup else 0,
        "bytes_up_per_client_round": per_client("up"),
        "bytes_down_per_client_round": per_client("down"),
        "client_peak_mem_bytes": memory.configured.peak,
        "client_peak_mem_no_checkpointing_bytes": memory.by_checkpointing[False].peak,
        "client_peak_mem_checkpointing_bytes": memory.by_checkpointing[True].peak,
        "client_peak_mem_4bit_bytes": memory.four_bit.peak if memory.four_bit else None,
        "memory": {**memory.configured.__dict__, "training": memory.configured.training},
        "batch_size": config.train.batch_size,
        "seq_len": planner.seq_len,
        "answer_tokens": planner.answer_tokens,
    }


def _codec_label(config: dict[str, Any]) -> str:
    return f"{config['uplink_codec']} / {config['downlink_codec']}"


def _device(config: RunConfig) -> str:
    if config.runtime.device != "auto":
        return config.runtime.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _answer_tokens(config: RunConfig, seq_len: int) -> int:
    """Scored tokens per example: one where answers are choices (a label word, a letter),
    else every position (an upper bound: open-ended answers are part of each example)."""
    from fedpress.data import load_examples

    examples = load_examples(config.data.source, config.data, config.seed)
    return 1 if examples and examples[0].choices else seq_len


def format_table(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    """The rows as a table (MB = 10^6 bytes), and the variants that could not be planned."""
    if not rows:
        return "nothing planned"
    first = rows[0]
    lines = [
        f"{first['model']} on {first['device']}, {first['rounds']} rounds; a training batch of "
        f"{first['batch_size']} x {first['seq_len']} tokens, {first['answer_tokens']} scored "
        "per example; MB = 10^6 bytes",
        "",
        "| method | codecs (up / down) | MB up / client / round | MB down / client / round "
        "| MB up, run | MB down, run | client peak MB | checkpointing off | checkpointing on "
        "| 4-bit base | weights | gradients | optimizer | activations | held + messages "
        "| runtime |",
        "|---" * 16 + "|",
    ]
    for row in rows:
        m = row["memory"]

        def mb(value: float | None) -> str:
            if value is None:
                return "-"
            return f"{value / MB:,.1f}" if value >= 10 * MB else f"{value / MB:.3f}"

        lines.append(
            f"| {row['method']} | {row['codec']} | {mb(row['bytes_up_per_client_round'])} "
            f"| {mb(row['bytes_down_per_client_round'])} | {mb(row['bytes_up_total'])} "
            f"| {mb(row['bytes_down_total'])} | {mb(row['client_peak_mem_bytes'])} "
            f"| {mb(row['client_peak_mem_no_checkpointing_bytes'])} "
            f"| {mb(row['client_peak_mem_checkpointing_bytes'])} "
            f"| {mb(row['client_peak_mem_4bit_bytes'])} | {mb(m['weights'])} "
            f"| {mb(m['gradients'])} | {mb(m['optimizer'])} | {mb(m['activations'])} "
            f"| {mb(m['held'] + m['messages'])} | {mb(m['runtime'])} |"
        )
    lines += [f"not planned: {reason}" for reason in skipped]
    return "\n".join(lines)
