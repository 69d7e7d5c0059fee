"""Training a CG-FedLLM autoencoder on recorded LoRA updates, and storing it.

The server pools the TGAP snapshots of all clients (the temporal ensemble), holds out a
validation part, fits the input gain, trains the autoencoder on random crops, reports
reconstruction MSE, cosine similarity and SNR (per-element means) on the validation part,
and saves `autoencoder.safetensors` + `autoencoder.json` + `tgap_curve.png`. How the snapshots
are collected over Flower is the method's business (`fedpress.methods.cg_fedllm.tgap`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from fedpress.autoencoders import Autoencoder, Layout, build_autoencoder
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.config import RunConfig
from fedpress.errors import FedpressError

if TYPE_CHECKING:
    from fedpress.methods.cg_fedllm.settings import AutoencoderConfig

log = logging.getLogger("fedpress")

WEIGHTS = "autoencoder.safetensors"
SNAPSHOT_FILE = "snapshots.safetensors"
META = "autoencoder.json"


def fit_input_gain(
    layout: Layout, updates: list[dict[str, torch.Tensor]], quantile: float
) -> float:
    """Gain so that `quantile` of |x / rms| (per tensor) is at 1, the tanh ceiling."""
    ratios = []
    for update in updates:
        rms = layout.rms(update)
        for name, r in zip(layout.names, rms.tolist(), strict=True):
            if r > 0:
                ratios.append((update[name].reshape(-1).abs() / r).float())
    values = torch.cat(ratios)
    if values.numel() > 2_000_000:
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
        values = values[pick[:2_000_000]]
    return max(float(torch.quantile(values, quantile)), 1e-3)


def _crops(images: torch.Tensor, crop: int, count: int, rng: random.Random, flat: bool):
    """`count` random crops (crop x crop) of the (N, H, W) images; 1-D models get contiguous
    runs of the stream instead (their input is the flattened image)."""
    n, height, width = images.shape
    out = []
    for _ in range(count):
        i = rng.randrange(n)
        if flat:
            length = crop * crop
            start = rng.randrange(0, height * width - length + 1)
            start -= start % 64
            out.append(images[i].reshape(-1)[start : start + length].reshape(crop, crop))
        else:
            top = rng.randrange(0, height - crop + 1)
            left = rng.randrange(0, width - crop + 1)
            out.append(images[i, top : top + crop, left : left + crop])
    return torch.stack(out)[:, None]


def reconstruction_metrics(
    codec: AutoencoderCodec,
    updates: list[dict[str, torch.Tensor]],
    inputs: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """How well decode(encode(input)) reconstructs each update (input: the update itself, or
    a perturbed copy). Per-element means on both sides: MSE, SNR = mean(x^2) / mean((x -
    x_hat)^2), cosine; and the update's RMS."""
    signal = error = count = 0.0
    cosines = []
    for update, given in zip(updates, inputs or updates, strict=True):
        decoded = codec.decode(codec.encode(given), codec.layout.shapes, validate=False)
        x = torch.cat([update[n].reshape(-1).double() for n in codec.layout.names])
        y = torch.cat([decoded[n].reshape(-1).double() for n in codec.layout.names])
        signal += float(x.pow(2).sum())
        error += float((x - y).pow(2).sum())
        count += x.numel()
        cosines.append(float(torch.nn.functional.cosine_similarity(x, y, dim=0)))
    mse = error / count
    snr = (signal / count) / mse if mse > 0 else math.inf
    return {
        "mse": mse,
        "cosine": sum(cosines) / len(cosines),
        "snr": snr,
        "snr_db": 10 * math.log10(snr) if 0 < snr < math.inf else math.inf,
        "update_rms": math.sqrt(signal / count),
    }


def train_autoencoder(
    updates: list[dict[str, torch.Tensor]],
    shapes,  # noqa: ANN001
    options: AutoencoderConfig,
    seed: int,
    out_dir: Path | None = None,
    init: Autoencoder | None = None,
) -> tuple[Autoencoder, dict]:
    """Train `options.arch` (or fine-tune `init`) on the pooled snapshots; returns the model
    and its metadata."""
    if len(updates) < 2:
        raise FedpressError(f"TGAP needs at least 2 snapshots, got {len(updates)}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    order = list(range(len(updates)))
    rng.shuffle(order)
    n_val = max(1, round(options.val_fraction * len(updates)))
    val_indices = sorted(order[:n_val])
    val = [updates[i] for i in val_indices]
    train = [updates[i] for i in order[n_val:]]
    layout = Layout(shapes)
    gain = fit_input_gain(layout, train, options.scale_quantile)
    if init is not None:
        model = copy.deepcopy(init)
    else:
        model = build_autoencoder(options.arch, options.compression, layout.width)
    codec = AutoencoderCodec(model, shapes, gain, options.latent_dtype)
    images = torch.stack([layout.to_image(u, codec.scales_of(u)) for u in train])
    val_images = torch.stack([layout.to_image(u, codec.scales_of(u)) for u in val])
    crop = min(options.crop, layout.height, layout.width)
    crop -= crop % 64
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    flat = model.arch == "cnn1d"
    history: list[dict] = []
    eval_every = max(1, options.train_steps // 10)
    started = time.perf_counter()
    for step in tqdm(range(1, options.train_steps + 1), desc=f"TGAP {options.arch}", unit="step"):
        model.train()
        if model.arch == "rowlinear":  # a dense map per row: whole images, it is cheap
            pick = [rng.randrange(len(images)) for _ in range(options.batch_size)]
            batch = images[pick][:, None]
        else:
            batch = _crops(images, crop, options.batch_size, rng, flat)
        loss = torch.nn.functional.mse_loss(model(batch).reshape(batch.shape), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == options.train_steps:
            model.eval()
            with torch.no_grad():
                recon = model(val_images[:, None]).reshape(val_images.shape)
                val_loss = float(torch.nn.functional.mse_loss(recon, val_images))
            history.append({"step": step, "train_mse": float(loss.detach()), "val_mse": val_loss})
    model.eval()
    meta = {
        "arch": model.arch,
        "compression": model.compression,
        "latent_dtype": options.latent_dtype,
        "input_gain": gain,
        "input_scaling": "per-tensor RMS x input_gain, clamped to [-1, 1]",
        "layout": {
            "height": layout.height,
            "width": layout.width,
            "numel": layout.numel,
            "padding": layout.padding,
        },
        "latent_shape": list(codec.latent_shape),
        "shapes": {name: list(shape) for name, shape in layout.shapes.items()},
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
        "snapshots_train": len(train),
        "snapshots_val": len(val),
        "val_indices": val_indices,
        "train_steps": options.train_steps,
        "train_s": time.perf_counter() - started,
        "history": history,
        "validation": reconstruction_metrics(codec, val),
        "train_fit": reconstruction_metrics(codec, train[: max(1, len(val))]),
    }
    if out_dir is not None:
        save_autoencoder(out_dir, model, meta)
    return model, meta


def save_autoencoder(folder: Path, model: Autoencoder, meta: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps(meta, indent=2))
    plot_history(meta, folder / "tgap_curve.png")


def load_autoencoder(folder: str | Path, shapes=None) -> tuple[Autoencoder, dict]:  # noqa: ANN001
    """A saved autoencoder; FedpressError if missing or made for other adapter shapes."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise FedpressError(f"no autoencoder in {folder} (needs {WEIGHTS} and {META})")
    meta = json.loads((folder / META).read_text())
    if shapes is not None:
        expected = {name: list(shape) for name, shape in shapes.items()}
        if meta.get("shapes") != expected:
            raise FedpressError(f"the autoencoder in {folder} was trained for other LoRA shapes")
    model = build_autoencoder(
        meta["arch"], int(meta["compression"]), meta.get("layout", {}).get("width", 0)
    )
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except RuntimeError as exc:
        raise FedpressError(f"{folder / WEIGHTS} does not fit {meta['arch']}: {exc}") from None
    return model.eval(), meta


def plot_history(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in meta["history"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [h["train_mse"] for h in meta["history"]], "o-", label="train MSE (batch)")
    ax.plot(steps, [h["val_mse"] for h in meta["history"]], "s-", label="validation MSE")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE of the scaled image")
    val = meta["validation"]
    ax.set_title(
        f"TGAP {meta['arch']} 1/{meta['compression']}: val cos {val['cosine']:.3f}, "
        f"SNR {val['snr_db']:.2f} dB"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def np_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def save_snapshots(
    path: Path, snapshots: list[dict[str, torch.Tensor]], collection: dict | None = None
) -> None:
    """The pooled TGAP snapshots (to retrain other architectures on the same collection), with
    what collecting them cost (`collection`) in the file's header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {
        f"{i:05d}/{name}": t.contiguous() for i, s in enumerate(snapshots) for name, t in s.items()
    }
    save_file(flat, str(path), metadata={"collection": json.dumps(collection or {})})


def snapshot_collection(path: Path) -> dict:
    """What collecting these snapshots cost (bytes up and down, client seconds, count)."""
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    try:
        collection = json.loads(header.get("collection", "{}"))
    except ValueError:
        return {}
    return collection if isinstance(collection, dict) else {}


def load_snapshots(path: str | Path, shapes) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
    path = Path(path)
    if not path.is_file():
        raise FedpressError(f"no TGAP snapshots at {path}")
    flat = load_file(str(path))
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        index, _, name = key.partition("/")
        snapshots.setdefault(index, {})[name] = tensor.float()
    out = [snapshots[k] for k in sorted(snapshots)]
    for snap in out:
        if {n: tuple(t.shape) for n, t in snap.items()} != dict(shapes):
            raise FedpressError(f"the snapshots in {path} were taken for other LoRA shapes")
    return out


def snapshots_path(where: str | Path) -> Path:
    """A snapshots.safetensors, or a run / `fedpress tgap` folder holding one."""
    path = Path(where)
    for candidate in (path, path / "autoencoder" / SNAPSHOT_FILE, path / SNAPSHOT_FILE):
        if candidate.is_file():
            return candidate
    raise FedpressError(
        f"no TGAP snapshots at {where} (expected {SNAPSHOT_FILE}, or a folder holding "
        f"autoencoder/{SNAPSHOT_FILE}; a cg-fedllm run or `fedpress tgap` writes it)"
    )


def retrain_from_snapshots(
    config: RunConfig,
    snapshots: str | Path,
    out_dir: Path,
    shapes,  # noqa: ANN001
) -> tuple[Autoencoder, dict]:
    """Train `config.autoencoder` on snapshots a TGAP phase already collected (no new
    messages); the collection's costs are copied from the snapshot file's header."""
    source = snapshots_path(snapshots)
    pooled = load_snapshots(source, shapes)
    folder = Path(out_dir) / "autoencoder"
    model, meta = train_autoencoder(pooled, shapes, config.autoencoder, config.seed, folder)
    meta.update(snapshot_collection(source))
    meta["snapshots_from"] = str(source)
    (folder / META).write_text(json.dumps(meta, indent=2))
    return model, meta


def noise_robustness(
    codec: AutoencoderCodec,
    updates: list[dict[str, torch.Tensor]],
    sigmas: list[float],
    seed: int = 0,
) -> list[dict[str, float]]:
    """Reconstruction of x from encode(x + N(0, sigma^2)): the pipeline's robustness to noise
    on the update (SPEC's analysis; sigma from 5e-5 to 5e-1)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for sigma in sigmas:
        noisy = [
            {n: t + sigma * torch.randn(t.shape, generator=generator) for n, t in update.items()}
            for update in updates
        ]
        metrics = reconstruction_metrics(codec, updates, noisy)
        rows.append(
            {
                "sigma": sigma,
                "cosine": metrics["cosine"],
                "snr_db": metrics["snr_db"],
                "update_rms": metrics["update_rms"],
            }
        )
    return rows


def analyze(folder: Path, sigmas: list[float], snapshots: Path | None = None) -> dict:
    """`fedpress ae-analyze`: validation SNR/cosine and noise robustness of a saved autoencoder."""
    model, meta = load_autoencoder(folder)
    shapes = {name: tuple(shape) for name, shape in meta["shapes"].items()}
    pooled = load_snapshots(snapshots or Path(folder) / SNAPSHOT_FILE, shapes)
    val = [pooled[i] for i in meta.get("val_indices", []) if i < len(pooled)] or pooled
    codec = AutoencoderCodec(model, shapes, float(meta["input_gain"]), meta["latent_dtype"])
    report = {
        "arch": meta["arch"],
        "compression": meta["compression"],
        "validation": reconstruction_metrics(codec, val),
        "noise": noise_robustness(codec, val, sigmas),
    }
    (Path(folder) / "analysis.json").write_text(json.dumps(report, indent=2))
    return report
