"""Tests of fedpress.codecs: formats, error bounds, error feedback, payload validation."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import ONE_CORE
from fedpress.codecs import (
    CODEC_NAMES,
    ERROR_FEEDBACK_BY_DEFAULT,
    Codec,
    ErrorFeedback,
    PayloadError,
    build_codec,
    pack_payload,
    payload_nbytes,
    shapes_of,
    unpack_payload,
    validate_payload,
)

# Shapes with odd sizes, a scalar, a 3-D tensor, and empty tensors: edge cases of every format.
EDGE_SHAPES = {
    "lora_A": (8, 40),
    "lora_B": (40, 8),
    "bias": (7,),
    "conv": (6, 5, 3),
    "one": (1,),
    "scalar": (),
    "empty": (0,),
    "empty2d": (0, 4),
}


def make_update(shapes: dict, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * scale for k, s in shapes.items()}


def codec(name: str, **kw) -> Codec:
    if name == "qsgd":
        kw.setdefault("seed", 0)
    return build_codec(name, **kw)


def roundtrip(c: Codec, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return c.decode(c.encode(update), shapes_of(update))


# ------------------------------------------------------------------ layout and round trip


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_payload_matches_declared_layout(name):
    c = codec(name)
    update = make_update(EDGE_SHAPES)
    payload = c.encode(update)
    layout = c.expected_layout(EDGE_SHAPES)
    assert list(payload) == list(layout)
    for key, s in layout.items():
        assert payload[key].dtype == s.dtype and payload[key].shape == s.shape, key
    validate_payload(c, payload, EDGE_SHAPES)
    assert payload_nbytes(payload) == c.max_payload_bytes(EDGE_SHAPES)
    out = c.decode(payload, EDGE_SHAPES)
    assert list(out) == list(EDGE_SHAPES)
    for k, s in EDGE_SHAPES.items():
        assert out[k].dtype == torch.float32 and tuple(out[k].shape) == s
        assert torch.isfinite(out[k]).all()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_payload_does_not_alias_update_and_decodes_read_only_arrays(name):
    c = codec(name, error_feedback=False)
    update = make_update({"w": (16, 32)})
    payload = c.encode(update)
    before = {k: v.copy() for k, v in payload.items()}
    update["w"].add_(100.0)
    for k in payload:
        np.testing.assert_array_equal(payload[k], before[k])
    for arr in payload.values():
        arr.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = c.decode(payload, {"w": (16, 32)})
    out["w"].add_(1.0)  # decoded tensors are writable and own their memory


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_flower_array_record_round_trip(name):
    flwr_app = pytest.importorskip("flwr.app")
    c = codec(name)
    update = make_update({"a": (8, 40), "b": (40, 8), "bias": (7,)})
    payload = c.encode(update)
    record = flwr_app.ArrayRecord({k: flwr_app.Array(v) for k, v in payload.items()})
    received = {k: arr.numpy() for k, arr in record.items()}
    expected = c.decode(payload, shapes_of(update))
    got = c.decode(received, shapes_of(update))
    for k in update:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_pack_unpack_single_array(name):
    c = codec(name)
    shapes = {"b": (40, 8), "a": (8, 40), "bias": (7,)}
    payload = c.encode(make_update(shapes))
    packed = pack_payload(c, payload, shapes)
    assert packed.dtype == np.uint8 and packed.size == c.max_payload_bytes(shapes)
    # the receiver's shapes may be listed in another order: packing sorts the keys
    back = unpack_payload(c, packed, dict(reversed(list(shapes.items()))))
    assert set(back) == set(payload)
    for k in payload:
        np.testing.assert_array_equal(back[k], payload[k])
        assert back[k].dtype == payload[k].dtype
    with pytest.raises(PayloadError, match="bytes"):
        unpack_payload(c, packed[:-1], shapes)


# ------------------------------------------------------------------ exact byte counts


def nbytes_of(name: str, shapes: dict, **kw) -> int:
    c = codec(name, **kw)
    payload = c.encode(make_update(shapes))
    n = payload_nbytes(payload)
    assert n == c.max_payload_bytes(shapes)
    return n


def test_byte_counts_computed_by_hand():
    m = {"w": (128, 64)}  # 8192 elements
    assert nbytes_of("none", m) == 8192 * 4
    assert nbytes_of("fp16", m) == 8192 * 2
    assert nbytes_of("bf16", m) == 8192 * 2
    # int8: 1 byte per element + one fp32 scale per block of 64
    assert nbytes_of("int8", m) == 8192 + (8192 // 64) * 4
    assert nbytes_of("int8", {"w": (100,)}) == 100 + 2 * 4
    assert nbytes_of("int8", m, block_size=32) == 8192 + 256 * 4
    # int4: two elements per byte (odd tail padded) + fp32 scales
    assert nbytes_of("int4", m) == 4096 + 128 * 4
    assert nbytes_of("int4", {"w": (101,)}) == 51 + 2 * 4
    # topk: k = ceil(0.01 * n) int32 indices + fp32 values
    assert nbytes_of("topk", m) == math.ceil(0.01 * 8192) * (4 + 4)
    assert nbytes_of("topk", m, count=10, value_dtype="fp16") == 10 * (4 + 2)
    assert nbytes_of("topk", {"w": (5,)}, count=10) == 5 * 8
    assert nbytes_of("topk", {"w": (5,)}) == 1 * 8  # at least one entry
    # powersgd: P (m x r) + Q (n x r) fp32 when r(m + n) < mn, else raw fp32
    assert nbytes_of("powersgd", m) == (128 + 64) * 4 * 4
    assert nbytes_of("powersgd", {"A": (8, 576)}) == (8 + 576) * 4 * 4
    assert nbytes_of("powersgd", {"A": (8, 576)}, rank=8) == 8 * 576 * 4  # no gain: raw
    assert nbytes_of("powersgd", {"v": (100,)}) == 100 * 4
    assert nbytes_of("powersgd", {"c": (16, 4, 4)}, rank=2) == (16 + 16) * 2 * 4
    # qsgd: fp32 norm + 1 sign bit + 5 level bits (levels=16) per element
    assert nbytes_of("qsgd", m) == 4 + 8192 // 8 + 8192 * 5 // 8
    assert nbytes_of("qsgd", m, levels=15) == 4 + 1024 + 8192 * 4 // 8
    assert nbytes_of("qsgd", m, bucket_size=512) == 16 * 4 + 1024 + 5120
    assert nbytes_of("qsgd", {"v": (13,)}) == 4 + 2 + math.ceil(13 * 5 / 8)
    # sign: fp32 scale + 1 bit per element
    assert nbytes_of("sign", m) == 4 + 1024
    assert nbytes_of("sign", {"v": (13,)}) == 4 + 2


def test_lora_layout_compression_ratios():
    shapes = {}
    for layer in range(30):
        for mod in ("q", "k", "v", "o"):
            shapes[f"l{layer}.{mod}.A"] = (8, 576)
            shapes[f"l{layer}.{mod}.B"] = (576, 8)
    fp32 = 240 * 4608 * 4
    ratio = {n: fp32 / build_codec(n).max_payload_bytes(shapes) for n in CODEC_NAMES}
    assert ratio["none"] == 1.0
    assert ratio["fp16"] == ratio["bf16"] == 2.0
    assert ratio["int8"] == pytest.approx(256 / 68)  # ~3.76x
    assert ratio["int4"] == pytest.approx(256 / 36)  # ~7.11x
    assert ratio["topk"] == pytest.approx(4608 * 4 / (47 * 8))  # ~49x
    assert ratio["powersgd"] == pytest.approx(4608 / (584 * 4))  # ~1.97x
    assert ratio["qsgd"] == pytest.approx(4608 * 4 / (4 + 576 + 2880))  # ~5.33x
    assert ratio["sign"] == pytest.approx(4608 * 4 / (4 + 576))  # ~31.8x


# ------------------------------------------------------------------ error bounds


def test_none_is_lossless():
    update = make_update(EDGE_SHAPES)
    out = roundtrip(build_codec("none"), update)
    for k in update:
        assert torch.equal(out[k], update[k])


def wide_range_values(n: int, lo: float, hi: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = 10 ** (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return (mag * sign).float()


def test_fp16_error_bound_and_saturation():
    x = wide_range_values(4000, -9, 4.5)  # subnormal range up to near the fp16 max
    out = roundtrip(build_codec("fp16"), {"x": x})["x"]
    bound = 2.0**-11 * x.abs() + 2.0**-25  # half an ulp (relative) / half the subnormal step
    assert bool(((out - x).abs() <= bound).all())
    normal = x.abs() > 1e-4
    assert float(((out - x).abs() / x.abs())[normal].max()) < 1e-3
    big = roundtrip(build_codec("fp16"), {"x": torch.tensor([1e6, -1e9, 3.0])})["x"]
    assert big.tolist() == [65504.0, -65504.0, 3.0]


def test_bf16_matches_torch_rounding_and_saturates():
    x = wide_range_values(4000, -30, 30)
    out = roundtrip(build_codec("bf16"), {"x": x})["x"]
    assert torch.equal(out, x.to(torch.bfloat16).float())
    assert bool(((out - x).abs() <= 2.0**-8 * x.abs()).all())
    fmax = torch.finfo(torch.float32).max
    sat = roundtrip(build_codec("bf16"), {"x": torch.tensor([fmax, -fmax])})["x"]
    assert torch.isfinite(sat).all() and sat[0] > 3e38 and sat[1] < -3e38


@pytest.mark.parametrize(("name", "qmax"), [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("n", [640, 1001])
def test_blockwise_error_within_half_step_per_block(name, qmax, n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=g) * torch.logspace(-3, 1, n)  # blocks of very different scale
    x[130] = 1000.0  # an outlier only hurts its own block
    out = roundtrip(build_codec(name), {"x": x})["x"]
    nb = -(-n // 64)
    pad = nb * 64 - n
    absmax = torch.nn.functional.pad(x.abs(), (0, pad)).reshape(nb, 64).amax(1)
    err = torch.nn.functional.pad((out - x).abs(), (0, pad)).reshape(nb, 64)
    bound = absmax / (2 * qmax) * (1 + 1e-5)  # round-to-nearest: half a quantisation step
    assert bool((err <= bound[:, None]).all())
    assert bool((err.amax(1) > 0).any())  # really lossy (the test is not vacuous)
    # every block's absmax is reproduced exactly up to fp32 rounding
    dec_absmax = torch.nn.functional.pad(out.abs(), (0, pad)).reshape(nb, 64).amax(1)
    torch.testing.assert_close(dec_absmax, absmax, rtol=1e-6, atol=0)


def test_int4_nibble_packing_layout():
    c = build_codec("int4", block_size=4)
    payload = c.encode({"x": torch.tensor([1.0, -1.0, 0.0, 0.25, 7.0])})
    # block 1: absmax 1 -> levels 7, -7, 0, round(1.75)=2 -> nibbles 15, 1, 8, 10
    # block 2: level 7 -> nibble 15; padding nibble 8
    assert payload["x/q4"].tolist() == [15 | (1 << 4), 8 | (10 << 4), 15 | (8 << 4)]
    assert payload["x/scale"].tolist() == pytest.approx([1 / 7, 1.0])


def test_topk_keeps_largest_exactly_and_zeroes_the_rest():
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(2))
    c = build_codec("topk", fraction=0.05, error_feedback=False)
    payload = c.encode({"x": x})
    out = c.decode(payload, {"x": (50, 40)})["x"]
    kept = out != 0
    assert int(kept.sum()) == 100
    assert torch.equal(out[kept], x[kept])
    assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    idx = payload["x/idx"]
    assert idx.dtype == np.int32 and bool((np.diff(idx) > 0).all())


def test_topk_fp16_values_and_count_option():
    x = torch.tensor([0.1, -5.0, 0.2, 1e6, -0.3])
    c = build_codec("topk", count=2, value_dtype="fp16", error_feedback=False)
    payload = c.encode({"x": x})
    assert payload["x/idx"].tolist() == [1, 3]
    assert payload["x/val"].dtype == np.float16
    assert c.decode(payload, {"x": (5,)})["x"].tolist() == [0.0, -5.0, 0.0, 65504.0, 0.0]


@pytest.mark.parametrize("value_dtype", ["fp16", "int8"])
def test_topk_packed_indices_and_int8_values_keep_the_same_entries(value_dtype):
    x = torch.randn(576, 8, generator=torch.Generator().manual_seed(4))
    plain = build_codec("topk", fraction=0.02, value_dtype="fp32", error_feedback=False)
    packed = build_codec(
        "topk", fraction=0.02, value_dtype=value_dtype, packed_indices=True, error_feedback=False
    )
    shapes = {"x": (576, 8)}
    want = plain.decode(plain.encode({"x": x}), shapes)["x"]
    payload = packed.encode({"x": x})
    got = packed.decode(payload, shapes)["x"]
    assert torch.equal(got != 0, want != 0)  # the same 93 positions
    # fp16: relative rounding 2^-11; int8: half a step of absmax / 127.
    tol = 1e-3 * float(x.abs().max()) if value_dtype == "fp16" else float(x.abs().max()) / 254
    assert float((got - want).abs().max()) <= tol + 1e-7
    # 4608 positions need 13 bits: 93 indices in ceil(93 * 13 / 8) = 152 bytes, not 372.
    assert payload["x/idx"].nbytes == 152
    per_value = 2 if value_dtype == "fp16" else 1
    assert nbytes_of(
        "topk", shapes, fraction=0.02, value_dtype=value_dtype, packed_indices=True
    ) == 152 + 93 * per_value + (4 if value_dtype == "int8" else 0)


def test_validation_rejects_topk_int8_levels_outside_the_quantiser_range():
    c = build_codec("topk", count=4, value_dtype="int8", error_feedback=False)
    shapes = {"x": (100,)}
    payload = c.encode({"x": torch.arange(100, dtype=torch.float32)})
    assert payload["x/val"].tolist() == [123, 124, 126, 127]  # 96..99 over absmax 99 / 127
    levels = payload["x/val"].copy()
    levels[0] = -128  # int8 holds it; the quantiser never produces it
    reject(c, {**payload, "x/val": levels}, shapes, "below the minimum")


def test_validation_rejects_bad_packed_topk_indices():
    c = build_codec("topk", count=4, packed_indices=True, error_feedback=False)
    shapes = {"x": (100,)}  # 7 bits a position: 4 in 4 bytes
    payload = c.encode({"x": torch.arange(100, dtype=torch.float32)})
    assert c.decode(payload, shapes)["x"].nonzero().flatten().tolist() == [96, 97, 98, 99]
    from fedpress.codecs._bits import pack_uint

    for bad in ([1, 1, 2, 3], [5, 3, 8, 9], [1, 2, 3, 127]):  # repeated, unordered, >= 100
        arr = pack_uint(np.array(bad), 7)
        with pytest.raises(PayloadError, match="packed indices"):
            c.decode({**payload, "x/idx": arr}, shapes)


def test_powersgd_exact_on_low_rank_matrices():
    g = torch.Generator().manual_seed(3)
    for rank_of_m in (4, 2):
        m = torch.randn(64, rank_of_m, generator=g) @ torch.randn(rank_of_m, 48, generator=g)
        out = roundtrip(build_codec("powersgd", rank=4, error_feedback=False), {"m": m})["m"]
        torch.testing.assert_close(out, m, rtol=1e-4, atol=1e-4)
    full = torch.randn(64, 48, generator=g)
    err = (roundtrip(build_codec("powersgd", error_feedback=False), {"m": full})["m"] - full).norm()
    assert err > 0.5 * full.norm()  # a full-rank matrix really is approximated


def test_powersgd_warm_start_converges_to_best_rank_r():
    g = torch.Generator().manual_seed(4)
    u, _ = torch.linalg.qr(torch.randn(60, 60, generator=g))
    v, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
    sv = torch.tensor([10.0, 8, 6, 4, 3.0] + [0.3] * 35)
    m = (u[:, :40] * sv) @ v.T
    best = float(sv[4:].norm())  # Eckart-Young: optimal rank-4 error

    def error_after(rounds: int, warm: bool) -> float:
        c = build_codec("powersgd", rank=4, warm_start=warm, error_feedback=False)
        for _ in range(rounds):
            out = roundtrip(c, {"m": m})["m"]
        return float((out - m).norm())

    warm = error_after(10, True)
    assert warm == pytest.approx(best, rel=1e-3)
    assert error_after(10, False) > 1.02 * best  # without reuse of Q it does not converge
    c = build_codec("powersgd", rank=4, error_feedback=False)
    c.encode({"m": m, "bias": torch.ones(3)})
    state = c.state_dict()
    assert state["q/m"].shape == (40, 4) and "q/bias" not in state


def test_powersgd_more_iterations_help_without_warm_start():
    g = torch.Generator().manual_seed(5)
    m = torch.randn(80, 6, generator=g) @ torch.randn(6, 50, generator=g)
    m += 0.01 * torch.randn(80, 50, generator=g)

    def err(its: int) -> float:
        c = build_codec("powersgd", rank=6, power_iterations=its, warm_start=False)
        return float((roundtrip(c, {"m": m})["m"] - m).norm() / m.norm())

    assert err(3) <= err(1) + 1e-6
    assert err(3) < 0.01


def test_qsgd_is_unbiased_and_on_grid():
    x = torch.randn(300, generator=torch.Generator().manual_seed(6))
    c = build_codec("qsgd", levels=4, seed=1)
    norm = float(x.norm())
    step = norm / 4
    total = torch.zeros_like(x)
    trials = 400
    for _ in range(trials):
        out = roundtrip(c, {"x": x})["x"]
        levels = out.abs() / step
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
        assert bool(((out == 0) | (out.sign() == x.sign())).all())
        # stochastic rounding: only the two grid points around |x|
        assert bool(((out - x).abs() <= step * (1 + 1e-5)).all())
        total += out
    # exact variance of one decode: step^2 p (1 - p), p = fractional part of |x| / step
    frac = x.abs() / step - torch.floor(x.abs() / step)
    std_of_mean = step * torch.sqrt(frac * (1 - frac) / trials) + 1e-6
    z = (total / trials - x) / std_of_mean
    assert float(z.abs().max()) < 5  # unbiased (deterministic rounding would give z ~ 50)
    assert 0.7 < float((z**2).mean()) < 1.3  # and the variance is the QSGD one


def test_qsgd_seed_makes_payload_reproducible():
    update = make_update({"w": (20, 30)})
    p1 = build_codec("qsgd", seed=7).encode(update)
    p2 = build_codec("qsgd", seed=7).encode(update)
    p3 = build_codec("qsgd", seed=8).encode(update)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert not np.array_equal(p1["w/level"], p3["w/level"])


def test_sign_decodes_to_scaled_sign():
    x = torch.tensor([[0.5, -1.5, 0.0], [2.0, -0.25, 1.0]])
    out = roundtrip(build_codec("sign", error_feedback=False), {"x": x})["x"]
    scale = float(x.abs().mean())
    expected = torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, 1.0]]) * scale
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------ error feedback


@pytest.mark.parametrize(
    ("name", "options"),
    [("topk", {"count": 3}), ("sign", {}), ("powersgd", {"rank": 1}), ("int4", {})],
)
def test_error_feedback_conserves_the_sum(name, options):
    c = build_codec(name, error_feedback=True, **options)
    assert isinstance(c, ErrorFeedback)
    shapes = {"a": (12, 10), "b": (9,)}
    sent = {k: torch.zeros(s) for k, s in shapes.items()}
    true = {k: torch.zeros(s) for k, s in shapes.items()}
    for rnd in range(6):
        update = make_update(shapes, seed=rnd)
        out = c.decode(c.encode(update), shapes)
        for k in shapes:
            sent[k] += out[k]
            true[k] += update[k]
    residual = c.residual
    for k in shapes:  # nothing is lost: sent + still-owed == sum of updates
        torch.testing.assert_close(sent[k] + residual[k], true[k], rtol=1e-5, atol=1e-5)
    assert residual["a"].norm() > 0  # (powersgd sends the 1-D "b" raw: no residual there)


def test_error_feedback_sum_of_decodes_approaches_sum_of_updates():
    g = torch.Generator().manual_seed(9)
    grad = torch.randn(40, generator=g)

    def relative_errors(ef: bool, checkpoints=(20, 80)) -> list[float]:
        c = build_codec("topk", count=4, error_feedback=ef)
        total, errors = torch.zeros(40), []
        for rnd in range(1, max(checkpoints) + 1):
            total += c.decode(c.encode({"g": grad}), {"g": (40,)})["g"]
            if rnd in checkpoints:
                errors.append(float((total - rnd * grad).norm() / (rnd * grad).norm()))
        return errors

    early, late = relative_errors(True)
    assert late < 0.06 and late < 0.5 * early  # the residual stays bounded: error ~ 1 / rounds
    assert min(relative_errors(False)) > 0.7  # without it, 90% of the entries are never sent


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("topk", {"fraction": 0.1}),
        ("sign", {}),
        ("powersgd", {"rank": 2}),
        ("qsgd", {"seed": 3, "error_feedback": True}),
    ],
)
def test_state_dict_restores_the_next_payload(name, options):
    shapes = {"a": (12, 10), "b": (10, 12), "bias": (12,)}
    original = build_codec(name, **options)
    original.encode(make_update(shapes, seed=1))
    original.encode(make_update(shapes, seed=2))
    # persist like Context.state would: plain numpy copies
    state = {k: np.array(v, copy=True) for k, v in original.state_dict().items()}
    assert any(k.startswith("residual/") for k in state)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    restored = build_codec(name, **options)
    restored.load_state_dict(state)
    fresh = build_codec(name, **options)
    nxt = make_update(shapes, seed=3)
    p_orig, p_rest, p_fresh = original.encode(nxt), restored.encode(nxt), fresh.encode(nxt)
    for k in p_orig:
        np.testing.assert_array_equal(p_rest[k], p_orig[k])
    assert any(not np.array_equal(p_fresh[k], p_orig[k]) for k in p_orig)  # state mattered


def test_error_feedback_keeps_residual_of_absent_tensors_and_checks_shapes():
    c = build_codec("topk", count=1)
    c.encode({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([5.0, 2.0])})
    c.encode({"a": torch.tensor([0.0, 0.0])})
    payload = c.encode({"b": torch.tensor([0.0, 0.0])})
    assert payload["b/idx"].tolist() == [1] and payload["b/val"].tolist() == [2.0]
    with pytest.raises(ValueError, match="residual"):
        c.encode({"a": torch.zeros(3)})
    with pytest.raises(ValueError, match="unexpected"):
        c.load_state_dict({"bogus": np.zeros(1)})


def test_error_feedback_payload_is_the_inner_format():
    shapes = {"w": (30, 20)}
    ef = build_codec("sign")
    plain = build_codec("sign", error_feedback=False)
    payload = ef.encode(make_update(shapes))
    validate_payload(plain, payload, shapes)
    assert ef.max_payload_bytes(shapes) == plain.max_payload_bytes(shapes)
    assert ef.label == "sign+ef"


# ------------------------------------------------------------------ validation


def valid(name: str, shapes=None, **kw):
    shapes = shapes or {"a": (8, 40), "bias": (9,)}
    c = codec(name, **kw)
    return c, dict(c.encode(make_update(shapes))), shapes


def reject(c: Codec, payload: dict, shapes: dict, match: str) -> str:
    with pytest.raises(PayloadError, match=match) as info:
        validate_payload(c, payload, shapes)
    with pytest.raises(PayloadError):
        c.decode(payload, shapes)
    message = str(info.value)
    assert "\n" not in message
    return message


SAME_SIZE_OTHER_DTYPE = {1: np.int8, 2: np.int16, 4: np.int32}


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_validation_rejects_structural_errors(name):
    c, payload, shapes = valid(name)
    key = next(iter(payload))
    missing = {k: v for k, v in payload.items() if k != key}
    reject(c, missing, shapes, "missing keys")
    extra = {k: v for k, v in missing.items()}
    extra["intruder"] = payload[key]
    reject(c, extra, shapes, "unexpected keys 'intruder'")
    for k, arr in payload.items():
        other = SAME_SIZE_OTHER_DTYPE[arr.dtype.itemsize]
        if arr.dtype == other:
            other = np.uint8 if arr.dtype.itemsize == 1 else np.float32
        reject(c, {**payload, k: arr.view(other)}, shapes, f"{k}.*dtype")
        reject(c, {**payload, k: arr.reshape(1, *arr.shape)}, shapes, f"{k}.*shape")
        if arr.size:
            reject(c, {**payload, k: arr[:-1]}, shapes, f"{k}.*shape")
    reject(c, {**payload, key: list(payload[key])}, shapes, "not a numpy array")
    reject(c, {**payload, "huge": np.zeros(10**6, np.uint8)}, shapes, "bytes")
    grown = {**payload, key: np.concatenate([payload[key], payload[key]])}
    reject(c, grown, shapes, "more than")


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("bad", ["NaN", "Inf"])
def test_validation_rejects_nan_and_inf(name, bad):
    c, payload, shapes = valid(name)
    layout = c.expected_layout(shapes)
    keys = [k for k, s in layout.items() if s.bf16 or np.issubdtype(s.dtype, np.floating)]
    assert keys, "every codec carries some float array"
    for key in keys:
        arr = payload[key].copy()
        if layout[key].bf16:
            arr[0] = 0x7FC0 if bad == "NaN" else 0xFF80
        else:
            arr.reshape(-1)[0] = np.nan if bad == "NaN" else -np.inf
        reject(c, {**payload, key: arr}, shapes, f"{key}.*{bad}")


def test_validation_rejects_bad_topk_indices():
    c, payload, shapes = valid("topk", fraction=0.05)  # k = 16 for a (8, 40) tensor
    idx = payload["a/idx"]
    for bad, match in [(320, "above the maximum 319"), (-1, "below the minimum 0")]:
        arr = idx.copy()
        arr[-1 if bad > 0 else 0] = bad
        reject(c, {**payload, "a/idx": arr}, shapes, match)
    dup = idx.copy()
    dup[1] = dup[0]
    reject(c, {**payload, "a/idx": dup}, shapes, "strictly increasing")


def test_validation_rejects_values_the_encoder_never_produces():
    c, payload, shapes = valid("int8")
    q = payload["a/q"].copy()
    q[0] = -128
    reject(c, {**payload, "a/q": q}, shapes, "below the minimum -127")
    scale = payload["a/scale"].copy()
    scale[0] = -1.0
    reject(c, {**payload, "a/scale": scale}, shapes, "below the minimum 0")

    c, payload, shapes = valid("int4")
    q4 = payload["a/q4"].copy()
    q4[3] &= 0xF0  # low nibble 0 = level -8
    reject(c, {**payload, "a/q4": q4}, shapes, "nibble 0")
    q4 = payload["bias/q4"].copy()  # 9 elements: the last high nibble is padding
    q4[-1] = (q4[-1] & 0x0F) | (3 << 4)
    reject(c, {**payload, "bias/q4": q4}, shapes, "padding")

    c, payload, shapes = valid("qsgd")  # 5 bits per level, levels <= 16
    level = payload["a/level"].copy()
    level[0] |= 0x1F  # first level = 31
    reject(c, {**payload, "a/level": level}, shapes, "level 31 above the maximum 16")


def test_decode_rejects_non_finite_results():
    c, payload, shapes = valid("int8")
    q = payload["a/q"].copy()
    q[:] = 127
    scale = payload["a/scale"].copy()
    scale[:] = 3e38
    with pytest.raises(PayloadError, match="decodes to NaN or Inf"):
        c.decode({**payload, "a/q": q, "a/scale": scale}, shapes)

    c, payload, shapes = valid("powersgd", shapes={"m": (20, 30)})
    big = {k: np.full_like(v, 1e30) for k, v in payload.items()}
    validate_payload(c, big, shapes)  # every array is finite ...
    with pytest.raises(PayloadError, match="decodes to NaN or Inf"):  # ... their product is not
        c.decode(big, shapes)


def test_sender_rejects_bad_updates():
    c = build_codec("int8")
    with pytest.raises(ValueError, match="NaN or Inf"):
        c.encode({"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="NaN or Inf"):
        build_codec("topk").encode({"w": torch.tensor([float("inf"), 1.0])})
    with pytest.raises(ValueError, match="floating-point"):
        c.encode({"w": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="negative"):
        c.max_payload_bytes({"w": (-1, 3)})


# ------------------------------------------------------------------ registry and options


def test_registry_names_and_error_feedback_defaults():
    assert set(CODEC_NAMES) == {
        "none", "fp16", "bf16", "int8", "int4", "topk", "powersgd", "qsgd", "sign"
    }  # fmt: skip
    assert {"topk", "powersgd", "sign"} == ERROR_FEEDBACK_BY_DEFAULT
    for name in CODEC_NAMES:
        c = build_codec(name)
        assert isinstance(c, ErrorFeedback) == (name in ERROR_FEEDBACK_BY_DEFAULT)
        assert not isinstance(build_codec(name, error_feedback=False), ErrorFeedback)
        assert isinstance(build_codec(name, error_feedback=True), ErrorFeedback)


def test_default_options():
    assert build_codec("int8").options.block_size == 64
    assert build_codec("int4").options.block_size == 64
    assert build_codec("topk").inner.k_for(1000) == 10
    p = build_codec("powersgd").inner.options
    assert (p.rank, p.power_iterations, p.warm_start) == (4, 1, True)
    assert build_codec("qsgd").options.levels == 16


def test_unknown_codec_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown codec 'int9' \(did you mean 'int8'\?\)") as e:
        build_codec("int9")
    assert "valid codecs: none, fp16, bf16, int8, int4, topk, powersgd, qsgd, sign" in str(e.value)
    with pytest.raises(ValueError, match="did you mean 'powersgd'"):
        build_codec("powersdg")
    with pytest.raises(ValueError, match="valid codecs") as e:
        build_codec("zzz")
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("int8", {"blocksize": 32}, r"unknown option 'blocksize'.*did you mean 'block_size'"),
        ("topk", {"k": 3}, r"valid options: fraction, count, value_dtype, packed_indices"),
        ("topk", {"packed_indices": "yes"}, "packed_indices must be true or false"),
        ("none", {"block_size": 3}, r"unknown option 'block_size' for codec 'none'"),
        ("int8", {"block_size": 0}, "block_size must be >= 1"),
        ("int4", {"block_size": 2.5}, "block_size must be an integer"),
        ("topk", {"fraction": 1.5}, "fraction must be in"),
        ("topk", {"fraction": 0.1, "count": 3}, "not both"),
        ("topk", {"value_dtype": "bf16"}, "value_dtype"),
        ("powersgd", {"rank": True}, "rank must be an integer"),
        ("qsgd", {"levels": 256}, r"levels must be in \[1, 255\]"),
        ("sign", {"error_feedback": "yes"}, "error_feedback must be true or false"),
    ],
)
def test_bad_options_are_rejected(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_codec(name, **options)


@pytest.mark.slow  # a real Flower simulation
def test_codecs_shrink_the_measured_messages(tmp_path):
    from safetensors.torch import load_file

    from fedpress.config import load_config
    from fedpress.runner import run_config

    out = tmp_path / "run"
    overrides = ["model=tiny-qwen2", "num_clients=2", "rounds=2", "uplink_codec=int4"]
    run_config(load_config(None, [*overrides, "downlink_codec=int8", *ONE_CORE]), out)
    adapter_bytes = sum(t.numel() * 4 for t in load_file(out / "adapter.safetensors").values())
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rounds[1:]:
        assert r["clients_ok"] == 2
        # int4 with fp32 scales per 64 values: 0.5625 bytes per number, ~7x below fp32.
        assert all(b < adapter_bytes / 5 for b in r["bytes_up_per_client"])
        assert all(b < adapter_bytes / 2.5 for b in r["bytes_down_per_client"])
