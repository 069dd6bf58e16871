"""Attention pictures in the layout of the paper's Fig. 3.

    python train/visualize.py RUN_OR_CKPT --shards DIR --split val --out attention.png [--compare CBAM_RUN]

One row per clip (the first ``--clips`` of the split, one centre view each, as evaluation sees them): five
evenly spaced frames of the model's T (all T when T < 5), each with the spatial mask overlaid, then (with
``--compare``) the same frames with the second model's mask beside them, and a heatmap of the first
model's channel mask over time (T x the ``--channels`` channels that vary most over the clip's frames).

The spatial mask of a frame is each stage's mean block mask (as AFR's ``mean`` source), upsampled to the
crop and averaged over the stages; the channel heatmap is the last attention block's. Each row's masks
share one colour scale (the row's min..max), so the picture shows where and when a mask rises, not its
absolute value. RUN_OR_CKPT is a run folder (its best checkpoint, else its newest) or a checkpoint folder;
DIR holds the shards (``<data.shards>/<dataset>`` or ``<data.shards>``, then the run's dataset is used).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import cli  # first: keeps train/ off sys.path when run by path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, ResourceError

SHOWN_FRAMES = 5


def load_run(path: Path) -> tuple[torch.nn.Module, dict, Path]:
    """(model in eval mode, the run's config, checkpoint) from a run or checkpoint folder."""
    from train.checkpoint import read_trainer_state
    from train.export import find_checkpoint, raw_state_dict
    from w3model import build_model
    ckpt = find_checkpoint(path)
    state = read_trainer_state(ckpt)
    model = build_model(**dict(state["model"], pretrained=None))    # the checkpoint holds every weight
    model.load_state_dict(raw_state_dict(ckpt), strict=True)
    return model.eval(), state["config"], ckpt


def shards_folder(shards: Path, config: dict) -> Path:
    if (shards / "manifest.json").is_file():
        return shards
    if (shards / config["data"]["dataset"] / "manifest.json").is_file():
        return shards / config["data"]["dataset"]
    raise ResourceError(f"--shards {shards}: no manifest.json there nor in {shards / config['data']['dataset']} "
                        f"(give the shard tool's output folder)")


def first_clips(shards: Path, split: str, config: dict, clips: int) -> dict:
    """One batch of the split's first clips, one centre view each (the evaluation's val protocol)."""
    from pipeline.loader import build_loader
    data = config["data"]
    loader = build_loader(shards, split=split, mode="val", batch_size=clips, num_segments=data["num_segments"],
                          crop_size=data["crop_size"], scale_size=data["scale_size"], seed=config["seed"],
                          num_threads=data["num_threads"], backend=data["backend"])
    batch = next(iter(loader))
    return {**batch, "class_names": json.loads((shards / "manifest.json").read_text())["classes"]}


def spatial_masks(attention: dict, size: tuple[int, int]) -> np.ndarray:
    """(B, T, H, W): per stage the mean of its blocks' spatial masks, upsampled to ``size``, averaged."""
    stages: dict[str, list[torch.Tensor]] = {}
    for name, maps in attention.items():
        if "spatial" in maps:
            stages.setdefault(name.split(".")[0], []).append(maps["spatial"].float())
    if not stages:
        raise ConfigError("the model has no spatial attention masks to draw (tsm_w3 or tsm_cbam, with "
                          "model.w3_spatial true)")
    upsampled = []
    for blocks in stages.values():
        mean = torch.stack(blocks).mean(0)                               # (B, T, h, w)
        upsampled.append(F.interpolate(mean, size=size, mode="bilinear", align_corners=False))
    return torch.stack(upsampled).mean(0).numpy()


def channel_heatmap(attention: dict, channels: int) -> np.ndarray:
    """(B, T, channels): the last attention block's channel mask, the channels varying most over T."""
    last = attention[list(attention)[-1]]["channel"].float().numpy()     # (B, T, C)
    order = np.argsort(-last.std(axis=1), axis=1)[:, :channels]          # per clip
    return np.take_along_axis(last, order[:, None, :], axis=2)


def attention_maps(model: torch.nn.Module, frames: torch.Tensor, channels: int) -> dict:
    with torch.no_grad():
        out = model(frames, return_attention=True)
    if not out["attention"]:
        raise ConfigError("the model has no attention (arch tsm_w3 or tsm_cbam is needed)")
    return {"spatial": spatial_masks(out["attention"], tuple(frames.shape[-2:])),
            "channel": channel_heatmap(out["attention"], channels),
            "predicted": {h: v.argmax(1).tolist() for h, v in out["logits"].items()}}


def to_images(frames: torch.Tensor) -> np.ndarray:
    """Loader frames (ImageNet-normalised) -> (B, T, H, W, 3) floats in [0, 1]."""
    from pipeline.loader import IMAGENET_MEAN, IMAGENET_STD
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return (frames * std + mean).clamp(0, 1).permute(0, 1, 3, 4, 2).numpy()


def shown_frames(t: int) -> list[int]:
    return sorted(set(np.linspace(0, t - 1, min(SHOWN_FRAMES, t)).round().astype(int).tolist()))


def draw(images: np.ndarray, models: list[tuple[str, dict]], titles: list[str], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = shown_frames(images.shape[1])
    columns = len(frames) * len(models) + 1
    fig, axes = plt.subplots(len(images), columns, figsize=(1.6 * columns, 1.7 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for m, (name, maps) in enumerate(models):
            masks = maps["spatial"][row]
            low, high = float(masks.min()), float(masks.max())
            for k, t in enumerate(frames):
                ax = axes[row, m * len(frames) + k]
                ax.imshow(image[t])
                ax.imshow(masks[t], cmap="jet", alpha=0.45, vmin=low, vmax=high + 1e-6)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{name} t={t}", fontsize=7)
        heat = axes[row, -1]
        heat.imshow(models[0][1]["channel"][row].T, aspect="auto", cmap="viridis")
        heat.set_xlabel("frame", fontsize=6)
        heat.set_ylabel("channel", fontsize=6)
        heat.tick_params(labelsize=5)
        if row == 0:
            heat.set_title(f"{models[0][0]} channel mask", fontsize=7)
        axes[row, 0].set_ylabel(titles[row], fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def visualize(run: Path, shards: Path, split: str, out: Path, compare: Path | None = None, clips: int = 3,
              channels: int = 16) -> dict:
    """Write the picture; returns what it drew (the masks per model, frames shown, row titles)."""
    model, config, ckpt = load_run(run)
    batch = first_clips(shards_folder(shards, config), split, config, clips)
    models = [(config["model"]["arch"], attention_maps(model, batch["frames"], channels))]
    if compare is not None:
        other, other_config, _ = load_run(compare)
        if other_config["data"]["num_segments"] != config["data"]["num_segments"]:
            raise ConfigError(f"--compare {compare}: {other_config['data']['num_segments']} segments, the first "
                              f"run {config['data']['num_segments']}; the pictures need the same frames")
        models.append((other_config["model"]["arch"], attention_maps(other, batch["frames"], channels)))
    head = next(iter(batch["labels"]))
    names = batch["class_names"][head]
    keep = batch["valid"].numpy().astype(bool)
    labels = batch["labels"][head].tolist()
    titles = [f"{batch['keys'][i]}\n{names[labels[i]] if labels[i] >= 0 else 'no label'}\n"
              f"pred: {names[models[0][1]['predicted'][head][i]]}" for i in range(len(keep))]
    images = to_images(batch["frames"])[keep]
    models = [(name, {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in maps.items()})
              for name, maps in models]
    draw(images, models, [t for t, k in zip(titles, keep) if k], out)
    return {"checkpoint": str(ckpt), "frames": shown_frames(images.shape[1]), "models": models,
            "keys": [k for k, v in zip(batch["keys"], keep) if v]}


@cli.tool("train/visualize.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/visualize.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder or checkpoint folder (a tsm_w3 or tsm_cbam model)")
    parser.add_argument("--shards", type=Path, required=True, help="shard folder (with manifest.json) or its root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=Path("attention.png"))
    parser.add_argument("--compare", type=Path, help="a second run or checkpoint (e.g. TSM+CBAM), drawn beside")
    parser.add_argument("--clips", type=int, default=3, help="rows (default 3)")
    parser.add_argument("--channels", type=int, default=16, help="channels in the heatmap (default 16)")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.channels < 1:
        parser.error("--clips and --channels must be >= 1")
    drawn = visualize(args.run, args.shards, args.split, args.out, args.compare, args.clips, args.channels)
    print(f"wrote {args.out} ({len(drawn['keys'])} clips, frames {drawn['frames']}, from {drawn['checkpoint']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
