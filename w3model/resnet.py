"""ResNet-18/34/50/101 with torchvision's parameter names and shapes, plus slots for video modules.

torchvision has no CPU build here, so the network is written in the project; its ``state_dict`` keys
and shapes are exactly torchvision's (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``, ``bn*``,
``downsample.{0,1}``; v1.5: the stride sits on the 3x3 conv), except that the ImageNet ``fc`` is
absent because video heads differ. An ImageNet file therefore loads with the names as published
(see :mod:`w3model.pretrained`).

The video modules live in slots on each block and never rename a torchvision parameter:
``shift`` (parameter-free), ``attention`` (W3 or CBAM, new names under ``.attention.``) and
``non_local`` (new names under ``.non_local.``). Blocks return ``(features, maps)``; ``maps`` is the
attention's dict of maps (empty without attention), which AFR and the pictures use.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
Maps = dict[str, torch.Tensor]


def conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)


class _VideoBlock(nn.Module):
    """What both block kinds share: the slots and the order they run in.

    Order (TSM ``blockres`` / ``block`` places; attention on the residual branch before the identity is
    added, like CBAM/SE, or on the output; non-local after the block, as TSM's ``NL3DWrapper``).
    """

    expansion = 1

    def __init__(self) -> None:
        super().__init__()
        self.shift: nn.Module | None = None
        self.shift_place: Literal["blockres", "block"] = "blockres"
        self.attention: nn.Module | None = None
        self.attention_position: Literal["residual", "output"] = "residual"
        self.non_local: nn.Module | None = None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Maps]:
        if self.shift is not None and self.shift_place == "block":
            x = self.shift(x)
        identity = x if self.downsample is None else self.downsample(x)
        if self.shift is not None and self.shift_place == "blockres":
            x = self.shift(x)
        out = self.residual(x)
        maps: Maps = {}
        if self.attention is not None and self.attention_position == "residual":
            out, maps = self.attention(out)
        out = self.relu(out + identity)
        if self.attention is not None and self.attention_position == "output":
            out, maps = self.attention(out)
        if self.non_local is not None:
            out = self.non_local(out)
        return out, maps


class BasicBlock(_VideoBlock):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_VideoBlock):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """The torchvision ResNet trunk (no ``fc``) applied to frames ``(B*T, 3, H, W)``."""

    def __init__(self, depth: int):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth {depth} is not one of {tuple(STAGE_BLOCKS)}")
        block = BasicBlock if depth < 50 else Bottleneck
        self.depth = depth
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        counts = STAGE_BLOCKS[depth]
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2)
        self.out_channels = 512 * block.expansion
        for m in self.modules():  # torchvision's initialisation, for runs without ImageNet weights
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[_VideoBlock], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[list[Maps]]]:
        """Return the last stage's features and, per stage, each block's attention maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps: list[list[Maps]] = []
        for stage in self.stages():
            stage_maps = []
            for block in stage:
                x, block_maps = block(x)
                stage_maps.append(block_maps)
            maps.append(stage_maps)
        return x, maps
