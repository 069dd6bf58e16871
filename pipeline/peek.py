"""Look at what a loader feeds the model: the first N batches of a plan as arrays, and a contact sheet.

    python pipeline/peek.py shards/sthv2 --split train --seed 0 --epoch 0 --batches 2 --out peek.npz --png sheet.png

``frames`` are uint8 (N*B, T, H, W, 3) after crop/resize/flip and before normalisation (the loader's output
with the ImageNet normalisation undone), beside ``labels``, ``keys``, ``view_ids`` and ``frame_indices``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import cli  # first: keeps pipeline/ off sys.path when run by path

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.loader import BACKENDS, IMAGENET_MEAN, IMAGENET_STD, LoaderSettings, build_loader
from pipeline.manifest import read_manifest
from pipeline.plan import MODES


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (B, T, 3, H, W) normalised -> uint8 (B, T, H, W, 3); exact, since the loader normalised uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1) * 255
    pixels = (frames.detach().cpu().float() * std + mean).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 1, 3, 4, 2).numpy()


def peek(shards_dir: str, settings: LoaderSettings | None = None, *, batches: int, epoch: int = 0,
         rank: int = 0, world_size: int = 1, device: str = "cpu", **setting_values) -> dict[str, np.ndarray]:
    """The first ``batches`` batches of ``epoch`` as numpy arrays (see the module docstring); settings as
    for ``build_loader``."""
    loader = build_loader(shards_dir, settings, rank=rank, world_size=world_size, device=device,
                          **setting_values)
    loader.set_epoch(epoch)
    got: dict[str, list] = {"frames": [], "keys": [], "view_ids": [], "frame_indices": [], "valid": [],
                            "boxes": [], "flips": []}
    labels: dict[str, list] = {h: [] for h in loader.heads}
    try:
        for n, batch in enumerate(loader):
            if n == batches:
                break
            got["frames"].append(to_uint8(batch["frames"]))
            got["keys"].extend(batch["keys"])
            for name in ("view_ids", "frame_indices", "valid", "boxes", "flips"):
                got[name].append(batch[name].numpy())
            for head in labels:
                labels[head].append(batch["labels"][head].numpy())
    finally:
        loader.close()
    if not got["frames"]:
        raise ConfigError(f"{shards_dir}: split {loader.settings.split!r} yields no batches on this rank")
    out = {k: (np.array(v) if k == "keys" else np.concatenate(v)) for k, v in got.items()}
    heads = list(labels)
    out["labels"] = np.concatenate(labels[heads[0]]) if len(heads) == 1 else np.stack(
        [np.concatenate(labels[h]) for h in heads], axis=1)
    out["label_heads"] = np.array(heads)
    return out


def contact_sheet(arrays: dict[str, np.ndarray], path: str, class_names: list[str] | None = None,
                  max_clips: int = 16) -> None:
    """One row per clip (its T frames), titled with key, view, label and flip."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = arrays["frames"][:max_clips]
    clips, t = frames.shape[:2]
    fig, axes = plt.subplots(clips, 1, figsize=(1.3 * t, 1.5 * clips), squeeze=False)
    for row, ax in enumerate(axes[:, 0]):
        ax.imshow(np.concatenate(list(frames[row]), axis=1))
        label = arrays["labels"][row]
        name = class_names[int(label)] if class_names and np.ndim(label) == 0 and label >= 0 else str(label)
        ax.set_title(f"{arrays['keys'][row]}  view {arrays['view_ids'][row]}  frames "
                     f"{arrays['frame_indices'][row].tolist()}  {'flipped  ' if arrays['flips'][row] else ''}"
                     f"{'' if arrays['valid'][row] else '(padding)  '}{name}", fontsize=7, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@cli.tool("pipeline/peek.py")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline/peek.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards_dir", help="<out>/<dataset> written by pipeline/shard.py")
    ap.add_argument("--split", default="train")
    ap.add_argument("--mode", choices=MODES, help="default: train for the train split, else val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--backend", choices=BACKENDS, default="dali")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-segments", type=int, default=8)
    ap.add_argument("--crop-size", type=int, default=224)
    ap.add_argument("--scale-size", type=int, default=256)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--png", help="also write a contact sheet here")
    args = ap.parse_args(argv)
    if args.batches < 1:
        raise ConfigError(f"--batches: must be >= 1, got {args.batches}")
    fields = ("split", "mode", "seed", "backend", "batch_size", "num_segments", "crop_size", "scale_size",
              "num_threads")
    values = {f: getattr(args, f) for f in fields}
    values["mode"] = args.mode or ("train" if args.split == "train" else "val")
    settings = LoaderSettings(**values, labels={f: "--" + f.replace("_", "-") for f in fields})
    arrays = peek(args.shards_dir, settings, batches=args.batches, epoch=args.epoch, world_size=args.world,
                  rank=args.rank, device=args.device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    if args.png:
        names, heads = None, arrays["label_heads"]
        if len(heads) == 1:
            names = read_manifest(Path(args.shards_dir)).get("classes", {}).get(str(heads[0]))
        contact_sheet(arrays, args.png, names)
    print(f"peek: {len(arrays['keys'])} clips, frames {arrays['frames'].shape} -> {args.out}"
          + (f", {args.png}" if args.png else ""))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
