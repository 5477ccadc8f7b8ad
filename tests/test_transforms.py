"""FaceImageIter's augmentations: what each one keeps, what it changes, and the output scale."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fresnet.data.decode import check_decoder, decode_image, encode_jpeg
from fresnet.data.transforms import (
    ColorJitter,
    Cutoff,
    RandomJpeg,
    RandomMirror,
    Resize,
    ToFloat,
    eval_transform,
    train_transform,
)
from fresnet.errors import FresnetError

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _image(size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(30, 220, (3, size, size), dtype=np.uint8))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mirror_flips_left_right_with_its_probability():
    image = _image()
    assert torch.equal(RandomMirror(p=1.0)(image), image.flip(-1))
    assert torch.equal(RandomMirror(p=0.0)(image), image)
    mirror = RandomMirror(generator=_gen(1))
    flips = sum(not torch.equal(mirror(image), image) for _ in range(400))
    assert 150 < flips < 250


def test_cutoff_fills_a_grey_square_clipped_at_the_border():
    image = _image(40)
    out = Cutoff(16, p=1.0, generator=_gen(2))(image)
    grey = (out == 128).all(0)
    rows, cols = grey.any(1).nonzero().flatten(), grey.any(0).nonzero().flatten()
    assert 0 < len(rows) <= 16 and 0 < len(cols) <= 16
    assert grey[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid rectangle
    assert torch.equal(out[:, ~grey], image[:, ~grey])  # nothing else changed
    assert torch.equal(image, _image(40))  # the input is not modified in place
    assert torch.equal(Cutoff(16, p=0.0)(image), image)


def _color_aug_reference(image: torch.Tensor, draws) -> torch.Tensor:
    """FaceImageIter.color_aug, step by step, on HWC like the original."""
    src = image.permute(1, 2, 0).double()
    coef = LUMA.view(1, 1, 3).double()
    for name, alpha in draws:
        if name == "brightness":
            src = src * alpha
        elif name == "contrast":
            gray = src * coef
            gray = (3.0 * (1.0 - alpha) / gray.numel()) * gray.sum()
            src = src * alpha + gray
        else:
            gray = (src * coef).sum(2, keepdim=True) * (1.0 - alpha)
            src = src * alpha + gray
    return src.permute(2, 0, 1)


def test_color_jitter_matches_face_image_iter_formulas():
    image = _image()
    jitter = ColorJitter(0.4, generator=_gen(3))
    for _ in range(6):
        draws = jitter.draw()
        assert sorted(name for name, _ in draws) == ["brightness", "contrast", "saturation"]
        assert all(0.6 <= alpha <= 1.4 for _, alpha in draws)
        expected = _color_aug_reference(image, draws).clamp(0, 255).float()
        assert torch.allclose(jitter.apply(image, draws), expected, atol=1e-3)
    # contrast keeps the mean luminance, saturation each pixel's luminance
    x = image.float()
    contrast = jitter.apply(x, [("contrast", 1.3)])
    assert torch.allclose((contrast * LUMA).sum(0).mean(), (x * LUMA).sum(0).mean(), atol=1e-2)
    saturation = jitter.apply(x, [("saturation", 0.7)])
    assert torch.allclose((saturation * LUMA).sum(0), (x * LUMA).sum(0), atol=1e-2)
    out = jitter(_image())
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255
    assert torch.allclose(ColorJitter(0.0)(_image()), _image().float())


def test_resize_to_the_network_input():
    image = _image(64)
    out = Resize(112)(image)
    assert out.shape == (3, 112, 112) and out.dtype == torch.uint8
    assert Resize((112, 96))(image).shape == (3, 112, 96)
    assert Resize(64)(image) is image  # already the right size
    flat = torch.full((3, 50, 50), 77, dtype=torch.uint8)
    assert (Resize(20)(flat) == 77).all()  # no drift in level


def test_jpeg_recompression_changes_pixels_not_shape():
    image = _image(48)
    out = RandomJpeg(quality=(5, 5), p=1.0, generator=_gen(4))(image)
    assert out.shape == image.shape and out.dtype == torch.uint8 and not torch.equal(out, image)


def test_pipelines_output_float_rgb_in_0_255_without_rescaling():
    image = torch.full((3, 56, 56), 200, dtype=torch.uint8)
    image[0] = 10
    out = eval_transform(112)(image)
    assert out.dtype == torch.float32 and out.shape == (3, 112, 112)
    assert out[0].max() == 10 and out[1].min() == 200  # RGB order and 0..255 scale kept: the model normalises
    train = train_transform(112, cutoff=20, color_jitter=0.125, jpeg=True, generator=_gen(5))
    batch = torch.stack([train(_image(112, seed=s)) for s in range(8)])
    assert batch.dtype == torch.float32 and batch.shape == (8, 3, 112, 112)
    assert 0 <= batch.min() and batch.max() <= 255 and batch.max() > 1.5  # not rescaled to 0..1
    assert torch.equal(ToFloat()(image), image.float())
    repeat = train_transform(112, cutoff=20, color_jitter=0.125, generator=_gen(6))
    again = train_transform(112, cutoff=20, color_jitter=0.125, generator=_gen(6))
    assert torch.equal(repeat(_image(112)), again(_image(112)))  # a generator pins the augmentations


def test_decoders():
    ramp = np.linspace(20, 230, 24)
    array = np.stack([ramp[:, None] + 0 * ramp, ramp[None, :] + 0 * ramp[:, None], 255 - ramp[:, None] + 0 * ramp], -1)
    array = array.astype(np.uint8)  # smooth, so JPEG's loss is small
    data = encode_jpeg(array)
    decoded = decode_image(data, "test.jpg")
    assert decoded.shape == (24, 24, 3) and np.abs(decoded.astype(int) - array).mean() < 3
    grey = io.BytesIO()
    Image.fromarray(array[:, :, 0]).save(grey, format="PNG")
    assert decode_image(grey.getvalue(), "grey.png").shape == (24, 24, 3)  # grey becomes RGB
    with pytest.raises(FresnetError, match="test.jpg: the image is empty"):
        decode_image(b"", "test.jpg")
    with pytest.raises(FresnetError, match="unknown image decoder"):
        check_decoder("turbo")
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(FresnetError, match="needs OpenCV, which is not installed"):
            check_decoder("cv2")
    else:
        assert np.abs(decode_image(data, "x", "cv2").astype(int) - decoded).max() <= 3
