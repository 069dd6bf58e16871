"""Plain ResNet-50 image training on synthetic input: the yardstick the video trainer is held to.

    python benchmarks/resnet50_images.py --device cuda --batch 256 --bf16 --channels-last [--json]

The model is w3model's ResNet-50 (torchvision's layers and names) with one 1000-way head, i.e. TSN over one
frame: no temporal shift, no attention. Each step is a forward, a cross-entropy loss, a backward and an
SGD step (momentum 0.9) on random 224x224 images already on the device, so nothing but the network is
measured. NVIDIA's reference for ResNet-50 v1.5 with AMP is about 2,470 images/s on one A100; the issue's
goal for the video trainer (>= 85 % of this run's frames/s, docs/BENCHMARKS.md) is measured against the
figure this script prints in the same run on the same GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from pipeline import cli

import torch
import torch.nn.functional as F

from pipeline.loader import resolve_device
from w3model import build_model


def images_per_second(device: torch.device, batch: int, bf16: bool, channels_last: bool, steps: int,
                      warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model(arch="tsn", depth=50, num_segments=1, heads={"label": 1000}, dropout=0.0).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, 1, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    rates = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images)["logits"]["label"].float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            rates.append(batch / (time.perf_counter() - start))
    return rates


@cli.tool("benchmarks/resnet50_images.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/resnet50_images.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rates = images_per_second(device, args.batch, args.bf16, args.channels_last, args.steps, args.warmup)
    result = {"images_per_s": round(statistics.median(rates), 1), "batch": args.batch, "bf16": args.bf16,
              "channels_last": args.channels_last, "steps": args.steps,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    print(json.dumps(result) if args.json else
          f"ResNet-50 images: {result['images_per_s']} images/s (median of {args.steps} steps, batch {args.batch}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', channels_last' if args.channels_last else ''}, {result['device']})")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
