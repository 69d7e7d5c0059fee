"""Peak memory of one piece of client work (a training turn), measured; and the same peak
planned, term by term, for a model that is not here (`fedpress plan`, at the end).

Two figures, the same for every method (summary.json and metrics.jsonl):
- `peak`: the client's resident memory at its peak during training, the weights it holds
  included (`client_peak_mem_bytes`): what a device must have;
- `bytes`: what training adds above the loaded model (`client_train_mem_bytes`).

`ru_maxrss` would be a lifetime high-water mark (Flower's simulation reuses one process for
many clients), so both are measured around the training call only:

- on CUDA: `torch.cuda.max_memory_allocated` minus the allocation at the start (peak reset);
- on Linux CPU: the kernel's own high-water mark of the process's resident memory (`VmHWM`),
  reset just before the call (`/proc/self/clear_refs`), minus the RSS just before it: exact,
  and free (no sampling thread competing with training for the cores);
- elsewhere on CPU: the process RSS sampled by a background thread every `interval_s` during
  the call (peaks shorter than the interval can be missed).
Before taking the baseline, freed heap memory is handed back to the OS (glibc `malloc_trim`),
so memory a previous turn freed but the allocator kept cannot hide this turn's allocations.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark; False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open(_STATUS) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _release_free_heap() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL(name).malloc_trim(0)


@contextmanager
def training_memory(device: torch.device, interval_s: float = 0.002) -> Iterator[dict[str, int]]:
    """`with training_memory(dev) as mem: ...` then `mem["peak"]` is the absolute peak and
    `mem["bytes"]` what the call added above the memory at its start."""
    box = {"bytes": 0, "baseline": 0, "peak": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        box["baseline"] = base
        try:
            yield box
        finally:
            torch.cuda.synchronize(device)
            box["peak"] = int(torch.cuda.max_memory_allocated(device))
            box["bytes"] = max(0, box["peak"] - base)
        return
    _release_free_heap()
    process = psutil.Process()
    base = process.memory_info().rss
    box["baseline"] = base
    if _reset_peak_rss():
        try:
            yield box
        finally:
            box["peak"] = max(_peak_rss(), base)
            box["bytes"] = max(0, box["peak"] - base)
        return
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        box["peak"] = peak[0]
        box["bytes"] = max(0, peak[0] - base)


# --------------------------------------------------------------------------- planned
# `fedpress plan`: the same peak, computed for a model that is not here (docs/plan.md). The
# model's own terms come from the model built on the meta device; three figures come from
# measurements on this project's 2-core CPU machine (docs/plan.md says which and how):

# The client process before it holds a model: the interpreter with torch, transformers,
# peft and Flower imported (520 MB in a fresh interpreter), in a Ray worker of the
# simulation engine (a tiny-llama LoRA client's 638 MB less its 25 MB of weights).
CPU_RUNTIME_BYTES = 610_000_000
# A received message as the simulation engine holds it in the worker during the turn: its
# bytes this many times (Ray's copy of the pickled Message and the unpickled one, each with
# Flower's cached chunks; a tiny-llama fed-full client held 4.7 copies beyond fedpress's own).
ENGINE_MESSAGE_COPIES = 4.7
# Backward on CPU holds up to this many times what the forward saved (the saved tensors, their
# gradients and the kernels' buffers, in glibc's heap): SmolLM2 LoRA steps in one process,
# batches of 8 x 64, 8 x 128 and 4 x 64 tokens, added 1.9-2.3x the saved bytes (mean 2.1).
CPU_BACKWARD_FACTOR = 2.1


@dataclass
class PlannedMemory:
    """A client's peak memory during its training turn, term by term, in bytes."""

    weights: int  # the model's parameters (a quantized base: its packed weights)
    gradients: int  # one per trainable number, in its dtype
    optimizer: int  # AdamW's two moments per trainable number (0: no optimizer)
    activations: int  # what the forward saves for backward (meta forward, deduplicated)
    held: int = 0  # fedpress's own copies beside the model (initial, received, views)
    messages: int = 0  # the received message as the simulation engine holds it
    runtime: int = 0  # CPU: the process before it holds a model
    backward_factor: float = 1.0  # backward's working memory, as a multiple of activations

    @property
    def training(self) -> int:
        """What training adds: the optimizer's state, and backward's peak, where the saved
        activations are traded for gradients as it goes."""
        backward = max(self.gradients + self.activations, self.backward_factor * self.activations)
        return self.optimizer + int(backward)

    @property
    def peak(self) -> int:
        return self.runtime + self.weights + self.held + self.messages + self.training


@dataclass
class Activations:
    """What one training forward saves for backward, from a meta-device forward."""

    total: int  # every saved tensor once (views of one storage once), parameters excluded
    per_layer: list[int]  # of that, what each decoder layer saved
    layer_inputs: int  # the hidden states entering the decoder layers, summed

    @property
    def checkpointed(self) -> int:
        """With gradient checkpointing of every decoder layer: the layers' inputs are kept,
        one layer at a time is recomputed in backward."""
        outside = self.total - sum(self.per_layer)
        return outside + self.layer_inputs + max(self.per_layer, default=0)


def saved_activations(
    model: torch.nn.Module, batch: int, seq_len: int, answer_tokens: int
) -> Activations:
    """Run one training forward of `batch` x `seq_len` tokens, `answer_tokens` of them scored
    (`training.logits_at`, the head only where an answer token is predicted), on a model built
    on the meta device, and count every tensor autograd saves for backward: the real model
    code and the real autograd decide what is kept, no per-architecture formula."""
    from fedpress.models import find_decoder_layers
    from fedpress.training import logits_at

    _, layers = find_decoder_layers(model)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: set[int] = set()
    box = {"layer": -1, "total": 0, "inputs": 0}
    per_layer = [0] * len(layers)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in params and storage._cdata not in seen:
            seen.add(storage._cdata)
            box["total"] += storage.nbytes()
            if box["layer"] >= 0:
                per_layer[box["layer"]] += storage.nbytes()
        return tensor

    def enter(index: int):  # noqa: ANN202
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            box["layer"] = index
            hidden = args[0] if args else kwargs.get("hidden_states")
            box["inputs"] += hidden.numel() * hidden.element_size()

        return hook

    def leave(*_: object) -> None:
        box["layer"] = -1

    handles = [
        layer.register_forward_pre_hook(enter(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ] + [layer.register_forward_hook(leave) for layer in layers]
    meta = torch.device("meta")
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device=meta)
    rows, cols = (torch.zeros(answer_tokens, dtype=torch.long, device=meta) for _ in range(2))
    was_training = model.training
    # With `use_cache` off and no mask, transformers checks the positions for packed
    # sequences, reading values a meta tensor has not; with it on it skips that, and what the
    # cache keeps (keys, values) attention saves anyway.
    config = model.config
    use_cache, config.use_cache = config.use_cache, True
    model.train()
    try:
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
            _fused_attention(),
        ):
            logits = logits_at(model, {"input_ids": ids}, rows, cols)
            torch.nn.functional.cross_entropy(logits, rows)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        config.use_cache = use_cache
    return Activations(box["total"], per_layer, box["inputs"])


@contextmanager
def _fused_attention() -> Iterator[None]:
    """On the meta device `scaled_dot_product_attention` takes its math path, which saves the
    attention matrices; a training step on CPU or CUDA runs a fused kernel, which saves only
    q, k, v, the output and its log-sum-exp. Plan with the fused kernel's meta twin."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):  # noqa: ANN001, ANN202
        if attn_mask is not None or query.device.type != "meta":
            return original(query, key, value, attn_mask, dropout_p, is_causal, **kwargs)
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return flash(query, key, value, dropout_p, is_causal, scale=kwargs.get("scale"))[0]

    functional.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


def planned_weight_bytes(model: torch.nn.Module, quantize: str = "none") -> int:
    """The parameters' bytes; with `quantize` ("8bit", "4bit"), as bitsandbytes holds them:
    the decoder layers' linear weights packed (int8 and a fp32 scale per row; NF4 with double
    quantization: half a byte per weight, a byte per 64-weight block and 4 per 256 blocks),
    everything else fp32 (PEFT's `prepare_model_for_kbit_training` casts it up)."""
    from fedpress.models import find_decoder_layers

    _, layers = find_decoder_layers(model)
    packed = {  # what bitsandbytes replaces: the layers' linear modules, not LoRA's own
        id(module.weight)
        for name, module in layers.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    }
    total = 0
    for param in model.parameters():
        n = param.numel()
        if quantize == "none":
            total += n * param.element_size()
        elif id(param) not in packed:
            total += n * 4
        elif quantize == "8bit":
            total += n + 4 * param.shape[0]
        else:
            total += n // 2 + n // 64 + 4 * (n // (64 * 256) + 1)
    return total
