"""Training augmentations of InsightFace's ``FaceImageIter``, on (3, H, W) tensors.

Datasets yield uint8 RGB; the pipeline ends with float32 RGB in 0..255, which is what fresnet models
take (they normalise ``(x - 127.5) * 0.0078125`` internally, like the MXNet symbol).

``train_transform`` applies them in the original's order: resize, random mirror, optional JPEG
re-compression, colour jitter, cutoff. Randomness comes from ``torch`` so DataLoader workers,
which torch seeds one by one, draw different augmentations; pass a ``generator`` to pin them.
"""
from __future__ import annotations

import io
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Size = Union[int, Sequence[int]]
_LUMA_NP = np.array([0.299, 0.587, 0.114])  # the luma coefficients FaceImageIter uses


def _pair(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """Uniform integer in [low, high] inclusive, like ``random.randint``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Resize to the network's input size (bilinear, antialiased); a no-op when it already fits.

    The original used ``resize_short`` on the short side, which equals this for square faces.
    """

    def __init__(self, size: Size):
        self.size = _pair(size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) == self.size:
            return image
        resized = F.interpolate(
            image[None].float(), size=self.size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        if image.dtype == torch.uint8:
            return resized.round_().clamp_(0, 255).to(torch.uint8)
        return resized

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomMirror:
    """Flip left-right with probability ``p`` (``rand_mirror``: 0.5)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = p, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomMirror(p={self.p})"


class Cutoff:
    """With probability ``p``, fill a ``size`` x ``size`` square at a random centre with grey 128.

    As in ``FaceImageIter``, the centre is anywhere in the image, so the square is clipped at
    the borders and can be smaller than ``size``.
    """

    def __init__(self, size: int, p: float = 0.5, fill: float = 128.0, generator: Optional[torch.Generator] = None):
        self.size, self.p, self.fill, self.generator = int(size), p, fill, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.size <= 0 or float(torch.rand((), generator=self.generator)) >= self.p:
            return image
        height, width = image.shape[-2:]
        centre_y = _randint(0, height - 1, self.generator)
        centre_x = _randint(0, width - 1, self.generator)
        half = self.size // 2
        image = image.clone()
        image[
            ...,
            max(0, centre_y - half) : min(height, centre_y + half),
            max(0, centre_x - half) : min(width, centre_x + half),
        ] = self.fill
        return image

    def __repr__(self) -> str:
        return f"Cutoff(size={self.size}, p={self.p})"


class ColorJitter:
    """Brightness, contrast and saturation, each scaled by ``1 + U(-s, s)``, in random order.

    The formulas are ``FaceImageIter``'s (``color_aug`` with s = 0.125):
    brightness ``a*x``; contrast ``a*x + (1-a)*mean(luma)``; saturation ``a*x + (1-a)*luma(x)``.
    All three are affine in the colour vector, so their composition is one 3x3 matrix plus an
    offset, applied in a single pass (about 10x faster than three passes of small tensor ops).
    Output is float32; unlike the original, values are clamped to 0..255 so the model's input
    range holds.
    """

    ORDER = ("brightness", "contrast", "saturation")

    def __init__(self, strength: float = 0.125, generator: Optional[torch.Generator] = None):
        self.strength, self.generator = strength, generator

    def draw(self) -> list[tuple[str, float]]:
        """The random order and factors for one image."""
        order = torch.randperm(3, generator=self.generator).tolist()
        return [(self.ORDER[i], 1.0 + _uniform(-self.strength, self.strength, self.generator)) for i in order]

    def apply(self, image: torch.Tensor, draws: Sequence[tuple[str, float]]) -> torch.Tensor:
        x = image.float()
        # The 3x3 algebra is tiny: numpy does it in microseconds, where each torch op costs more.
        luma = _LUMA_NP
        matrix, offset = np.eye(3), np.zeros(3)
        mean_colour = x.mean((1, 2)).double().numpy()
        for name, alpha in draws:
            if name == "brightness":
                matrix, offset = alpha * matrix, alpha * offset
            elif name == "contrast":
                mean_luma = luma @ (matrix @ mean_colour + offset)
                matrix, offset = alpha * matrix, alpha * offset + (1.0 - alpha) * mean_luma
            else:  # saturation: blend towards each pixel's own luma
                matrix = alpha * matrix + (1.0 - alpha) * np.outer(np.ones(3), luma @ matrix)
                offset = alpha * offset + (1.0 - alpha) * (luma @ offset)
        flat = torch.addmm(
            torch.from_numpy(offset.astype(np.float32)).view(3, 1),
            torch.from_numpy(matrix.astype(np.float32)),
            x.reshape(3, -1),
        )
        return flat.view_as(x).clamp_(0.0, 255.0)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.draw())

    def __repr__(self) -> str:
        return f"ColorJitter(strength={self.strength})"


class RandomJpeg:
    """With probability ``p``, re-compress as JPEG at a random quality (``compress_aug``: 2..20)."""

    def __init__(self, quality: tuple[int, int] = (2, 20), p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.quality, self.p, self.generator = quality, p, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image
        array = image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array), "RGB").save(
            buffer, format="JPEG", quality=_randint(self.quality[0], self.quality[1], self.generator)
        )
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        result = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1)))
        return result if image.dtype == torch.uint8 else result.to(image.dtype)

    def __repr__(self) -> str:
        return f"RandomJpeg(quality={self.quality}, p={self.p})"


class ToFloat:
    """uint8 0..255 -> float32 0..255 (no rescaling: the models normalise internally)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.float()

    def __repr__(self) -> str:
        return "ToFloat()"


def train_transform(
    input_size: Size = 112,
    mirror: bool = True,
    cutoff: int = 0,
    color_jitter: float = 0.0,
    jpeg: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Compose:
    """The ``FaceImageIter`` pipeline. ``color_jitter`` is the jitter strength (the original's is
    0.125 when ``color_jittering`` is on); ``jpeg`` is its ``color_jittering > 1`` re-compression."""
    steps: list[Callable] = [Resize(input_size)]
    if mirror:
        steps.append(RandomMirror(generator=generator))
    if jpeg:
        steps.append(RandomJpeg(generator=generator))
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter, generator=generator))
    if cutoff > 0:
        steps.append(Cutoff(cutoff, generator=generator))
    steps.append(ToFloat())
    return Compose(steps)


def eval_transform(input_size: Size = 112) -> Compose:
    return Compose([Resize(input_size), ToFloat()])
