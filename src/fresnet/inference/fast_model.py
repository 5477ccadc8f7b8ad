"""The timed model: :class:`FastModel` builds the candidate paths, checks each against eager on the
first batch, times the ones that pass against eager and keeps the fastest -- eager included, so it
is never slower than the model it was given.

Which paths are candidates, and the gate each must pass, is :mod:`fresnet.inference.candidates`;
this module only builds (:func:`build_path`), checks and times them.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inference import candidates as policy
from fresnet.inference import compiling
from fresnet.inference.choice import FastChoice
from fresnet.inference.mixed_precision import MixedPrecisionNet
from fresnet.timing import timed

TIMED_ROUNDS = 2  # interleaved rounds per candidate on the first batch, after one untimed warm call


def build_path(model: nn.Module, choice: FastChoice, calibration: Optional[Sequence[torch.Tensor]] = None) -> nn.Module:
    """The network for one :class:`FastChoice` (not compiled), on its device, in eval mode.
    ``calibration``: the float batches an int8 path takes its activation ranges from."""
    from fresnet.inference.fuse import fold_batchnorm

    if choice.eager:
        net = copy.deepcopy(model).to(choice.device).eval()
    elif choice.int8 is not None:
        if not calibration:
            raise FresnetError("an int8 path needs calibration images (calibration=...)")
        source = (fold_batchnorm(model) if choice.fold_bn else copy.deepcopy(model).eval()).float().cpu()
        net = _int8_net(source, choice, calibration)
    else:
        source = fold_batchnorm(model) if choice.fold_bn else copy.deepcopy(model).eval()
        # inductor packs weights itself (freezing); pre-packed oneDNN tensors are opaque to it
        net = MixedPrecisionNet(source.float(), choice.dtype, choice.residual_dtype, channels_last=choice.channels_last,
                                pack=not choice.compile, float32_units=choice.float32_units)
        net = net.to(choice.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _int8_net(source: nn.Module, choice: FastChoice, calibration: Sequence[torch.Tensor]) -> nn.Module:
    settings = choice.int8
    if settings.backend == "onnxruntime":
        from fresnet.inference.onnxruntime_int8 import OnnxRuntimeInt8Net

        return OnnxRuntimeInt8Net(source, calibration, reduce_range=settings.reduce_range)
    from fresnet.inference.int8 import Int8Net, quantize_int8

    return Int8Net(quantize_int8(source, calibration, reduce_range=settings.reduce_range),
                   sum(int(b.shape[0]) for b in calibration), reduce_range=settings.reduce_range)


class FastModel(nn.Module):
    """A faster, inference-only stand-in for a fresnet network: same input (float RGB NCHW, 0..255,
    any device), float32 output on the fast path's device. Gradients are never recorded.

    Attributes:
        choice: the :class:`FastChoice` in use (after the first call when choosing).
        config: the wrapped network's :class:`NetConfig`.
    """

    def __init__(self, model: nn.Module, candidates: Sequence[FastChoice], calibrate: bool,
                 extras: Sequence[FastChoice] = (), calibration: Optional[Sequence[torch.Tensor]] = None):
        super().__init__()
        self.config = getattr(model, "config", None)
        self._candidates = list(candidates)  # the precision ladder, float32 last
        self._extras = list(extras) if calibrate else []  # timed besides the ladder: eager, NCHW, int8
        self._calibrate = calibrate and (len(self._candidates) > 1 or bool(self._extras))
        self.choice = self._candidates[0]
        # a closure, not an attribute: the caller's model must not become a submodule of this one
        # (``fast.train()`` or ``fast.to()`` would reach it); dropped once the path is chosen
        self._build = (lambda choice: build_path(model, choice, calibration)) if self._calibrate else None
        self.net = build_path(model, self.choice, calibration)
        self._set_runner(self.net, compiled=False)

    def _set_runner(self, runner: Callable[[torch.Tensor], torch.Tensor], compiled: bool) -> None:
        # plain attributes: the compiled wrapper would otherwise duplicate ``net`` in state_dict()
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_compiled", compiled)

    # -- running ----------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice.compile and not self._compiled:
            runner, out = compiling.compiled_or_none(self.net, self.choice, x)
            if runner is not None:
                self._set_runner(runner, compiled=True)
                return compiling.owned(out, self.choice)
            self.choice = replace(self.choice, compile=False)
        return compiling.owned(self._runner(x), self.choice)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.choice.device)
        if self._calibrate:
            return self._choose_on(x)
        with _exact_float32(self.choice):
            return self._run(x)

    def train(self, mode: bool = True) -> FastModel:
        # inference only: BN must keep its (folded) moving statistics and dropout stays off. The flag
        # is set directly: an exported (PT2E int8) graph refuses .train()/.eval(), and its ops are
        # fixed anyway -- so ``.eval()`` (as every embedder calls it) works on every path
        for module in self.modules():
            module.training = False
        return self

    # -- choosing on the first batch ----------------------------------------------------------
    def _choose_on(self, x: torch.Tensor) -> torch.Tensor:
        """Run every candidate on ``x``, drop those that miss their accuracy gate, time the rest
        against eager and keep the fastest; returns the kept path's output on ``x``."""
        eager = replace(self.choice, dtype=torch.float32, residual_dtype=torch.float32, float32_units=0,
                        compile=False, fold_bn=False, channels_last=False, eager=True, reason="", int8=None)
        trial = _Trial(x, self._build(eager), eager)
        low_kept = False
        for index, choice in enumerate(self._candidates):
            if choice.dtype != torch.float32 and low_kept:
                continue  # the ladder: only the first rung that passes is timed
            built = self.net if index == 0 else self._build(choice)
            if trial.run(choice, built):
                low_kept = low_kept or choice.dtype != torch.float32
        for choice in self._extras:
            trial.run(choice, self._build(choice))
        choice, net, runner, out = trial.fastest()
        self.choice, self.net = choice, net
        self._set_runner(runner, compiled=runner is not net)
        self._calibrate, self._build, self._candidates, self._extras = False, None, [self.choice], []
        return compiling.owned(out, self.choice)

    def extra_repr(self) -> str:
        return self.choice.describe() + (" (calibrates on first call: times the candidates against eager)"
                                         if self._calibrate else "")


class _Trial:
    """The first batch's trial: eager's output is the reference; each path that passes its
    accuracy gate is kept (choice, net, runner, output) for timing."""

    def __init__(self, x: torch.Tensor, eager_net: nn.Module, eager: FastChoice):
        self.x, self.device = x, eager.device
        with _exact_float32(replace(eager, eager=False)):
            self.reference = eager_net(x)
        self.kept: dict[str, tuple[FastChoice, nn.Module, Any, torch.Tensor]] = {
            "eager": (eager, eager_net, eager_net, self.reference)}
        self.notes: list[str] = []

    def run(self, choice: FastChoice, net: nn.Module) -> bool:
        """Run one candidate (compiled first if it is int8 and compiled: its kernels come from
        inductor) and keep it for timing when it passes its accuracy gate."""
        runner = net
        with _exact_float32(choice):
            # the others are timed uncompiled, and the chosen one is compiled at its next call if asked
            if choice.compile and choice.int8 is not None:
                compiled, out = compiling.compiled_or_none(net, choice, self.x)
                if compiled is None:
                    choice = replace(choice, compile=False)
                    out = net(self.x)
                else:
                    runner = compiled
            else:
                out = net(self.x)
        finite = bool(torch.isfinite(out).all())
        bound = policy.accuracy_gate(choice)
        cosine = _min_cosine(out, self.reference) if bound is not None else 1.0
        if not finite or (bound is not None and cosine < bound):
            why = "non-finite output" if not finite else f"min cosine {cosine:.6f} < {bound}"
            self.notes.append(f"{choice.name} rejected: {why}")
            return False
        if bound is not None:
            self.notes.append(f"{choice.name} min cosine {cosine:.6f}")
        self.kept[choice.name] = (choice, net, runner, out)
        return True

    def fastest(self) -> tuple[FastChoice, nn.Module, Any, torch.Tensor]:
        """The kept path that was fastest on the batch (eager on a tie), its choice carrying the
        times measured and, for a low-precision path, its min cosine to eager."""
        seconds = _time_paths({name: runner for name, (_, _, runner, _) in self.kept.items()}, self.x, self.device)
        best = min(seconds, key=lambda name: (seconds[name], name != "eager"))
        timed = ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in sorted(seconds.items(), key=lambda kv: kv[1]))
        reason = (f"fastest on the first batch ({self.x.shape[0]} images), timed against eager: {timed}"
                  + (f" ({'; '.join(self.notes)})" if self.notes else ""))
        choice, net, runner, out = self.kept[best]
        cosine = _min_cosine(out, self.reference) if choice.dtype != torch.float32 else None
        return replace(choice, reason=reason, cosine=cosine), net, runner, out


def _time_paths(runners: dict[str, Any], x: torch.Tensor, device: str, rounds: int = TIMED_ROUNDS) -> dict[str, float]:
    """Best seconds per call of each runner on ``x``, timed interleaved (round-robin, the order
    rotated each round) so that load from elsewhere hits every candidate alike."""
    names = list(runners)
    best = dict.fromkeys(names, float("inf"))
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            with timed(device) as t:
                runners[name](x)
            best[name] = min(best[name], t.wall)
    return best


@contextlib.contextmanager
def _exact_float32(choice: FastChoice) -> Iterator[None]:
    """On CUDA, PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa); a path
    called float32 should be float32, so TF32 is off while such a path runs."""
    if torch.device(choice.device).type != "cuda" or choice.dtype != torch.float32:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _min_cosine(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.float().flatten(1), reference.float().flatten(1)
    return torch.nn.functional.cosine_similarity(out, reference, dim=1).min().item()
