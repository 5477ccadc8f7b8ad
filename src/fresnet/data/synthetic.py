"""Synthetic identities: face-like 112x112 RGB images for demos, tests and quick training runs.

An identity is a fixed set of parameters drawn from ``(seed, identity)``: head and face shape,
skin tone, a skin texture (two sinusoids), moles, hair colour and hairline, eyes (spacing, size,
iris colour), brows, nose, mouth, and sometimes a beard or glasses. Each image then draws its own
nuisance from ``(seed, identity, image)``: pose (rotation, scale, shift, a yaw that moves the inner
features against the outline), expression, background, lighting (gain, colour cast, a directional
gradient), an occluding patch, blur and sensor noise.

The nuisance is large in pixel space (background, colour cast, shifts), so an untrained network's
embeddings barely separate identities; the identity cues are stable in face coordinates, so a
trained one does. Everything is deterministic: ``ds[i]`` is the same image in any process, order or
batch. Rendering is vectorised over a batch of images with numpy.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from fresnet.errors import FresnetError
from fresnet.limits import check

PathLike = Union[str, os.PathLike]
_IDENTITY_STREAM, _IMAGE_STREAM, _PAIRS_STREAM = 1, 2, 3
_PAIR_IMAGE_BASE = 1_000_000  # image numbers used for verification pairs, apart from training images

_SKIN_LIGHT = np.array([236.0, 200.0, 178.0])
_SKIN_DARK = np.array([105.0, 70.0, 52.0])
_HAIR_COLOURS = np.array(
    [[25, 20, 18], [60, 40, 25], [110, 75, 40], [200, 165, 100], [150, 70, 35], [140, 140, 140], [230, 225, 210]],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array([[60, 40, 25], [35, 90, 160], [70, 120, 60], [110, 80, 40], [25, 20, 20]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# parameters


def identity_params(seed: int, identity: int) -> dict[str, np.ndarray]:
    """The stable traits of one identity (all in face coordinates, where the face spans about [-1, 1])."""
    rng = np.random.default_rng([seed, _IDENTITY_STREAM, identity])
    p: dict[str, np.ndarray] = {}
    p["face_w"] = rng.uniform(0.46, 0.74)
    p["face_h"] = rng.uniform(0.62, 0.90)
    p["face_n"] = rng.uniform(1.7, 3.0)  # superellipse exponent: round to square jaw
    p["face_cy"] = rng.uniform(0.02, 0.14)
    tone = rng.uniform(0.0, 1.0)
    p["skin"] = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0, 10, 3)
    p["tex_k"] = rng.uniform(3.0, 10.0, 2)  # texture frequencies, orientations, phases, amplitudes
    p["tex_angle"] = rng.uniform(0, np.pi, 2)
    p["tex_phase"] = rng.uniform(0, 2 * np.pi, 2)
    p["tex_amp"] = rng.uniform(8.0, 26.0, 2)
    p["mole_xy"] = np.stack([rng.uniform(-0.45, 0.45, 4), rng.uniform(-0.3, 0.55, 4)], 1)
    p["mole_r"] = rng.uniform(0.015, 0.04, 4) * (rng.uniform(0, 1, 4) < 0.6)
    p["hair"] = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 12, 3)
    p["hair_line"] = rng.uniform(-0.75, -0.35)
    p["hair_wave"] = np.array([rng.uniform(0.0, 0.12), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)])
    p["hair_scale"] = rng.uniform(1.04, 1.3)
    p["hair_side"] = rng.uniform(-0.3, 0.5)  # how far down the sides the hair falls
    p["eye_y"] = rng.uniform(-0.28, -0.02)
    p["eye_sep"] = rng.uniform(0.17, 0.40)
    p["eye_rx"] = rng.uniform(0.08, 0.15)
    p["eye_ry"] = rng.uniform(0.04, 0.085)
    p["iris"] = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 10, 3)
    p["brow_gap"] = rng.uniform(0.08, 0.18)
    p["brow_len"] = rng.uniform(0.10, 0.20)
    p["brow_thick"] = rng.uniform(0.018, 0.05)
    p["brow_slant"] = rng.uniform(-0.35, 0.35)
    p["nose_y"] = rng.uniform(0.08, 0.24)
    p["nose_len"] = rng.uniform(0.12, 0.26)
    p["nose_w"] = rng.uniform(0.05, 0.13)
    p["mouth_y"] = rng.uniform(0.30, 0.58)
    p["mouth_w"] = rng.uniform(0.10, 0.30)
    p["mouth_t"] = rng.uniform(0.022, 0.055)
    p["mouth_curve"] = rng.uniform(-0.9, 0.9)
    p["lips"] = p["skin"] * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 10, 3)
    p["beard"] = float(rng.uniform() < 0.25) * rng.uniform(0.5, 0.9)
    p["glasses"] = float(rng.uniform() < 0.25)
    return p


def image_params(seed: int, identity: int, image: int, nuisance: float = 1.0) -> dict[str, np.ndarray]:
    """The per-image nuisance; ``nuisance`` scales its strength (0 gives a clean frontal image).

    Calibrated (docs/data.md): colour and gain are strong, because they are what an untrained
    network's embedding follows, while pose, expression, occluders and noise are moderate, because
    they are what slows a small network's learning most.
    """
    rng = np.random.default_rng([seed, _IMAGE_STREAM, identity, image])
    k = nuisance
    q: dict[str, np.ndarray] = {}
    q["angle"] = rng.uniform(-0.11, 0.11) * k  # about +-6 degrees
    q["scale"] = np.exp(rng.uniform(-0.07, 0.07) * k)
    q["shift"] = rng.uniform(-0.06, 0.06, 2) * k
    q["yaw"] = rng.uniform(-0.05, 0.05) * k
    q["eye_open"] = np.clip(1.0 - rng.uniform(0.0, 0.25) * k, 0.3, 1.0)
    q["gaze"] = rng.uniform(-0.15, 0.15, 2) * k
    q["smile"] = rng.normal(0.0, 0.18) * k
    q["brow_raise"] = rng.normal(0.0, 0.008) * k
    q["bg"] = rng.uniform(20, 235, 3)
    q["bg_grad"] = rng.normal(0, 20, 2) * k
    q["gain"] = np.exp(rng.uniform(-0.6, 0.35) * k)
    q["cast"] = np.exp(rng.normal(0, 0.2, 3) * k)
    q["light_dir"] = rng.uniform(0, 2 * np.pi)
    q["light_amp"] = rng.uniform(0.0, 0.25) * k
    occluded = rng.uniform() < 0.25 * min(k, 1.0)
    q["occ_box"] = np.array([*rng.uniform(-1.0, 0.8, 2), *rng.uniform(0.2, 0.5, 2)]) if occluded else np.zeros(4)
    q["occ_colour"] = rng.uniform(0, 255, 3)
    q["blur"] = float(rng.uniform() < 0.15 * min(k, 1.0))
    q["noise_sigma"] = rng.uniform(0.75, 4.5) * k
    q["noise_index"] = rng.integers(0, 64)
    q["noise_flip"] = float(rng.uniform() < 0.5)
    return q


def _stack(dicts: Sequence[dict]) -> dict[str, np.ndarray]:
    """List of parameter dicts -> dict of arrays shaped (B, 1, 1) (+ trailing dims) for broadcasting."""
    out = {}
    for key in dicts[0]:
        values = np.stack([np.asarray(d[key], dtype=np.float32) for d in dicts])
        out[key] = values.reshape(values.shape[:1] + (1, 1) + values.shape[1:])
    return out


# ---------------------------------------------------------------------------------------------------
# rendering
#
# Shapes are drawn on a half-resolution canvas (4x fewer pixels to shade; at least 64x64) and
# resampled to the output size; noise is added at full resolution. Layers of the same colour (both
# eyes, both brows, all moles) share one paint pass, and layers no image in the batch has (beards,
# glasses, occluders) are skipped: the cost is memory traffic over whole planes, so the number of
# passes is what sets the speed.

_MIN_CANVAS = 64
_EYE_WHITE = np.float32([235, 235, 228])
_PUPIL = np.float32([12, 12, 12])
_FRAME = np.float32([30, 30, 35])


def _cover(distance: np.ndarray, pixel) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (negative inside), one pixel wide edge."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse(x, y, cx, cy, rx, ry, pixel) -> np.ndarray:
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _cover((r - 1.0) * np.minimum(rx, ry), pixel)


def _bar(along, across, half_length, half_width, pixel) -> np.ndarray:
    return _cover(np.maximum(np.abs(along) - half_length, np.abs(across) - half_width), pixel)


def _paint(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: image (B, 3, H, W) <- lerp(image, colour, alpha (B, H, W)).

    ``colour`` is (B, 1, 1, 3) per image, or a constant (3,). Channels-first keeps the broadcast
    over long contiguous rows, several times faster than broadcasting a trailing axis of 3.
    """
    colour = np.asarray(colour, dtype=np.float32)
    colour = colour.reshape(colour.shape[0], 3, 1, 1) if colour.ndim == 4 else colour.reshape(1, 3, 1, 1)
    rows = np.flatnonzero(alpha.any(axis=(0, 2)))  # small features cover a band of rows: paint only that
    if rows.size == 0:
        return
    band = slice(rows[0], rows[-1] + 1)
    target = image[:, :, band]
    target += alpha[:, None, band] * (colour - target)


def _draw_head(image, x, y, P, pixel) -> np.ndarray:
    """Hair volume, neck, textured skin, hairline, moles and beard; returns the face mask."""
    fw, fh, cy, n = P["face_w"], P["face_h"], P["face_cy"], P["face_n"]
    hs = P["hair_scale"]
    hair_back = _ellipse(x, y, 0.0, cy - 0.06, fw * hs, fh * hs * 1.02, pixel)
    _paint(image, hair_back * _cover(y - (cy + P["hair_side"] * fh), pixel), P["hair"])
    _paint(image, _bar(x, y - cy - fh, fw * 0.55, fh * 0.5, pixel), P["skin"] * 0.82)  # neck
    r = (np.abs(x / fw) ** n + np.abs((y - cy) / fh) ** n) ** (1.0 / n)  # superellipse: round to square
    face = _cover((r - 1.0) * fw, pixel)
    texture = sum(  # identity skin texture, fixed in face coordinates
        P["tex_amp"][..., i]
        * np.sin(
            P["tex_k"][..., i] * (np.cos(P["tex_angle"][..., i]) * x + np.sin(P["tex_angle"][..., i]) * y)
            + P["tex_phase"][..., i]
        )
        for i in range(2)
    )
    skin = P["skin"].reshape(-1, 3, 1, 1) + texture[:, None]
    image += face[:, None] * (skin - image)
    wave = P["hair_wave"]
    line = cy + P["hair_line"] * fh + wave[..., 0] * np.sin(wave[..., 1] * x + wave[..., 2])
    _paint(image, face * _cover(y - line, pixel), P["hair"])
    moles = 0.0
    for i in np.flatnonzero(P["mole_r"].reshape(len(image), -1).any(0)):
        radius = P["mole_r"][..., i]
        centre_x, centre_y = P["mole_xy"][..., i, 0] * fw, cy + P["mole_xy"][..., i, 1] * fh
        # (radius > 0) keeps absent moles absent, so an image is the same in any batch
        mole = _ellipse(x, y, centre_x, centre_y, radius + 1e-6, radius + 1e-6, pixel) * (radius > 0)
        moles = np.maximum(moles, mole)
    if np.ndim(moles):
        _paint(image, 0.8 * face * moles, P["skin"] * 0.45)
    if P["beard"].any():
        _paint(image, P["beard"] * face * _cover(cy + 0.3 * fh - y, pixel), P["hair"] * 0.9)
    return face


def _draw_features(image, fx, y, P, Q, pixel) -> None:
    """Eyes, brows, glasses, nose and mouth; ``fx`` already carries the yaw parallax."""
    ey, sep, rx, eye_ry = P["eye_y"], P["eye_sep"], P["eye_rx"], P["eye_ry"]
    ry = eye_ry * Q["eye_open"]
    iris_r = eye_ry * 0.95
    whites, irises, pupils, brows, rings = [], [], [], [], []
    for side in (-1.0, 1.0):
        ex = side * sep
        white = _ellipse(fx, y, ex, ey, rx, ry, pixel)
        ix, iy = ex + Q["gaze"][..., 0] * rx * 0.4, ey + Q["gaze"][..., 1] * ry * 0.3
        whites.append(white)
        irises.append(white * _ellipse(fx, y, ix, iy, iris_r, iris_r, pixel))
        pupils.append(white * _ellipse(fx, y, ix, iy, iris_r * 0.45, iris_r * 0.45, pixel))
        by = ey - P["brow_gap"] - eye_ry + Q["brow_raise"]
        slant = side * P["brow_slant"]
        cos, sin = np.cos(slant), np.sin(slant)
        brows.append(
            _bar(
                (fx - ex) * cos + (y - by) * sin,
                (y - by) * cos - (fx - ex) * sin,
                P["brow_len"],
                P["brow_thick"],
                pixel,
            )
        )
        if P["glasses"].any():
            ring = np.sqrt(((fx - ex) / (rx * 1.5)) ** 2 + ((y - ey) / (rx * 1.2)) ** 2)
            rings.append(_cover(np.abs(ring - 1.0) * rx - 0.012, pixel))
    _paint(image, np.maximum(*whites), _EYE_WHITE)
    _paint(image, np.maximum(*irises), P["iris"])
    _paint(image, np.maximum(*pupils), _PUPIL)
    _paint(image, np.maximum(*brows), P["hair"] * 0.7)
    if rings:
        bridge = _bar(fx, y - ey + 0.02, sep - rx * 1.5, 0.01, pixel)
        _paint(image, P["glasses"] * np.maximum(np.maximum(*rings), bridge), _FRAME)

    nx = Q["yaw"] * 0.4
    ridge = _ellipse(fx, y, nx, P["nose_y"] - P["nose_len"] * 0.5, P["nose_w"] * 0.5, P["nose_len"], pixel)
    _paint(image, 0.35 * ridge, P["skin"] * 0.7)
    nostrils = np.maximum(
        *(
            _ellipse(fx, y, nx + side * P["nose_w"] * 0.6, P["nose_y"] + 0.02, P["nose_w"] * 0.35, 0.022, pixel)
            for side in (-1.0, 1.0)
        )
    )
    _paint(image, nostrils, P["skin"] * 0.35)
    mx = fx - Q["yaw"] * 0.2
    bend = (P["mouth_curve"] + Q["smile"]) * 0.25 * P["mouth_w"]  # identity shape + expression
    curve = P["mouth_y"] - bend * (mx / P["mouth_w"]) ** 2
    _paint(image, _bar(mx, y - curve, P["mouth_w"], P["mouth_t"], pixel), P["lips"])


def _apply_nuisance(image, u, v, Q, pixel) -> None:
    """Lighting (gain, colour cast, directional gradient), an occluding patch and blur, in place."""
    batch = len(image)
    direction = np.cos(Q["light_dir"]) * u + np.sin(Q["light_dir"]) * v
    image *= (Q["gain"] * (1.0 + Q["light_amp"] * direction))[:, None] * Q["cast"].reshape(batch, 3, 1, 1)
    box = Q["occ_box"]
    if box.any():
        half_w, half_h = box[..., 2], box[..., 3]
        patch = _bar(u - box[..., 0] - half_w, v - box[..., 1] - half_h, half_w, half_h, pixel)
        _paint(image, patch * (half_w > 0), Q["occ_colour"])
    blur = Q["blur"].reshape(batch)
    if blur.any():
        chosen = image[blur > 0]
        padded = np.pad(chosen, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        height, width = image.shape[-2:]
        image[blur > 0] = sum(padded[..., dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9.0


MAX_SIZE = 512  # the renderer draws at about half the output size and keeps a noise bank per size


def check_size(size: int) -> int:
    """Image sizes the renderer supports: 16 to 512 pixels (its batches of 256 stay under 1 GB)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= MAX_SIZE:
        small = " is too small for a face" if isinstance(size, (int, np.integer)) and size < 16 else " is not supported"
        raise FresnetError(f"synthetic image size {size!r}{small}; use 16 to {MAX_SIZE} pixels (112 is the default)")
    return int(size)


def render(ids: Sequence[dict], ims: Sequence[dict], size: int = 112) -> np.ndarray:
    """Render a batch: identity and image parameter dicts -> uint8 (B, size, size, 3) RGB."""
    P, Q = _stack(ids), _stack(ims)
    # Small outputs are supersampled (drawn at 64 and shrunk), so a 32x32 face still shows its eyes.
    batch, canvas = len(ids), max((size + 1) // 2, _MIN_CANVAS)
    grid = (np.arange(canvas, dtype=np.float32) + 0.5) / canvas * 2.0 - 1.0
    u, v = grid[None, None, :], grid[None, :, None]  # image coordinates in [-1, 1]

    # Inverse pose, image -> face coordinates; the yaw narrows the head and moves inner features.
    cos, sin, scale = np.cos(Q["angle"]), np.sin(Q["angle"]), Q["scale"]
    du, dv = u - Q["shift"][..., 0], v - Q["shift"][..., 1]
    x = (cos * du + sin * dv) / scale / (1.0 - np.abs(Q["yaw"]))
    y = (cos * dv - sin * du) / scale
    pixel = (2.0 / canvas) / scale

    image = np.empty((batch, 3, canvas, canvas), dtype=np.float32)
    image[:] = Q["bg"].reshape(batch, 3, 1, 1) + (Q["bg_grad"][..., 0] * u + Q["bg_grad"][..., 1] * v)[:, None]
    _draw_head(image, x, y, P, pixel)
    _draw_features(image, x - Q["yaw"] * 0.9, y, P, Q, pixel)
    _apply_nuisance(image, u, v, Q, 2.0 / canvas)

    full = torch.nn.functional.interpolate(
        torch.from_numpy(image), size=(size, size), mode="bilinear", align_corners=False, antialias=canvas > size
    )
    bank = _noise_bank(size)
    for i, q in enumerate(ims):
        noise = bank[int(q["noise_index"]) % len(bank)]
        if q["noise_flip"]:
            noise = noise.flip(-1)
        full[i].add_(noise, alpha=float(q["noise_sigma"]))
    return full.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


_NOISE_BANKS: dict[int, torch.Tensor] = {}


def _noise_bank(size: int) -> torch.Tensor:
    """A fixed table of unit Gaussian noise fields; drawing a fresh field per image costs more than
    all the shapes together, and a table entry (optionally mirrored) is just as good as sensor noise."""
    if size not in _NOISE_BANKS:
        generator = torch.Generator().manual_seed(20240611 + size)
        _NOISE_BANKS[size] = torch.randn((64, 3, size, size), generator=generator)
    return _NOISE_BANKS[size]


# ---------------------------------------------------------------------------------------------------
# the dataset


class SyntheticFaces(Dataset):
    """``num_identities`` x ``images_per_identity`` synthetic faces: ``ds[i] -> (uint8 (3, H, W), label)``.

    Sample ``i`` is image ``i % images_per_identity`` of identity ``identity_offset + i //
    images_per_identity``, with label ``i // images_per_identity``. Identities depend only on
    ``(seed, identity)``, so ``identity_offset`` selects disjoint identities (e.g. held-out ones).
    ``nuisance`` scales the per-image variation (1.0 is the calibrated default).
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        seed: int = 0,
        identity_offset: int = 0,
        size: int = 112,
        transform: Optional[Callable] = None,
        nuisance: float = 1.0,
    ):
        if num_identities < 1 or images_per_identity < 1:
            raise FresnetError(
                f"need at least 1 identity and 1 image each, got {num_identities} x {images_per_identity}"
            )
        check_size(size)
        check("max_identities", int(num_identities) + int(identity_offset), "synthetic identities", origin="request")
        self.num_identities, self.images_per_identity = int(num_identities), int(images_per_identity)
        self.seed, self.identity_offset, self.size = int(seed), int(identity_offset), int(size)
        self.transform, self.nuisance = transform, float(nuisance)
        self.num_classes = self.num_identities
        self.labels = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)
        self._identity_cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def _identity(self, identity: int) -> dict:
        if identity not in self._identity_cache:
            self._identity_cache[identity] = identity_params(self.seed, identity)
        return self._identity_cache[identity]

    def render(self, indices: Sequence[int]) -> np.ndarray:
        """Images of the given samples as uint8 (B, H, W, 3) RGB, rendered in one vectorised pass."""
        ids, ims = [], []
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            identity = self.identity_offset + index // self.images_per_identity
            ids.append(self._identity(identity))
            ims.append(image_params(self.seed, identity, index % self.images_per_identity, self.nuisance))
        return render(ids, ims, self.size)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image = torch.from_numpy(np.ascontiguousarray(self.render([index])[0].transpose(2, 0, 1)))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, images_per_identity={self.images_per_identity}, "
            f"seed={self.seed}, identity_offset={self.identity_offset}, size={self.size})"
        )


def synthetic_pairs(
    num_pairs: int,
    num_identities: int,
    identity_offset: int,
    seed: int = 0,
    size: int = 112,
    nuisance: float = 1.0,
) -> tuple[np.ndarray, list[bool]]:
    """Verification pairs among identities ``identity_offset .. identity_offset + num_identities - 1``.

    Returns ``(images (2P, H, W, 3) uint8, issame)``, the ``load_bin`` layout. Pairs alternate
    positive and negative, so any contiguous fold is balanced; images use numbers far above any
    training image, so no pair image also appears in a training set.
    """
    if num_pairs < 2 or num_identities < 2:
        raise FresnetError(f"need at least 2 pairs and 2 identities, got {num_pairs} pairs over {num_identities}")
    check_size(size)
    check("max_pack_pixels", 2 * int(num_pairs) * size * size, f"{num_pairs} synthetic pairs at {size}x{size}",
          origin="request")
    rng = np.random.default_rng([seed, _PAIRS_STREAM, identity_offset, num_identities])
    ids, ims, issame = [], [], []
    for pair in range(num_pairs):
        same = pair % 2 == 0
        first = int(rng.integers(num_identities))
        second = first if same else int((first + rng.integers(1, num_identities)) % num_identities)
        numbers = rng.choice(10_000, size=2, replace=False) + _PAIR_IMAGE_BASE
        for identity, number in ((first, numbers[0]), (second, numbers[1])):
            identity += identity_offset
            ids.append(identity_params(seed, identity))
            ims.append(image_params(seed, identity, int(number), nuisance))
        issame.append(same)
    images = np.concatenate(list(in_order_on_threads(lambda i: render(ids[i:i + 256], ims[i:i + 256], size),
                                                     range(0, len(ids), 256))))
    return images, issame


def rendering_threads() -> int:
    """Threads that render synthetic batches: one per core this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def in_order_on_threads(work: Callable[[Any], Any], items: Iterable, threads: Optional[int] = None) -> Iterator:
    """``work(item)`` for each item, yielded in order, computed on ``threads`` threads a few items ahead.

    Rendering is numpy array arithmetic and JPEG encoding is Pillow, both of which release the GIL,
    so threads overlap (the demo's set, 4,000 + 1,200 images at 32x32 on 2 cores: 10.4 s on one
    thread, 7.7 s on two; torch's resize inside each batch takes the rest). At most ``2 x threads``
    results wait, so memory stays bounded for a set of any size; the results are the same as one
    thread's (every image depends only on its seed and numbers)."""
    threads = rendering_threads() if threads is None else int(threads)
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_synthetic_dataset(
    out_dir: PathLike,
    num_identities: int = 200,
    images_per_identity: int = 20,
    holdout_identities: int = 100,
    pairs: int = 600,
    seed: int = 0,
    size: int = 112,
    overwrite: bool = False,
    bin_name: str = "synthetic_val.bin",
    progress: Optional[Callable[[Iterable], Iterable]] = None,
    nuisance: float = 1.0,
) -> dict[str, Path]:
    """Write ``out_dir/train.{rec,idx}`` + ``property`` and a ``.bin`` of held-out identities.

    Training uses identities ``0 .. num_identities - 1``; the pairs use the next
    ``holdout_identities`` ones, so evaluation never sees a training identity.
    """
    from fresnet.data.decode import encode_jpeg
    from fresnet.data.recordio.writer import RecordIOWriter
    from fresnet.data.verification_bin import save_bin

    out_dir = Path(out_dir)
    bin_path = out_dir / bin_name
    if bin_path.exists() and not overwrite:
        raise FresnetError(f"{bin_path} already exists; choose another folder or pass overwrite=True (--overwrite)")
    train = SyntheticFaces(num_identities, images_per_identity, seed=seed, size=size, nuisance=nuisance)
    chunks = range(0, len(train), 256)
    iterator = progress(chunks) if progress is not None else chunks

    def encoded(start: int) -> list[tuple[bytes, int]]:
        indices = range(start, min(start + 256, len(train)))
        return [(encode_jpeg(image), int(train.labels[index])) for index, image in zip(indices, train.render(indices))]

    with RecordIOWriter(out_dir / "train", image_size=(size, size), overwrite=overwrite) as writer:
        for records in in_order_on_threads(encoded, iterator):
            for jpeg, label in records:
                writer.add_image(jpeg, label)
    images, issame = synthetic_pairs(
        pairs, holdout_identities, identity_offset=num_identities, seed=seed, size=size, nuisance=nuisance
    )
    save_bin(bin_path, images, issame)
    return {"rec": writer.paths.rec, "idx": writer.paths.idx, "property": writer.paths.property, "bin": bin_path}
