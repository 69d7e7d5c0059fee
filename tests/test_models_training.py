import pytest
import torch

from fedpress.config import LoraConfig, RuntimeConfig
from fedpress.data import Example, parity_task
from fedpress.errors import FedpressError
from fedpress.models import (
    TINY_MODELS,
    adapter_state,
    add_lora,
    load_adapter_state,
    load_base_model,
    load_tokenizer,
    lora_target_modules,
)
from fedpress.training import IGNORE, encode, evaluate, train_steps

EXPECTED_TARGETS = {
    "tiny-llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "tiny-qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "tiny-gpt2": ["attn.c_attn", "attn.c_proj"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_get_lora_on_their_attention_projections(name):
    base = load_base_model(name, RuntimeConfig())
    assert lora_target_modules(base, LoraConfig()) == EXPECTED_TARGETS[name]
    model = add_lora(base, LoraConfig(r=4))
    state = adapter_state(model)
    assert state and all("lora_" in key for key in state)
    # Two processes building the same model agree on base weights and initial adapter.
    again = adapter_state(add_lora(load_base_model(name, RuntimeConfig()), LoraConfig(r=4)))
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_adapter_state_round_trips():
    model = add_lora(load_base_model("tiny-llama", RuntimeConfig()), LoraConfig())
    state = {k: torch.randn_like(v) for k, v in adapter_state(model).items()}
    load_adapter_state(model, state)
    assert all(torch.equal(adapter_state(model)[k], state[k]) for k in state)


def test_unknown_model_is_a_user_error():
    with pytest.raises(FedpressError, match="cannot load"):
        load_base_model("no-such-org/no-such-model", RuntimeConfig())


def test_encode_puts_loss_on_answer_tokens_only(tokenizer):
    example = Example("Is 12 even or odd?\nAnswer:", " even", (" even", " odd"), "even")
    enc = encode(example, tokenizer, max_length=64)
    prompt_len = len(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])
    assert enc.answer_start == prompt_len
    assert all(label == IGNORE for label in enc.labels[:prompt_len])
    assert enc.labels[prompt_len:] == enc.input_ids[prompt_len:]
    assert enc.answer_index == 0 and all(len(c) == 1 for c in enc.choice_ids)


def test_encode_truncates_the_prompt_not_the_answer(tokenizer):
    example = Example("word " * 200, " positive", (" negative", " positive"))
    enc = encode(example, tokenizer, max_length=16)
    assert len(enc.input_ids) == 16
    assert enc.labels[-1] == enc.input_ids[-1] != IGNORE


def test_training_learns_and_evaluation_scores_choices(tokenizer):
    torch.manual_seed(0)
    model = add_lora(load_base_model("tiny-llama", RuntimeConfig()), LoraConfig(r=8))
    # Make the tiny task trivially learnable: the answer is a fixed function of one word.
    examples = [
        Example(f"Colour {w}:", " even" if w in ("red", "blue") else " odd", (" even", " odd"))
        for w in ("red", "blue", "green", "black") * 8
    ]
    data = [encode(e, tokenizer, 32) for e in examples]
    before = evaluate(model, data, batch_size=8, pad_id=tokenizer.pad_token_id)
    result = train_steps(
        model, data, steps=60, batch_size=8, lr=1e-2, pad_id=tokenizer.pad_token_id, seed=0
    )
    after = evaluate(model, data, batch_size=8, pad_id=tokenizer.pad_token_id)
    assert result.steps == 60 and result.examples_seen == 480
    # A random tiny model cannot get far below log(vocab) with attention-only LoRA, but it
    # must learn the task: a clear loss drop, and every answer ranked first.
    assert before.accuracy < 1.0
    assert after.loss < before.loss - 1.0
    assert after.accuracy == 1.0


def test_multi_token_choices_are_scored_by_summed_logprob(tokenizer):
    model = add_lora(load_base_model("tiny-llama", RuntimeConfig()), LoraConfig())
    examples = parity_task(4, seed=0)
    long_choices = [
        Example(e.prompt, " even number", (" even number", " odd number")) for e in examples
    ]
    data = [encode(e, tokenizer, 64) for e in long_choices]
    assert any(len(c) > 1 for c in data[0].choice_ids)
    result = evaluate(model, data, batch_size=2, pad_id=tokenizer.pad_token_id)
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0


def _task_with_a_random_adapter(model_name: str):  # noqa: ANN202
    """A tiny model's task with a non-zero adapter, so that its outputs go through LoRA."""
    from fedpress.config import load_config
    from fedpress.task import build_task

    task = build_task(load_config(None, [f"model={model_name}", "data.builtin_size=300"]))
    generator = torch.Generator().manual_seed(0)
    task.set_adapter(
        {n: 0.05 * torch.randn(t.shape, generator=generator) for n, t in task.adapter().items()}
    )
    return task


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_scoring_only_answer_positions_equals_the_full_logits(monkeypatch, model_name):
    import fedpress.training as training

    task = _task_with_a_random_adapter(model_name)
    data = task.encode_all(task.splits.eval_examples[:40])
    try:
        fast = task.evaluate(data)
        monkeypatch.setattr(training, "PLAIN_HEAD_MODELS", ())  # every position's logits
        full = task.evaluate(data)
        task.set_adapter(task.initial_adapter)
        untrained = task.evaluate(data)
    finally:
        task.set_adapter(task.initial_adapter)
    assert abs(untrained.loss - full.loss) > 1e-3  # the adapter did change the scores
    assert fast.accuracy == full.accuracy
    assert abs(fast.loss - full.loss) < 1e-5 * full.loss


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_training_loss_on_answer_positions_equals_the_full_logits_loss(monkeypatch, model_name):
    """Same loss and same gradients as the model's own loss over every position's logits."""
    import fedpress.training as training

    task = _task_with_a_random_adapter(model_name)
    data = task.encode_all(task.splits.eval_examples[:6])
    model = task.model
    inputs = training.collate(data, task.tokenizer.pad_token_id, torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = training.answer_loss(model, inputs)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in trainable]

    try:
        fast, fast_grads = loss_and_grads()
        monkeypatch.setattr(training, "PLAIN_HEAD_MODELS", ())  # every position's logits
        full, full_grads = loss_and_grads()
        reference = model(**inputs).loss.item()  # transformers' own causal-LM loss
    finally:
        model.zero_grad(set_to_none=True)
        task.set_adapter(task.initial_adapter)
    assert fast == pytest.approx(full, rel=1e-5) and full == pytest.approx(reference, rel=1e-5)
    assert any(g.abs().sum() > 0 for g in fast_grads)
    for a, b in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
