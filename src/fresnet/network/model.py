"""The fresnet network: stem -> stages of residual units -> [bottleneck reduce] -> head.

``create_model('r50', net_output='GDC')`` builds from a preset plus overrides; ``create_model(**options)``
from options alone. Input: float RGB NCHW in 0..255 (the network normalises it itself, like the
original). Output: the embedding (N, emb_size), or the 4-D map for head Z.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fresnet.errors import FresnetError
from fresnet.memory.planning import MemoryPlan, plan
from fresnet.network.config import NetConfig, normalize_options
from fresnet.network.heads import build_head
from fresnet.network.initialization import init_weights
from fresnet.network.layers import BN_EPS, ActFactory, InputNorm, MXBatchNorm, conv1x1, make_act
from fresnet.network.presets import preset_options
from fresnet.network.units import NormFactory, unit_builder

# what set_grad_checkpointing takes: on (the default plan) / off, a plan, or the units to recompute,
# each item a unit name (checkpointed on its own) or a run of consecutive names (one segment)
CheckpointPlan = Union[bool, MemoryPlan, Sequence[Union[str, Sequence[str]]]]


class Stem(nn.Module):
    """net_input 0: normalise -> conv0 7x7/2 (no max-pool); 1: normalise -> conv0 3x3/1;
    2: ``bn_data`` (fix_gamma BN on raw pixels, no normalisation) -> conv0 3x3/1. Then bn0 -> relu0."""

    def __init__(self, net_input: int, out_ch: int, act: ActFactory, norm: NormFactory, bn_mom: float):
        super().__init__()
        if net_input == 2:
            self.bn_data = MXBatchNorm(3, eps=BN_EPS, momentum=bn_mom, fix_gamma=True)
            self.norm = None
        else:
            self.bn_data = None
            self.norm = InputNorm()
        if net_input == 0:
            self.conv0 = nn.Conv2d(3, out_ch, 7, stride=2, padding=3, bias=False)
        else:
            self.conv0 = nn.Conv2d(3, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn0 = norm(out_ch)
        self.relu0 = act(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_data(x) if self.bn_data is not None else self.norm(x)
        return self.relu0(self.bn0(self.conv0(x)))


class Reduce(nn.Module):
    """After a bottleneck trunk: ``convd`` (1x1 -> 512) -> ``bnd`` -> ``relud``."""

    def __init__(self, in_ch: int, act: ActFactory, norm: NormFactory):
        super().__init__()
        self.convd = conv1x1(in_ch, 512)
        self.bnd = norm(512)
        self.relud = act(512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relud(self.bnd(self.convd(x)))


class FResNet(nn.Module):
    """A fresnet network built from a :class:`NetConfig`.

    Module names follow the original graph, so MXNet names map mechanically:
    ``stem.conv0`` = ``conv0``, ``stage2.unit1.conv1sc`` = ``stage2_unit1_conv1sc``,
    ``head.pre_fc1`` = ``pre_fc1``.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        act = partial(make_act, config.net_act)
        norm = partial(MXBatchNorm, eps=BN_EPS, momentum=config.bn_mom)
        filters = config.filter_list
        self.stem = Stem(config.net_input, filters[0], act, norm, config.bn_mom)
        make_unit = unit_builder(config.net_unit, config.bottle_neck, config.net_input)
        self.stage_names: list[str] = []
        in_ch = filters[0]
        for i, count in enumerate(config.units):
            out_ch = filters[i + 1]
            units = OrderedDict()
            for j in range(count):
                first = j == 0
                units[f"unit{j + 1}"] = make_unit(
                    in_ch if first else out_ch, out_ch, 2 if first else 1, not first, act, norm, se=bool(config.net_se)
                )
            name = f"stage{i + 1}"
            self.add_module(name, nn.Sequential(units))
            self.stage_names.append(name)
            in_ch = out_ch
        self.reduce = Reduce(in_ch, act, norm) if config.bottle_neck else None
        self.head = build_head(config.net_output, config.trunk_channels, config.trunk_hw, config.emb_size, act)
        self.grad_checkpoint_units: frozenset[str] = frozenset()
        self.grad_checkpoint_segments: tuple[tuple[str, ...], ...] = ()
        init_weights(self)

    # ---- structure -------------------------------------------------------------------------
    def iter_units(self) -> Iterator[tuple[str, nn.Module]]:
        """``('stage1.unit1', module), ...`` in forward order."""
        for stage in self.stage_names:
            for name, unit in getattr(self, stage).named_children():
                yield f"{stage}.{name}", unit

    def iter_checkpointable(self) -> Iterator[tuple[str, nn.Module]]:
        """``('stem', stem), ('stage1.unit1', unit), ...``: what activation checkpointing can recompute.
        (The stem is cheap to recompute but keeps two full-resolution maps.)"""
        yield "stem", self.stem
        yield from self.iter_units()

    @property
    def num_features(self) -> int:
        return self.config.emb_size

    # ---- forward ---------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and residual stages (and the bottleneck ``convd`` block): the trunk map."""
        recompute = self.grad_checkpoint_segments and self.training and torch.is_grad_enabled()
        segment_at = {segment[0]: segment for segment in self.grad_checkpoint_segments} if recompute else {}
        pieces = self.iter_checkpointable()
        for name, piece in pieces:
            segment = segment_at.get(name)
            if segment is None:
                x = piece(x)
                continue
            # a segment saves only its input; everything inside is recomputed in backward
            modules = (piece,) + tuple(next(pieces)[1] for _ in segment[1:])
            x = checkpoint(
                partial(_run_in_order, modules), x, use_reentrant=False,
                context_fn=_freeze_bn_stats_on_recompute(*modules),
            )
        if self.reduce is not None:
            x = self.reduce(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.forward_head(self.forward_features(x))
        except RuntimeError:
            self._check_input_size(x)  # a shape error from deep inside: say what the network takes
            raise

    def _check_input_size(self, x: torch.Tensor) -> None:
        from fresnet.errors import FresnetError

        (h, w), got = self.config.input_size, tuple(x.shape[-2:])
        if x.dim() == 4 and got != (h, w):
            raise FresnetError(
                f"this network ({self.config.short_name()}) takes {h}x{w} images (its input_size), got "
                f"{got[0]}x{got[1]}; resize or align the images to {h}x{w}, or build the model with "
                f"input_size=({got[0]}, {got[1]})"
            ) from None

    # ---- activation checkpointing ----------------------------------------------------------
    def set_grad_checkpointing(self, enable_or_plan: Optional[CheckpointPlan] = True) -> FResNet:
        """Recompute some units in backward instead of storing their activations.

        ``True`` applies the default plan (:func:`fresnet.memory.planning.plan`, sqrt(n) segments);
        ``False`` (or None) turns it off; a :class:`~fresnet.memory.planning.MemoryPlan` applies its
        segments. A sequence applies its items: a unit name (``'stage3.unit4'``, or ``'stem'``) is
        checkpointed on its own (its input is kept), a sequence of consecutive names as one segment
        (only the segment's input is kept).
        """
        if enable_or_plan is True:
            enable_or_plan = plan(self)
        if enable_or_plan is False or enable_or_plan is None:
            segments: tuple[tuple[str, ...], ...] = ()
        elif isinstance(enable_or_plan, MemoryPlan):
            segments = tuple(tuple(segment) for segment in enable_or_plan.segments)
        elif isinstance(enable_or_plan, Sequence) and not isinstance(enable_or_plan, str):
            segments = tuple((item,) if isinstance(item, str) else tuple(item) for item in enable_or_plan)
        else:
            raise FresnetError(f"set_grad_checkpointing takes True/False, a MemoryPlan, or a list of unit names "
                               f"(or lists of consecutive names); got {type(enable_or_plan).__name__}")
        self.grad_checkpoint_segments = self._check_segments(segments)
        self.grad_checkpoint_units = frozenset(name for segment in segments for name in segment)
        return self

    def _check_segments(self, segments: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        order = {name: i for i, (name, _) in enumerate(self.iter_checkpointable())}
        names = [name for segment in segments for name in segment]
        unknown = sorted(set(names) - set(order))
        if unknown:
            raise FresnetError(f"unknown unit names {unknown}; valid names look like {sorted(order)[:3]} ...")
        if len(set(names)) != len(names):
            raise FresnetError("a unit appears twice in the checkpointing plan; give each unit at most once")
        for segment in segments:
            positions = [order[name] for name in segment]
            if not positions or positions != list(range(positions[0], positions[0] + len(positions))):
                raise FresnetError(f"checkpoint segment {list(segment)} must list consecutive units in forward order")
        return segments


def _run_in_order(modules: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


class _freeze_bn_stats_on_recompute:
    """``context_fn`` for :func:`torch.utils.checkpoint`: the recomputation in backward must not
    update BatchNorm moving statistics a second time."""

    def __init__(self, *units: nn.Module):
        self.bns = [m for unit in units for m in unit.modules() if isinstance(m, MXBatchNorm)]

    def __call__(self):
        import contextlib

        bns = self.bns

        @contextlib.contextmanager
        def recompute():
            saved = [bn.freeze_stats for bn in bns]
            for bn in bns:
                bn.freeze_stats = True
            try:
                yield
            finally:
                for bn, value in zip(bns, saved):
                    bn.freeze_stats = value

        return contextlib.nullcontext(), recompute()


def create_model(name: Optional[str] = None, **options: Any) -> FResNet:
    """Build a fresnet network.

    Args:
        name: a preset (``fresnet.list_models()``: ``r18`` ... ``r269``, ``r100fc``, ``r50v1``), or None.
        **options: :class:`NetConfig` fields, under their original names (``num_layers``, ``net_unit``,
            ``net_se``, ``net_act``, ``net_input``, ``net_output``, ``emb_size``, ``bn_mom``) or aliases,
            plus ``input_size``, ``units``, ``filter_list``, ``bottle_neck``. A ``config=NetConfig(...)``
            keyword is accepted too.
    """
    config = options.pop("config", None)
    if isinstance(config, dict):
        config = NetConfig.from_dict(config)
    merged: dict[str, Any] = config.to_dict() if config is not None else {}
    if name is not None:
        merged.update(preset_options(name))
    merged.update(normalize_options(options))
    return FResNet(NetConfig(**merged))
