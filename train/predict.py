"""`python train/predict.py MODEL VIDEO_OR_DIR [...] [--topk 5] [--protocol val|test] [--json OUT]`: a trained
model on your own videos.

MODEL is an exported model (`train/export.py`'s OUT.pt with its OUT.json) or a run or checkpoint folder.
Inputs are video files of any container and codec PyAV decodes (mp4/H.264, webm/VP9, avi/MJPEG, mkv, ...),
folders of them (searched recursively), and folders of numbered JPEG frames (Something-Something V1's
`<id>/00001.jpg`). Each input is sampled and cropped as the sample plan's val protocol (one centre view) or
test protocol (2 clips x 3 crops) does, scored and its views averaged by the evaluation's own functions,
and printed with its top-k classes (EPIC: verb, noun and action). An input that cannot be read, decoded
or is cut short is listed with the reason and the rest go on; exit status 1 then (pipeline.cli).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from pipeline import cli  # first: keeps train/ off sys.path when run by path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.atomic import atomic_write
from pipeline.errors import ConfigError
from pipeline.file_loader import FileLoader
from pipeline.loader import BACKENDS, resolve_device
from pipeline.loader_settings import LoaderSettings
from pipeline.video_inputs import InputClip, find_inputs
from train.evaluate import EPIC_HEADS, action_scores, aggregate_views, collect_scores
from train.exported_model import ExportedModel, load_exported

FLAGS = {"mode": "--protocol", "batch_size": "--batch-size", "num_threads": "--threads", "backend": "--backend",
         "num_segments": "MODEL's build_model.num_segments", "crop_size": "MODEL's view.crop_size",
         "scale_size": "MODEL's view.scale_size"}


def class_name(classes: dict | None, head: str, index) -> str:
    """The manifest's name of class `index` of `head` (EPIC action: (verb, noun) -> 'verb noun')."""
    if head == "action":
        return f"{class_name(classes, 'verb', index[0])} {class_name(classes, 'noun', index[1])}"
    names = (classes or {}).get(head)
    return str(names[index]) if names and 0 <= index < len(names) else f"class {index}"


def top_classes(scores: dict[str, np.ndarray], classes: dict | None, k: int) -> dict[str, list[dict]]:
    """Per head the k best classes with names and scores; EPIC adds action = the best (verb, noun) pairs,
    scored as evaluation scores them."""
    out = {}
    for head, s in scores.items():
        order = np.argsort(-s, kind="stable")[:k]
        out[head] = [{"class": int(i), "name": class_name(classes, head, int(i)), "score": float(s[i])}
                     for i in order]
    if all(h in scores for h in EPIC_HEADS):
        nouns = len(scores["noun"])
        act = action_scores(scores["verb"][None], scores["noun"][None])[0]
        pairs = [(int(i) // nouns, int(i) % nouns) for i in np.argsort(-act, kind="stable")[:k]]
        out["action"] = [{"class": list(p), "name": class_name(classes, "action", p),
                          "score": float(act[p[0] * nouns + p[1]])} for p in pairs]
    return out


def video_record(clip: InputClip, scored: dict, decoder: str, protocol: str, classes: dict | None,
                 k: int) -> dict:
    return {"input": str(clip.path), "kind": clip.kind, "codec": clip.codec, "num_frames": clip.num_frames,
            "size": [clip.width, clip.height], "protocol": protocol, "views": scored["views"],
            "decoder": decoder, "top": top_classes(scored["scores"], classes, k)}


def format_record(record: dict) -> str:
    """A few readable lines: the input, then per head its top classes with scores."""
    if "error" in record:
        return f"{record['input']}: FAILED: {record['error']}"
    w, h = record["size"]
    lines = [f"{record['input']}  [{record['codec']} {w}x{h}, {record['num_frames']} frames; {record['protocol']}, "
             f"{record['views']} view{'s' if record['views'] > 1 else ''}; {record['decoder']}]"]
    for head, top in record["top"].items():
        for n, entry in enumerate(top):
            lines.append(f"  {head if n == 0 else '':<8}{entry['score']:.4f}  {entry['name']}")
    return "\n".join(lines)


def predict(exported: ExportedModel, paths: list[Path], settings: LoaderSettings, device: torch.device, *,
            topk: int = 5, progress: bool = False, emit: Callable[[dict], None] | None = None) -> list[dict]:
    """One record per input, in the order they finish: its top classes, or `error` with the reason."""
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=device.type == "cpu")
    loader = FileLoader(paths, settings, device)
    records: list[dict] = []
    # disable=None: no bar when stderr is not a terminal
    bar = tqdm(total=len(paths), unit="video", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)

    def done(record: dict) -> None:
        records.append(record)
        if emit is not None:
            emit(record)
        bar.update(1)

    reported = 0
    for batch in loader:
        clips = aggregate_views(collect_scores(exported.model, [batch], accelerator))
        for clip in batch["clips"]:
            done(video_record(clip, clips[str(clip.path)], batch["decoder"], settings.mode, exported.classes, topk))
        for path, why in loader.failed[reported:]:
            done({"input": str(path), "error": why})
        reported = len(loader.failed)
    for path, why in loader.failed[reported:]:
        done({"input": str(path), "error": why})
    bar.close()
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train/predict.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="exported .pt (with its .json beside it), or a run or checkpoint folder")
    p.add_argument("inputs", metavar="VIDEO_OR_DIR", nargs="+", help="video files, folders of them, JPEG frame folders")
    p.add_argument("--topk", type=int, default=5, help="classes printed per head (default 5)")
    p.add_argument("--protocol", choices=("val", "test"), default="val",
                   help="val: one centre view; test: 2 clips x 3 crops, averaged (default val)")
    p.add_argument("--json", type=Path, default=None, help="write one JSON record per input to this file (JSON lines)")
    p.add_argument("--batch-size", type=int, default=4, help="inputs per batch (all their views; default 4)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=BACKENDS, default="dali",
                   help="dali: DALI for the codecs it decodes on the device, PyAV for the rest; reference: PyAV "
                        "for everything (default dali)")
    p.add_argument("--threads", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


@cli.tool("train/predict.py")
def main(argv: list[str] | None = None) -> int:
    """Exit status (pipeline.cli): 0 every input predicted, 1 some listed as failed, 2 an error."""
    args = parse_args(argv)
    if args.topk < 1:
        raise ConfigError(f"--topk: must be >= 1, got {args.topk}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(args.device)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    exported = load_exported(args.model, device)
    settings = LoaderSettings(split="files", mode=args.protocol, batch_size=args.batch_size,
                              num_segments=exported.num_segments, crop_size=exported.crop_size,
                              scale_size=exported.scale_size, backend=args.backend, num_threads=args.threads,
                              labels=FLAGS)
    if exported.classes is None:
        print(f"warning: {exported.source} has no class names (exported without its manifest): class ids "
              f"are printed", file=sys.stderr)
    found = find_inputs(args.inputs)
    if found.ignored:
        shown = ", ".join(str(p) for p in found.ignored[:3]) + (", ..." if len(found.ignored) > 3 else "")
        print(f"not videos, passed over: {len(found.ignored)} file(s) ({shown})", file=sys.stderr)
    records = [{"input": str(path), "error": why} for path, why in found.failed]
    records += predict(exported, found.inputs, settings, device, topk=args.topk, progress=args.progress,
                       emit=lambda r: tqdm.write(format_record(r)) if "error" not in r else None)
    failed = [r for r in records if "error" in r]
    if args.json is not None:
        order = {str(p): i for i, p in enumerate(found.inputs)}
        records.sort(key=lambda r: order.get(r["input"], -1))
        atomic_write(args.json, "".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records) - len(failed)} of {len(records)} inputs predicted"
          + (f" (records in {args.json})" if args.json else ""), file=sys.stderr)
    if failed:
        print(f"{len(failed)} failed:\n" + "\n".join(f"  {r['input']}: {r['error']}" for r in failed), file=sys.stderr)
    return cli.EXIT_FINDINGS if failed else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
