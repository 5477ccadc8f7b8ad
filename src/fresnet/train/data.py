"""Training data: the dataset named by the config, a global-batch sampler, and verification pairs.

Determinism across world sizes: the order of samples and the mirror flips of an epoch are drawn
from ``(seed, epoch)`` alone, the *global* batch ``k`` of the epoch is ``perm[k*G:(k+1)*G]`` and
rank r takes its r-th slice. So a 1-process run with batch G and a 2-process run with batch G/2
see the same global batches, and a resumed run continues from the step count alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from fresnet.errors import FresnetError
from fresnet.train.config import TrainConfig


class GlobalBatchSampler:
    """Yields, for each step in ``[start_step, max_steps)``, this rank's ``[(index, flip), ...]``."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start_step: int, max_steps: int, mirror: bool = True):
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise FresnetError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} processes); lower batch_size"
            )
        self.num_samples, self.batch_size, self.rank = num_samples, batch_size, rank
        self.seed, self.start_step, self.max_steps, self.mirror = seed, start_step, max_steps, mirror
        self.steps_per_epoch = num_samples // self.global_batch  # the last partial batch is dropped
        self._epoch: Optional[int] = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + 7919 * epoch + 17)
        perm = torch.randperm(self.num_samples, generator=gen)
        flips = torch.randint(0, 2, (self.num_samples,), generator=gen) if self.mirror else torch.zeros(self.num_samples, dtype=torch.long)
        return perm, flips

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        perm = flips = None
        for step in range(self.start_step, self.max_steps):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != self._epoch:
                perm, flips = self._draw(epoch)
                self._epoch = epoch
            start = k * self.global_batch + self.rank * self.batch_size
            rows = perm[start:start + self.batch_size]
            yield [(int(i), bool(flips[i])) for i in rows]


class TrainView(Dataset):
    """``view[(index, flip)] -> ((3, H, W) in 0..255, label)``: resized, mirrored if asked.

    Images keep the dataset's dtype (uint8 for decoded files): a uint8 batch is a quarter of the
    bytes to pin and copy to the GPU, and the step turns it into float32 on the device."""

    def __init__(self, dataset: Dataset, input_size: tuple[int, int]):
        from fresnet.data.transforms import Resize

        self.dataset = dataset
        self.resize = Resize(tuple(input_size))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]):
        index, flip = item
        image, label = self.dataset[index]
        image = self.resize(image)
        if flip:
            image = image.flip(-1)
        if image.dtype != torch.uint8:
            image = image.float()
        return image, int(label)


class EncodedView(Dataset):
    """``view[(index, flip)] -> (encoded JPEG bytes as a uint8 tensor, label, flip)`` for decoding on
    the GPU (``decode=gpu``): the workers only read records, the device decodes the batch."""

    def __init__(self, dataset: Any):
        if not hasattr(dataset, "read_raw"):
            raise FresnetError("decode=gpu reads encoded records: it needs a RecordIO dataset; use decode=cpu for "
                               "image folders and the synthetic set")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]):
        index, flip = item
        data, label = self.dataset.read_raw(index)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(label), bool(flip)


def collate_encoded(samples: list) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    return ([s[0] for s in samples], torch.tensor([s[1] for s in samples], dtype=torch.long),
            torch.tensor([s[2] for s in samples], dtype=torch.bool))


class DeviceDecodedLoader:
    """Iterates ``(uint8 (B, 3, H, W) on the device, labels)`` from an encoded-batch loader: the
    JPEGs are decoded by ``decode(list of encoded tensors) -> list of (3, h, w) uint8`` (default:
    ``torchvision.io.decode_jpeg`` on the device), resized to ``input_size`` if needed, mirrored."""

    def __init__(self, loader: Any, input_size: tuple[int, int], device: torch.device, decode: Any = None):
        self.loader, self.input_size, self.device = loader, tuple(input_size), device
        self.decode = decode or _torchvision_decoder(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import torch.nn.functional as F

        for encoded, labels, flips in self.loader:
            images = self.decode(encoded)
            if any(tuple(im.shape[-2:]) != self.input_size for im in images):
                images = [im if tuple(im.shape[-2:]) == self.input_size else
                          F.interpolate(im[None].float(), size=self.input_size, mode="bilinear", antialias=True,
                                        align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8) for im in images]
            batch = torch.stack(images)
            flips = flips.to(batch.device, non_blocking=True)
            batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
            yield batch, labels


def _torchvision_decoder(device: torch.device):
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        raise FresnetError("decode=gpu needs torchvision (torchvision.io.decode_jpeg); install it or use decode=cpu") from None

    def decode(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)

    return decode


def default_workers(dataset: Any, device: torch.device) -> int:
    """``num_workers=auto``: none for in-memory data or on CPU (the step needs the cores), else
    one process per spare core up to 8 on CUDA."""
    if isinstance(dataset, InMemoryImages) or device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def build_loader(dataset: Any, sampler: "GlobalBatchSampler", cfg: TrainConfig, input_size: tuple[int, int],
                 device: torch.device):
    """The training batches, ``(images, labels)``: decoded by ``num_workers`` processes (pinned on
    CUDA), or for ``decode=gpu`` read as JPEG bytes and decoded on the device."""
    from torch.utils.data import DataLoader

    workers = default_workers(dataset, device) if cfg.num_workers == "auto" else int(cfg.num_workers)
    options = dict(batch_sampler=sampler, num_workers=workers,
                   # a private generator: creating the loader must not draw from the global RNG (exact resume)
                   generator=torch.Generator().manual_seed(cfg.seed),
                   pin_memory=device.type == "cuda", persistent_workers=False)
    if workers > 0:
        options["prefetch_factor"] = 4
    if cfg.decode == "gpu":
        if device.type != "cuda":
            raise FresnetError("decode=gpu needs a CUDA device; use decode=cpu")
        options["pin_memory"] = False
        loader = DataLoader(EncodedView(dataset), collate_fn=collate_encoded, **options)
        return DeviceDecodedLoader(loader, input_size, device)
    return DataLoader(TrainView(dataset, input_size), **options)


class InMemoryImages(Dataset):
    """A pre-rendered uint8 (N, 3, H, W) tensor and its labels (the synthetic set, rendered once)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, num_classes: int):
        self.images, self.labels, self.num_classes = images, np.asarray(labels), int(num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def render_synthetic(cfg: TrainConfig, size: int, progress=None) -> InMemoryImages:
    from fresnet.data import SyntheticFaces

    opts = cfg.synthetic_options()
    ds = SyntheticFaces(opts["num_identities"], opts["images_per_identity"], seed=opts["seed"],
                        size=size, nuisance=opts["nuisance"])
    chunks = []
    starts = range(0, len(ds), 256)
    for start in (progress(starts) if progress else starts):
        chunk = ds.render(range(start, min(start + 256, len(ds))))
        chunks.append(torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))))
    return InMemoryImages(torch.cat(chunks), ds.labels, ds.num_classes)


def build_dataset(cfg: TrainConfig, input_size: tuple[int, int]) -> Any:
    """The training dataset with ``num_classes``: synthetic, RecordIO or an image folder."""
    source = str(cfg.dataset)
    if source == "synthetic":
        # rendered straight at the network's size (square inputs), then kept in memory
        return render_synthetic(cfg, cfg.synthetic_render_size(input_size))
    path = Path(source)
    if not path.exists():
        raise FresnetError(f"dataset {source}: no such file or folder; give a RecordIO folder/.rec, an image folder, or 'synthetic'")
    from fresnet.data import ImageFolderDataset, RecordIODataset

    if path.suffix in (".rec", ".idx") or (path.is_dir() and (any(path.glob("*.rec")))):
        return RecordIODataset(path)
    return ImageFolderDataset(path)


def verification_sets(cfg: TrainConfig, input_size: tuple[int, int],
                      names: Optional[list[str]] = None) -> dict[str, tuple[np.ndarray, list]]:
    """``name -> (images uint8 (2P, H, W, 3), issame)`` for every ``val_targets`` entry; ``names``
    (default :func:`fresnet.eval.verification.unique_pack_names`) names them, one name per target."""
    if names is None:
        from fresnet.eval.verification import unique_pack_names

        names = unique_pack_names([str(t) for t in cfg.val_targets])
    out = {}
    for target, name in zip(cfg.val_targets, names):
        target = str(target)
        if target == "synthetic":
            from fresnet.data.synthetic import synthetic_pairs

            opts = cfg.synthetic_options()
            images, issame = synthetic_pairs(cfg.val_pairs, opts["holdout_identities"], opts["num_identities"],
                                             seed=opts["seed"], size=cfg.synthetic_render_size(input_size),
                                             nuisance=opts["nuisance"])
            if tuple(images.shape[1:3]) != tuple(input_size):
                from fresnet.data.decode import resize_rgb

                images = np.stack([resize_rgb(im, *input_size) for im in images])
            out[name] = (images, issame)
        else:
            from fresnet.data import load_bin

            path = Path(target)
            if not path.is_file():
                raise FresnetError(f"val_targets: {target} is not a file; give .bin verification packs or 'synthetic'")
            out[name] = load_bin(path, image_size=tuple(input_size))
    return out
