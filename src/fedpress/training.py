"""Plain PyTorch task code: tokenise with loss on answer tokens only, train, evaluate.

Nothing here knows about federation: the centralized reference and every federated client
call the same `train_steps` and `evaluate`, so differences between methods come from the
method, not from two training loops.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedpress.data import Example

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    answer_start: int  # position of the first answer token
    choice_ids: list[list[int]]  # token ids of each choice (scored after the prompt)
    answer_index: int  # which choice is right (-1 when not scorable)


def encode(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """Prompt and answer are tokenised separately so the answer boundary is exact."""
    prompt_ids = (
        tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    )
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if example.prompt and not example.choices and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]  # open-ended answers learn to stop
    answer_ids = answer_ids[:max_length]
    keep = max_length - len(answer_ids)
    prompt_ids = prompt_ids[-keep:] if keep > 0 else []  # truncate the prompt from the left
    choice_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in example.choices]
    answer_index = (
        example.choices.index(example.answer) if example.answer in example.choices else -1
    )
    return Encoded(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE] * len(prompt_ids) + answer_ids,
        answer_start=len(prompt_ids),
        choice_ids=choice_ids,
        answer_index=answer_index,
    )


def collate(batch: Sequence[Encoded], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


def lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant" or total <= 1:
        return 1.0
    progress = min(step / total, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    mean_loss: float
    steps: int
    examples_seen: int
    seconds: float


def batch_rows(size: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The rows of each of `steps` batches: seeded shuffles of all `size` rows, one after
    another (every example once before any twice)."""
    rng = random.Random(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        if len(order) < batch_size:
            refill = list(range(size))
            rng.shuffle(refill)
            order.extend(refill)
        batches.append(order[:batch_size])
        del order[:batch_size]
    return batches


def train_steps(
    model: torch.nn.Module,
    data: Sequence[Encoded],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    schedule: str = "constant",
    schedule_offset: int = 0,
    schedule_total: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
) -> TrainResult:
    """`steps` optimizer steps on shuffled batches of `data`, fresh AdamW each call.

    The learning-rate schedule spans the whole run: `schedule_offset` is how many steps this
    learner already took in earlier rounds, `schedule_total` the run's total.
    """
    if not data:
        raise ValueError("no training data")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    losses = []
    seen = 0
    start = time.perf_counter()
    model.train()
    for step, rows in enumerate(batch_rows(len(data), batch_size, steps, seed)):
        batch = [data[i] for i in rows]
        factor = lr_factor(schedule, schedule_offset + step, schedule_total or steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        loss = answer_loss(model, collate(batch, pad_id, device))
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        seen += len(batch)
    model.eval()
    return TrainResult(sum(losses) / len(losses), steps, seen, time.perf_counter() - start)


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per answer token
    accuracy: (
        float | None
    )  # share of examples whose right choice scores highest; None if not scorable
    examples: int
    seconds: float


# Causal LMs whose logits are exactly `lm_head(last hidden state)`: scoring computes them only
# where an answer token is predicted (no softcapping or logit scaling to reapply).
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def answer_logits(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [N, vocab] fp32, their targets [N], their rows [N]) at the N positions that
    predict an answer token, in row-major order (`logits_at` computes them)."""
    shift_labels = inputs["labels"][:, 1:]
    rows, cols = (shift_labels != IGNORE).nonzero(as_tuple=True)
    return logits_at(model, inputs, rows, cols), shift_labels[rows, cols], rows


def logits_at(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The fp32 logits predicting the token after each position (rows[i], cols[i]).

    The vocabulary projection is the costliest part of scoring a small model (SmolLM2: a fifth
    of the forward pass, and a batch x length x 49k logits tensor); only the few positions
    that predict answer tokens need it. Same values as slicing the full logits. (`fedpress
    plan` runs this on the meta device, without an attention mask, to see what training
    saves for backward.)"""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = inputs.get("attention_mask")
    if getattr(causal.config, "model_type", "") in PLAIN_HEAD_MODELS:
        body, head = causal.base_model, causal.get_output_embeddings()
        hidden = body(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        return head(hidden[rows, cols]).float()
    full = model(input_ids=inputs["input_ids"], attention_mask=mask)
    return full.logits[:, :-1][rows, cols].float()


def first_answer_positions(rows: torch.Tensor) -> dict[int, int]:
    """Batch row -> index into `answer_logits`' N positions of that row's first one: the
    position before its first answer token, whose logits rank single-token choices."""
    first: dict[int, int] = {}
    for index, row in enumerate(rows.tolist()):
        first.setdefault(row, index)
    return first


def answer_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens: `model(**inputs).loss`, with the vocabulary
    projection (and its backward pass) only where an answer token is predicted. On SST-2 or
    the built-in task that is one position in ten or more, the head a fifth of SmolLM2's
    compute."""
    logits, targets, _ = answer_logits(model, inputs)
    return torch.nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Sequence[Encoded], *, batch_size: int, pad_id: int
) -> EvalResult:
    """Loss on answer tokens, and choice accuracy from the same forward pass.

    With single-token choices (SST-2 labels, MMLU letters, the built-in task) the logits
    before the first answer token rank the choices directly; multi-token choices are scored
    by the summed log-probability of each choice in extra passes.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    total_loss, total_tokens, correct, scorable = 0.0, 0, 0, 0
    # Batch examples of similar length together: less padding, same sums.
    by_length = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    for begin in range(0, len(data), batch_size):
        batch = [data[i] for i in by_length[begin : begin + batch_size]]
        inputs = collate(batch, pad_id, device)
        logits, targets, rows = answer_logits(model, inputs)
        token_loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        total_loss += token_loss.item()
        total_tokens += int(targets.numel())
        first = first_answer_positions(rows)
        for row, e in enumerate(batch):
            if e.answer_index < 0 or not e.choice_ids or e.answer_start == 0:
                continue
            scorable += 1
            if all(len(c) == 1 for c in e.choice_ids):
                next_logits = logits[first[row]]
                scores = [next_logits[c[0]].item() for c in e.choice_ids]
            else:
                scores = _choice_logprobs(model, e, device)
            correct += int(max(range(len(scores)), key=scores.__getitem__) == e.answer_index)
    return EvalResult(
        loss=total_loss / max(total_tokens, 1),
        accuracy=correct / scorable if scorable else None,
        examples=len(data),
        seconds=time.perf_counter() - start,
    )


def _choice_logprobs(model: torch.nn.Module, e: Encoded, device: torch.device) -> list[float]:
    prompt = e.input_ids[: e.answer_start]
    scores = []
    for choice in e.choice_ids:
        ids = torch.tensor([prompt + choice], device=device)
        logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
        positions = range(len(prompt) - 1, len(prompt) + len(choice) - 1)
        scores.append(sum(logprobs[p, t].item() for p, t in zip(positions, choice, strict=True)))
    return scores
