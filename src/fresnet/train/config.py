"""``TrainConfig``: every key of a training run, its defaults, the original's aliases, and loading.

A config is a YAML mapping (a file, or a built-in name from ``fresnet/configs/*.yaml``) plus
``key=value`` overrides. Network keys of :class:`fresnet.network.config.NetConfig` (``num_layers``,
``net_output``, ``emb_size``, ``units``, ``filter_list``, ``input_size``, ...) may sit at the top
level, like the original's ``config.py``, or under ``net:``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from fresnet.errors import FresnetError
from fresnet.inference.compiling import COMPILE_MODES
from fresnet.network.config import FIELDS as NET_FIELDS
from fresnet.network.config import NetConfig, normalize_options, parse_value
from fresnet.train.losses import MARGIN_LOSSES, build_margin, margin_spec
from fresnet.validate import as_mapping

LR_SCHEDULES = ("step", "poly")
AMP_MODES = ("none", "bf16", "fp16")
DECODERS = ("cpu", "gpu")
ON_ERROR = ("raise", "skip")

# original train.py / config.py spellings -> ours
KEY_ALIASES = {
    "per_batch_size": "batch_size",
    "mom": "momentum",
    "weight_decay": "wd",
    "frequent": "log_every",
    "ckpt_every": "checkpoint_every",
    "save_every": "checkpoint_every",
    "val_every": "verbose",
    "data_dir": "dataset",
    "rec": "dataset",
    "net_name": "network",
    "loss_name": "loss",
    "num_epoch": None,  # refused with a hint below
}


@dataclass
class TrainConfig:
    """One training run. Field names follow the original ``train.py`` where it had one.

    Keys (defaults in brackets):
        network [r100]: a preset (``fresnet list``); ``net`` / top-level NetConfig keys override it.
        loss [arcface]: a margin loss of :func:`fresnet.train.losses.build_margin` (combined, arcface,
            cosface, subcenter_arcface, adaface, magface, curricularface, elasticface_arc[_plus],
            elasticface_cos[_plus], sphereface, sphereface2, uniface, sface; ``fresnet train
            --list-losses`` prints their options and defaults), or the original's softmax / nsoftmax.
        loss_options [{}]: the loss's options, e.g. ``{m: 0.4, grad: straight_through}``.
            The original's ``loss_s``, ``loss_m1``, ``loss_m2``, ``loss_m3`` still set s and the
            margins of arcface (m = loss_m2), cosface (m = loss_m3) and combined.
        dataset [synthetic]: a RecordIO folder or ``.rec`` path, an image folder (one sub-folder per
            identity), or ``synthetic`` (settings under ``synthetic:``).
        val_targets []: verification packs (``.bin`` paths) and/or ``synthetic`` (held-out identities).
        output [runs/train]: folder for ``checkpoint.pt``, ``model.safetensors``, ``log.csv``.
        max_steps, batch_size (per process): the global batch is batch_size x world size.
        lr [0.1], momentum [0.9], wd [5e-4]: SGD.
        lr_schedule [step]: ``step`` (x lr_factor at each of lr_steps) or ``poly`` (power 2 decay to
            0 at max_steps); both after ``warmup_steps`` of linear warm-up (a number of steps, or a
            fraction of max_steps when below 1, e.g. 0.05).
        fc7_lr_mult, fc7_wd_mult [1], fc7_no_bias [false]: the classifier's own multipliers.
        sample_rate [1]: Partial FC class sampling rate.
        init_centres [none]: a safetensors file whose ``weight`` (classes x sub-centres, emb_size)
            starts the class centres, e.g. ``fresnet drop-subcenters``' ``centres.safetensors`` for
            the K = 1 run; default: drawn from the seed.
        clip_grad_norm [0 = off]: global L2 norm clip over backbone and classifier.
        amp [none]: none, bf16 (CPU or CUDA autocast), fp16 (CUDA, with GradScaler).
        compile [auto]: ``torch.compile`` the step: none, default, reduce-overhead (+ CUDA graphs),
            max-autotune, max-autotune-no-cudagraphs, or auto (default on CUDA with Triton, none
            on CPU, where compiling costs minutes and gains little). A compile that fails at the
            first step falls back to eager with a warning.
        channels_last [auto]: NHWC activations (true/false; auto = on CUDA, where the tensor cores
            want them).
        num_workers [auto]: DataLoader processes decoding images (auto: 0 for the in-memory
            synthetic set and on CPU, else up to 8 on CUDA); batches are pinned on CUDA.
        on_error [raise]: a training image that cannot be read stops the run (raise) or is counted,
            warned about and replaced by the next good one (skip).
        decode [cpu]: where RecordIO JPEGs are decoded: cpu (the workers) or gpu
            (``torchvision.io.decode_jpeg`` on the device; needs torchvision with CUDA).
        grad_checkpointing [false]: recompute activations (``FResNet.set_grad_checkpointing``).
        sync_bn [true]: with several processes, BatchNorm statistics span the global batch.
        checkpoint_every [0 = only at the end], verbose [0 = only at the end]: steps between
            checkpoints / verification runs.
        log_every [10]: steps between CSV rows.
    """

    network: str = "r100"
    net: dict = field(default_factory=dict)
    loss: str = "arcface"
    loss_s: Optional[float] = None
    loss_m1: Optional[float] = None
    loss_m2: Optional[float] = None
    loss_m3: Optional[float] = None
    loss_options: dict = field(default_factory=dict)
    dataset: str = "synthetic"
    synthetic: dict = field(default_factory=dict)
    val_targets: list = field(default_factory=list)
    val_pairs: int = 600
    val_batch_size: int = 128
    output: str = "runs/train"
    max_steps: int = 1000
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    lr_schedule: str = "step"
    lr_steps: list = field(default_factory=list)
    lr_factor: float = 0.1
    warmup_steps: float = 0
    fc7_lr_mult: float = 1.0
    fc7_wd_mult: float = 1.0
    fc7_no_bias: bool = False
    sample_rate: float = 1.0
    init_centres: Optional[str] = None
    clip_grad_norm: float = 0.0
    amp: str = "none"
    compile: Any = "auto"
    channels_last: Any = "auto"
    decode: str = "cpu"
    on_error: str = "raise"
    grad_checkpointing: bool = False
    sync_bn: bool = True
    rand_mirror: bool = True
    checkpoint_every: int = 0
    verbose: int = 0
    log_every: int = 10
    seed: int = 0
    num_workers: Any = "auto"
    device: str = "auto"
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    # ---- derived ----------------------------------------------------------------------------
    def net_config(self) -> NetConfig:
        from fresnet.network.presets import preset_options

        options: dict[str, Any] = dict(preset_options(self.network))
        options.update(normalize_options(dict(self.net)))
        return NetConfig(**options)

    def margin_options(self) -> tuple[str, dict[str, Any]]:
        """The ``build_margin`` name and options of this run's loss (``softmax``: the plain FC).

        ``nsoftmax`` is ``combined`` without margins; the original's ``loss_s`` / ``loss_m*`` keys become
        the options of the loss they belong to."""
        legacy = {k: v for k, v in (("s", self.loss_s), ("m1", self.loss_m1), ("m2", self.loss_m2),
                                    ("m3", self.loss_m3)) if v is not None}
        if self.loss == "softmax":
            margin_spec(self.loss, **legacy)  # refuses margins on the plain FC
            if self.loss_options:
                raise FresnetError("loss softmax is the plain FC and takes no loss_options")
            return "softmax", {}
        name = "combined" if self.loss == "nsoftmax" else self.loss
        if name not in MARGIN_LOSSES:
            choices = ", ".join([*MARGIN_LOSSES, "softmax", "nsoftmax"])
            raise FresnetError(f"unknown loss {self.loss!r}; choose one of {choices}")
        options: dict[str, Any] = {"m1": 1.0, "m2": 0.0, "m3": 0.0} if self.loss == "nsoftmax" else {}
        renamed = {"arcface": {"m2": "m"}, "cosface": {"m3": "m"}}.get(name, {})
        identity = {"m1": 1.0, "m2": 0.0, "m3": 0.0}
        accepted = MARGIN_LOSSES[name].defaults
        for key, value in legacy.items():
            target = renamed.get(key, key)
            if target in accepted and (self.loss != "nsoftmax" or key == "s"):
                options[target] = value
            elif value != identity.get(key):
                raise FresnetError(f"loss_{key} does not apply to loss {self.loss}; set its options with "
                                   f"loss_options (it takes {', '.join(accepted)})")
        from_legacy = set(options) - ({"m1", "m2", "m3"} if self.loss == "nsoftmax" else set())
        for key, value in dict(self.loss_options).items():
            if key in from_legacy:
                raise FresnetError(f"loss option {key} is set twice (loss_options and a loss_* key); keep one")
            if key in ("process_group", "num_classes"):
                raise FresnetError(f"loss option {key} is set by the trainer, not in the config")
            options[key] = value
        return name, options

    def margin(self, num_classes: Optional[int] = None):
        """This run's loss: a ``build_margin`` module (with ``num_classes``), or the classic
        :class:`~fresnet.train.losses.MarginSpec` of ``softmax``."""
        name, options = self.margin_options()
        if name == "softmax":
            return margin_spec("softmax")
        return build_margin(name, **options, num_classes=num_classes)

    def synthetic_options(self) -> dict[str, Any]:
        opts = {"num_identities": 200, "images_per_identity": 20, "seed": 0, "nuisance": 1.0, "holdout_identities": 100}
        unknown = set(self.synthetic) - set(opts)
        if unknown:
            raise FresnetError(f"unknown synthetic keys {sorted(unknown)}; valid: {', '.join(opts)}")
        opts.update(self.synthetic)
        return opts

    @staticmethod
    def synthetic_render_size(input_size: tuple[int, int]) -> int:
        """The side the synthetic faces are rendered at: the network's (square inputs, at least 16),
        else 112 (resized to the input afterwards)."""
        height, width = input_size
        return max(16, height if height == width else 112)

    def compile_mode(self, device: str = "cpu", compiler_available: bool = True) -> Optional[str]:
        """The ``torch.compile`` mode for a run on ``device`` (None: eager)."""
        value = self.compile
        if (
            value is None
            or value is False
            or (isinstance(value, str) and value.lower() in ("none", "false", "off", "no"))
        ):
            return None
        if value is True or (isinstance(value, str) and value.lower() in ("true", "on", "yes")):
            return "default"
        if value == "auto":
            return "default" if device == "cuda" and compiler_available else None
        if value not in COMPILE_MODES:
            raise FresnetError(f"unknown compile {value!r}; choose auto, none, or one of {', '.join(COMPILE_MODES)}")
        return value

    def uses_channels_last(self, device: str) -> bool:
        value = self.channels_last
        if value == "auto":
            return device == "cuda"
        if isinstance(value, bool):
            return value
        raise FresnetError(f"channels_last must be auto, true or false, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation -------------------------------------------------------------------------
    def validate(self, origins: Optional[Mapping[str, str]] = None) -> TrainConfig:
        """Check every key (type and range, :mod:`fresnet.train.schema`), then how they combine.
        ``origins`` names where each key came from (a file, an override) for the messages."""
        from fresnet.train.schema import check_fields, check_net

        check_fields(self, origins)
        check_net(self, origins)  # raises FresnetError on bad network keys
        try:
            self.margin(num_classes=2)  # every option checked now, not at the first step
        except FresnetError as exc:
            keys = ("loss", "loss_options", "loss_s", "loss_m1", "loss_m2", "loss_m3")
            where = next((origins[k] for k in keys if (origins or {}).get(k) == "override"), None)
            raise FresnetError(f"{where or (origins or {}).get('loss', 'training config')}: {exc}") from None
        # the step counts, sample_rate, lr_steps and val_targets are typed, ranged and split by check_fields
        if self.lr_schedule not in LR_SCHEDULES:
            raise FresnetError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise FresnetError(f"unknown amp {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        self.compile_mode()
        self.uses_channels_last("cpu")
        if self.num_workers != "auto" and (isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int)
                                          or self.num_workers < 0):
            raise FresnetError(f"num_workers must be auto or an integer >= 0, got {self.num_workers!r}")
        if self.on_error not in ON_ERROR:
            raise FresnetError(f"unknown on_error {self.on_error!r}; choose one of {', '.join(ON_ERROR)}")
        if self.decode not in DECODERS:
            raise FresnetError(f"unknown decode {self.decode!r}; choose one of {', '.join(DECODERS)}")
        self.lr_steps = sorted(self.lr_steps)
        return self


def _field_types() -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def builtin_names() -> list[str]:
    folder = resources.files("fresnet") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: Union[str, os.PathLike]) -> tuple[dict[str, Any], str]:
    from fresnet.ioutil import read_text
    from fresnet.validate import load_yaml

    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FresnetError(
                f"{path}: config file not found; give a YAML path or one of: {', '.join(builtin_names())}"
            )
        text, origin = read_text(path, "training config"), str(path)
    else:
        resource = resources.files("fresnet") / "configs" / f"{source}.yaml"
        if not resource.is_file():
            raise FresnetError(
                f"unknown config {str(source)!r}: not a file and not a built-in; "
                f"built-ins: {', '.join(builtin_names())}"
            )
        text, origin = resource.read_text(), f"built-in {source}"
    data = load_yaml(text, origin)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise FresnetError(f"{origin}: a training config must be a mapping of keys to values")
    return data, origin


def load_config(
    config: Union[str, os.PathLike, Mapping[str, Any], TrainConfig, None] = None,
    overrides: Union[Mapping[str, Any], Sequence[str], None] = None,
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML path, a built-in name, a dict or a TrainConfig, then
    apply ``overrides`` (a dict, or ``key=value`` strings as on the command line)."""
    if isinstance(config, TrainConfig):
        data, origin = config.to_dict(), "config"
    elif isinstance(config, Mapping):
        data, origin = dict(config), "config"
    elif config is None:
        data, origin = {}, "defaults"
    else:
        data, origin = _read_yaml(config)
    merged = _normalize(data, origin)
    origins = {key: origin for key in merged}
    if overrides:
        if not isinstance(overrides, Mapping):
            pairs = {}
            for item in overrides:
                if "=" not in item:
                    raise FresnetError(f"override {item!r} is not key=value (e.g. max_steps=100)")
                key, value = item.split("=", 1)
                pairs[key.strip()] = parse_value(value.strip())
            overrides = pairs
        extra = _normalize(dict(overrides), "overrides")
        override_net = extra.pop("net", {})
        net = {**merged.pop("net", {}), **override_net}
        origins.update({key: "override" for key in extra})
        origins.update({f"net.{key}": "override" for key in override_net})  # blamed by key (schema.check_net)
        merged.update(extra)
        merged["net"] = net
    return TrainConfig(**merged).validate(origins)


def _normalize(data: dict[str, Any], origin: str) -> dict[str, Any]:
    fields = _field_types()
    out: dict[str, Any] = {}
    net: dict[str, Any] = as_mapping(data.pop("net", None), "net", origin, fix="give the network keys as a mapping")
    for key, value in data.items():
        name = KEY_ALIASES.get(key, key)
        if key in KEY_ALIASES and name is None:
            raise FresnetError(f"{origin}: key {key!r} is not supported; training length is set with max_steps")
        if name in fields:
            out[name] = value
        elif name in NET_FIELDS:
            net[name] = value
        else:
            raise FresnetError(
                f"{origin}: unknown key {key!r}; "
                f"valid keys: {', '.join(fields)}, and network keys {', '.join(NET_FIELDS)}"
            )
    if isinstance(out.get("lr_steps"), (int, float)):
        out["lr_steps"] = [int(out["lr_steps"])]
    out["net"] = net
    return out
