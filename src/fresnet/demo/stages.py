"""The demo's stages, one function each, in the order they run.

Each takes the run's :class:`~fresnet.demo.state.DemoState`, leaves what it made there for the later
stages and the report, and returns a note for the report's step table (or None).
"""
from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from fresnet.demo.report import format_metric
from fresnet.demo.state import BIN_NAME, DATA_DIR, QUICK_OVERRIDES, QUICK_PAIRS, TRAIN_DIR, DemoState
from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write_bytes


def train_config(state: DemoState):
    """The training config: the chosen one, with the quick-mode and ``--max-steps`` overrides, writing
    into the report folder."""
    from fresnet.train import load_config

    o = state.options
    overrides: dict[str, Any] = {}
    if o.quick:
        overrides.update(json.loads(json.dumps(QUICK_OVERRIDES)))
    if o.max_steps is not None:
        overrides["max_steps"] = int(o.max_steps)
        if overrides.get("warmup_steps", None) is None:
            base = load_config(o.config)
            if base.warmup_steps >= o.max_steps:
                overrides["warmup_steps"] = max(0, o.max_steps // 10)
    overrides.update(
        output=str(state.out / TRAIN_DIR),
        dataset=str(state.out / DATA_DIR),
        val_targets=[str(state.out / DATA_DIR / BIN_NAME)],
        overwrite=True,
        resume=False,
        progress=o.progress,
    )
    return load_config(o.config, overrides)


def progress(state: DemoState, description: str, total: int, unit: str):
    """A bar on a terminal, plain lines in a log; nothing with ``--no-progress``."""
    from fresnet.progress import Progress

    return Progress(description, total, unit=unit, enabled=state.options.progress, transient=True)


def evaluate(state: DemoState, embedder, description: str):
    """The held-out pairs' verification with ``embedder`` (flip-sum, InsightFace's 10 folds)."""
    from fresnet.eval.embed import evaluate_bin

    with progress(state, description, 2 * state.pairs, "images") as shown:
        return evaluate_bin(embedder, state.data_paths["bin"], batch_size=state.options.batch_size,
                            progress=shown.advance)


def configure(state: DemoState) -> str:
    cfg = train_config(state)
    net = cfg.net_config()
    state.net_config = net
    state.pairs = int(state.options.pairs or (QUICK_PAIRS if state.options.quick else cfg.val_pairs))
    syn = cfg.synthetic_options()
    state.cfg = cfg
    return (f"{cfg.network} at {net.input_size[0]}x{net.input_size[1]}, {cfg.max_steps} steps, "
            f"{syn['num_identities']} training identities")


def make_data(state: DemoState) -> str:
    from fresnet.data.synthetic import write_synthetic_dataset

    syn = state.cfg.synthetic_options()
    size = state.net_config.input_size[0]
    if state.net_config.input_size[0] != state.net_config.input_size[1]:
        size = 112  # non-square networks: render 112, the training loader resizes
    # the folder must exist first: the RecordIO writer takes a missing path as a file prefix
    (state.out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    n_train = syn["num_identities"] * syn["images_per_identity"]
    with progress(state, "rendering", n_train, "images") as shown:
        paths = write_synthetic_dataset(
            state.out / DATA_DIR, num_identities=syn["num_identities"], images_per_identity=syn["images_per_identity"],
            holdout_identities=syn["holdout_identities"], pairs=state.pairs, seed=syn["seed"], size=size,
            overwrite=True, bin_name=BIN_NAME, progress=lambda chunks: shown.track(chunks, 256),
        )
    state.data_paths = paths
    state.results["data"] = {
        "train_images": n_train, "train_identities": syn["num_identities"],
        "holdout_identities": syn["holdout_identities"], "pairs": state.pairs, "image_size": size,
        "rec_bytes": paths["rec"].stat().st_size, "bin_bytes": paths["bin"].stat().st_size,
    }
    return f"{n_train} training images of {syn['num_identities']} identities, {state.pairs} held-out pairs"


def sample_picture(state: DemoState) -> None:
    import io

    from PIL import Image

    from fresnet.data.synthetic import SyntheticFaces

    syn = state.cfg.synthetic_options()
    ids, per = 6, min(6, syn["images_per_identity"])
    faces = SyntheticFaces(min(ids, syn["num_identities"]), syn["images_per_identity"], seed=syn["seed"], size=96)
    indices = [i * faces.images_per_identity + j for i in range(faces.num_identities) for j in range(per)]
    images = faces.render(indices)
    grid = np.zeros((faces.num_identities * 98, per * 98, 3), np.uint8) + 255
    for k, image in enumerate(images):
        r, c = divmod(k, per)
        grid[r * 98:r * 98 + 96, c * 98:c * 98 + 96] = image
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    atomic_write_bytes(state.out / "samples.png", buffer.getvalue())
    state.doc_parts["samples"] = "samples.png"


def photo_faces(state: DemoState) -> str:
    """MTCNN (the embedded detector) finds and aligns the face in matplotlib's sample photograph
    (Grace Hopper, public domain): photos in, faces out."""
    import io
    from pathlib import Path

    import matplotlib
    from PIL import Image

    from fresnet.faces.analysis import FaceAnalysis
    from fresnet.faces.drawing import faces_figure
    from fresnet.faces.photo import read_photo

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    rgb = read_photo(photo)
    faces = FaceAnalysis(detector="mtcnn", keep_crops=True).get(rgb)
    if not faces:
        raise FresnetError(f"{photo}: MTCNN found no face")
    buffer = io.BytesIO()
    Image.fromarray(faces_figure(rgb, faces)).save(buffer, format="PNG")
    atomic_write_bytes(state.out / "faces.png", buffer.getvalue())
    state.doc_parts["faces"] = "faces.png"
    face = faces[0]
    state.results["photo_faces"] = {
        "photo": str(photo), "size": [int(rgb.shape[1]), int(rgb.shape[0])], "faces": len(faces),
        "box": [round(float(v), 1) for v in face.bbox], "score": round(float(face.det_score), 4),
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.kps],
    }
    return f"{len(faces)} face(s), score {face.det_score:.3f}, aligned to 112x112"


def summary(state: DemoState) -> str:
    from fresnet.inspection.summary import summarize

    s = summarize(state.net_config)
    state.summary = s
    state.results["model"] = {
        "config": state.net_config.to_dict(), "params": s.trainable_params, "mxnet_args": s.mxnet_args,
        "mxnet_aux": s.mxnet_aux, "macs": s.macs, "flops": s.flops, "size_mb": s.size_mb,
        "output_shape": list(s.output_shape),
    }
    return f"{s.trainable_params / 1e6:.2f} M parameters, {s.macs / 1e6:.1f} M MACs per image"


def network_plot(state: DemoState) -> str:
    from fresnet.inspection.viz import plot_network
    from fresnet.network.model import FResNet

    result = plot_network(FResNet(state.net_config).eval(), state.out / "network.svg", title=state.cfg.network)
    state.doc_parts["network"] = result.path.name
    state.doc_parts["network_renderer"] = result.renderer
    return f"{result.path.name}, drawn with {result.renderer}"


def eval_untrained(state: DemoState) -> str:
    import torch

    from fresnet.interop.model_loader import load_any
    from fresnet.network.model import FResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(state.cfg.seed)
        model = FResNet(state.net_config)
    ev = evaluate(state, load_any(model), "embedding (untrained)")
    state.untrained = ev
    state.results["untrained"] = ev.result.to_dict()
    return f"accuracy {ev.result.accuracy:.4f} (chance is 0.5)"


def plan_training(state: DemoState) -> str:
    """Fit the training length to this machine (:mod:`fresnet.demo.budget`), unless it is fixed by
    ``--max-steps``, ``--quick`` or ``--train-budget 0``."""
    from fresnet.demo import budget
    from fresnet.train import load_config

    o, cfg = state.options, state.cfg
    if o.quick or o.max_steps is not None or o.train_budget == 0:
        why = "--quick" if o.quick else ("--max-steps" if o.max_steps is not None else "--train-budget 0")
        return f"{cfg.max_steps} steps, fixed by {why}"
    seconds = budget.TRAIN_BUDGET_S if o.train_budget is None else float(o.train_budget)
    classes = int(cfg.synthetic_options()["num_identities"])
    rate = budget.measure_steps_per_s(cfg, state.net_config, classes)
    plan = budget.plan_steps(rate, seconds, budget.MIN_STEPS, cfg.max_steps)
    state.results["step_plan"] = {**plan.__dict__, "reason": plan.reason}
    if plan.steps != cfg.max_steps:
        # verification and checkpoints keep their intervals: a shorter run has fewer of them, and
        # each verification (1,200 images, flipped too) costs as much as ~15 training steps
        state.cfg = load_config(cfg, {"max_steps": plan.steps})
    return (f"{rate:.2f} steps/s ({rate * cfg.batch_size:.0f} samples/s) measured; {plan.steps} steps "
            f"({plan.reason}, budget {seconds:.0f} s)")


def train(state: DemoState) -> str:
    import fresnet.train

    cfg = state.cfg
    result = fresnet.train.run(cfg)
    state.train_result = result
    state.results["train"] = {
        "steps": result.steps, "final_loss": result.final_loss, "train_seconds": result.elapsed_s,
        "model_path": str(result.model_path), "log_path": str(result.log_path), "metrics": result.metrics,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "loss": cfg.loss,
    }
    return f"{result.steps} steps, final loss {result.final_loss:.3f}"


def training_plot(state: DemoState) -> None:
    from fresnet.eval.plots import _pyplot, _save

    rows = state.train_result.history
    if not rows:
        raise FresnetError("the training log is empty")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([r["step"] for r in rows], [float(r["loss"]) for r in rows], label="training loss")
    ax.set(xlabel="step", ylabel="loss", title="training")
    ax.grid(True, alpha=0.3)
    val_keys = sorted({k for r in rows for k in r if str(k).startswith("val_")})
    if val_keys:
        ax2 = ax.twinx()
        for key in val_keys:
            pts = [(r["step"], float(r[key])) for r in rows if r.get(key) not in (None, "")]
            ax2.plot(*zip(*pts), "o-", color="tab:green", label=f"{key[4:]} accuracy")
        ax2.set_ylabel("held-out accuracy")
        ax2.set_ylim(0.4, 1.0)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, state.out / "training.png")
    plt.close(fig)
    state.doc_parts["training"] = "training.png"


def eval_trained(state: DemoState) -> str:
    from fresnet.interop.model_loader import load_any

    embedder = load_any(state.train_result.model_path)  # read back from disk: the saved file is what counts
    state.trained_embedder = embedder
    ev = evaluate(state, embedder, "embedding (trained)")
    state.trained = ev
    state.results["trained"] = ev.result.to_dict()
    return (f"accuracy {ev.result.accuracy:.4f} ± {ev.result.accuracy_std:.4f}, "
            f"AUC {format_metric(ev.result.auc)}")


def roc_plots(state: DemoState) -> None:
    from fresnet.eval.plots import plot_distance_histograms, plot_roc

    plot_roc({"trained": state.trained.result, "untrained": state.untrained.result}, state.out / "roc.png",
             title="held-out synthetic identities")
    plot_distance_histograms(
        {"untrained": (state.untrained.distances, state.untrained.issame),
         "trained": (state.trained.distances, state.trained.issame)},
        state.out / "distances.png",
    )
    state.doc_parts["roc"] = "roc.png"
    state.doc_parts["distances"] = "distances.png"


def export(state: DemoState) -> str:
    from fresnet.interop.model_loader import load_any
    from fresnet.interop.onnx_export import export_onnx, verify_onnx

    model = state.trained_embedder.model
    path = state.out / "model.onnx"
    export_onnx(model, path)
    max_diff = verify_onnx(model, path)
    ev = evaluate(state, load_any(str(path)), "embedding (ONNX)")
    state.results["onnx"] = {
        "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": max_diff,
        "accuracy": ev.result.accuracy, "accuracy_matches": ev.result.accuracy == state.trained.result.accuracy,
    }
    tolerance = 1e-2
    if not max_diff <= tolerance:
        raise FresnetError(f"ONNX output differs from PyTorch by {max_diff:.3g} (> {tolerance}); the export is wrong")
    return f"max |onnx - torch| = {max_diff:.2e}, ONNX accuracy {ev.result.accuracy:.4f}"
