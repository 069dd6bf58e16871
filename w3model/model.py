"""The video network: a ResNet trunk with the chosen video modules, AFR, and per-frame classifier heads.

All five architectures of the paper's tables come from one builder, so they differ only in the modules
the config switches on: ``tsn`` (plain 2D ResNet per frame), ``tsm`` (+ temporal shift), ``tsm_cbam``
(+ CBAM in every block), ``tsm_nl`` (+ non-local blocks) and ``tsm_w3`` (+ W3 in every block and AFR).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.errors import ConfigError
from w3model.afr import AttentionFeatureRefinement
from w3model.cbam import CBAM
from w3model.config import ModelConfig
from w3model.non_local import NonLocalBlock
from w3model.pretrained import VIDEO_SLOTS, LoadReport, load_pretrained
from w3model.resnet import ResNet
from w3model.shift import TemporalShift
from w3model.w3 import MapVolumeNet, W3Attention

# The TSM reference's optimiser policy (get_optim_policies): (group name, lr multiplier, decay multiplier).
# No weight decay on BatchNorm and biases, biases at 2x lr, the new classifier at 5x (weight) / 10x (bias)
# (TSM's fc_lr5; with model.fc_lr5 false the classifier follows the trunk's rules, as TSM's own switch does).
# The video modules (W3, CBAM, non-local, AFR) get groups of their own with the same rules as the trunk,
# so a run can see and change them.
OPTIM_POLICY = (
    ("normal_weight", 1, 1), ("normal_bias", 2, 0), ("bn", 1, 0),
    ("new_weight", 1, 1), ("new_bias", 2, 0), ("new_bn", 1, 0),
    ("lr5_weight", 5, 1), ("lr10_bias", 10, 0),
)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, MapVolumeNet)  # MapVolumeNet owns a bias
_GROUP_OF = {
    ("trunk", "weight"): "normal_weight", ("trunk", "bias"): "normal_bias", ("trunk", "bn"): "bn",
    ("new", "weight"): "new_weight", ("new", "bias"): "new_bias", ("new", "bn"): "new_bn",
    ("head", "weight"): "lr5_weight", ("head", "bias"): "lr10_bias",
}


class VideoNet(nn.Module):
    """Frames ``(B, T, 3, H, W)`` -> ``{"logits": {head: (B, classes)}, "features": (B, T, C_l, h, w)}``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config        # validated when it was made
        self.num_segments = config.num_segments
        self.backbone = ResNet(config.depth)
        self._attach_video_modules()
        channels = self.backbone.out_channels
        self.afr = (AttentionFeatureRefinement(len(config.attention_stages), channels, config.afr_source,
                                               config.afr_init) if config.use_afr else None)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(channels, classes) for name, classes in config.heads.items()})
        for head in self.heads.values():  # as the TSM reference initialises its new fc
            nn.init.normal_(head.weight, 0.0, 0.001)
            nn.init.zeros_(head.bias)
        self.pretrained_report: LoadReport | None = None
        if config.pretrained:
            self.pretrained_report = load_pretrained(self.backbone, config.pretrained)

    def _attach_video_modules(self) -> None:
        config, t = self.config, self.config.num_segments
        # TSM reference (make_temporal_shift, place blockres): when res4 has 23 or more blocks (ResNet-101)
        # every stage shifts every other block, 2/2/12/2 of 3/4/23/3; place block shifts every block.
        shift_every = 2 if config.shift_place == "blockres" and len(self.backbone.layer3) >= 23 else 1
        for stage_number, stage in enumerate(self.backbone.stages(), start=1):
            for i, block in enumerate(stage):
                channels = block.bn1.num_features * block.expansion
                if config.arch != "tsn" and stage_number in config.shift_stages and i % shift_every == 0:
                    block.shift = TemporalShift(t, config.shift_div)
                    block.shift_place = config.shift_place
                if stage_number in config.attention_stages and config.arch in ("tsm_cbam", "tsm_w3"):
                    block.attention_position = config.w3_position
                    if config.arch == "tsm_cbam":
                        block.attention = CBAM(channels, config.w3_reduction, config.attention_init,
                                               norm=config.w3_norm == "batch")
                    else:
                        block.attention = W3Attention(
                            channels, t, config.w3_reduction, config.w3_temporal_kernel,
                            config.w3_channel_temporal, config.w3_spatial_hidden, config.w3_norm == "batch",
                            config.attention_init, config.w3_spatial, config.w3_temporal)
                if config.arch == "tsm_nl" and stage_number in config.nl_stages and i % config.nl_every == 0:
                    block.non_local = NonLocalBlock(channels, t)

    def to(self, *args: Any, **kwargs: Any) -> "VideoNet":
        """``Module.to``, except that ``memory_format=torch.channels_last`` also works with the 5D weights of
        W3 and non-local (torch refuses channels_last for rank 5): those become ``channels_last_3d``."""
        memory_format = kwargs.pop("memory_format", None)
        if args or kwargs:
            super().to(*args, **kwargs)
        if memory_format is not None:
            formats = {4: memory_format,
                       5: torch.channels_last_3d if memory_format == torch.channels_last else memory_format}
            self._apply(lambda t: t.contiguous(memory_format=formats[t.dim()]) if t.dim() in formats else t)
        return self

    def forward(self, frames: torch.Tensor, return_attention: bool = False) -> dict[str, Any]:
        if frames.ndim != 5 or frames.shape[1] != self.num_segments or frames.shape[2] != 3:
            raise ConfigError(f"model input: expected frames (B, T={self.num_segments}, 3, H, W) as set by "
                              f"model.num_segments, got shape {tuple(frames.shape)}; make the loader's "
                              f"num_segments match")
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:])
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x, maps = self.backbone(x)
        out: dict[str, Any] = {}
        if self.afr is not None:
            if self.training and self.config.afr_loss_weight:   # the stage-1 "AFR loss" (ModelConfig)
                out["unrefined_logits"] = self._classify(x, b, t)
            attended = [[m["spatial"] for m in stage] for stage in maps if stage and stage[0]]
            x = self.afr(x, attended)
        out["logits"] = self._classify(x, b, t)     # the classifier works on y (paper 3.4)
        out["features"] = x.reshape(b, t, *x.shape[1:])
        if return_attention:
            out["attention"] = {
                f"layer{s}.{i}": {k: v.reshape(b, t, *v.shape[1:]) for k, v in block_maps.items()}
                for s, stage in enumerate(maps, start=1) for i, block_maps in enumerate(stage) if block_maps
            }
        return out

    def _classify(self, x: torch.Tensor, b: int, t: int) -> dict[str, torch.Tensor]:
        """Per-frame heads on pooled features, averaged over frames: the video prediction is the mean of
        the frame predictions (paper 3.4, TSM's average consensus)."""
        pooled = self.dropout(x.mean(dim=(2, 3)))
        return {name: head(pooled).reshape(b, t, -1).mean(dim=1) for name, head in self.heads.items()}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups of the TSM policy (see ``OPTIM_POLICY``); empty groups are left out.

        Every parameter lands in exactly one group; a module type without a rule raises, as in the TSM
        reference, so a new module cannot silently get the wrong treatment.
        """
        groups: dict[str, list[nn.Parameter]] = {name: [] for name, _, _ in OPTIM_POLICY}
        for module_name, module in self.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            if module_name.startswith("heads."):
                owner = "head" if self.config.fc_lr5 else "trunk"
            elif module_name.startswith("afr.") or any(slot in module_name for slot in VIDEO_SLOTS):
                owner = "new"
            else:
                owner = "trunk"
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if not (is_bn or isinstance(module, _WEIGHTED)):
                raise TypeError(f"param_groups: no optimiser rule for {module_name} ({type(module).__name__})")
            for param_name, param in own.items():
                groups[_GROUP_OF[owner, "bn" if is_bn else param_name]].append(param)
        return [{"name": name, "params": groups[name], "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult,
                 "lr_mult": lr_mult, "decay_mult": decay_mult}
                for name, lr_mult, decay_mult in OPTIM_POLICY if groups[name]]


def build_model(**settings: Any) -> VideoNet:
    """Build a model from plain settings (the ``model:`` section of a run's YAML).

    ``settings`` are fields of :class:`w3model.config.ModelConfig`, whose defaults fill the rest; an unknown
    one, a wrong type or an impossible value raises ``ConfigError`` naming ``model.<key>``.
    """
    return VideoNet(ModelConfig.from_dict(settings))
