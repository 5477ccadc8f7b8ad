"""``fresnet demo``: the whole package in one run, offline, in minutes on a laptop CPU.

Steps (each timed, each recorded in the report):

1. data -- synthetic identities (:mod:`fresnet.data.synthetic`) written as an InsightFace RecordIO
   training set plus a ``.bin`` verification pack of *held-out* identities;
2. model -- the network of the training config: summary (parameters, MACs) and a drawing of its graph;
3. untrained -- the same network with its initial random weights, evaluated on the held-out pairs;
4. train -- :func:`fresnet.train.run` on the RecordIO set (config ``synthetic-r18``);
5. evaluate -- the trained model on the held-out pairs with InsightFace's protocol; ROC plot;
6. export -- ONNX export, onnxruntime parity (max abs diff) and accuracy of the ONNX graph.

Everything lands in one folder with ``report.md``, ``report.html`` and ``results.json``. Pictures are
optional (a missing ``dot`` binary or plotting failure is written into the report); data, training,
evaluation and export failures stop the demo with :class:`DemoFailed`.
"""
from __future__ import annotations

import html
import json
import math
import os
import platform
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write_bytes, atomic_write_text

MARKER = "results.json"  # a folder holding this is a previous demo report and may be overwritten
DATA_DIR, TRAIN_DIR = "data", "train"
BIN_NAME = "holdout.bin"

# --quick: a smoke run in well under a minute (tests, CI); the numbers mean nothing
QUICK_OVERRIDES = {
    "synthetic": {"num_identities": 16, "images_per_identity": 6, "holdout_identities": 8},
    "net": {"units": [1, 1, 1, 1]},
    "max_steps": 8,
    "batch_size": 32,
    "warmup_steps": 2,
    "verbose": 0,
    "checkpoint_every": 0,
    "log_every": 1,
}
QUICK_PAIRS = 40


class DemoFailed(FresnetError):
    """A required step failed; the report written so far says which and why."""


@dataclass
class DemoOptions:
    out: Path = Path("report")
    config: str = "synthetic-r18"
    max_steps: Optional[int] = None
    quick: bool = False
    force: bool = False
    pairs: Optional[int] = None
    batch_size: int = 128  # evaluation batch size
    progress: bool = True


@dataclass
class StepRecord:
    title: str
    status: str  # ok | skipped | failed
    seconds: float
    note: str = ""


@dataclass
class DemoResult:
    out: Path
    accuracy: float
    untrained_accuracy: float
    steps: list[StepRecord]
    seconds: float
    report: Path


# ---------------------------------------------------------------------------------------------------
# report blocks, rendered both to Markdown and to HTML


@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", headers, [[str(c) for c in r] for r in rows]))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", path, alt))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append("#" * block[1] + " " + block[2])
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
            elif kind == "img":
                out.append(f"![{block[2]}]({block[1]})")
            elif kind == "pre":
                out.append("```\n" + block[1].rstrip() + "\n```")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{e(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline_html(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in block[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                body.append(f'<figure><img src="{e(block[1])}" alt="{e(block[2])}"><figcaption>{e(block[2])}</figcaption></figure>')
            elif kind == "pre":
                body.append(f"<pre>{e(block[1])}</pre>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
            "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
            "figure{margin:1em 0}figcaption{color:#666;font-size:.9em}"
        )
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline_html(text: str) -> str:
    """Escape, then turn Markdown's `code` and **bold** into tags."""
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------------
# the run


class Demo:
    STEPS = ("data", "model", "untrained", "train", "evaluate", "export", "report")

    def __init__(self, options: DemoOptions, console=None):
        from rich.console import Console

        self.o = options
        self.out = Path(options.out)
        self.console = console or Console()
        self.records: list[StepRecord] = []
        self.doc_parts: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.start = time.perf_counter()

    # ---- step bookkeeping -----------------------------------------------------------------------
    def step(self, title: str, fn: Callable[[], Any], optional: bool = False) -> Any:
        index = len(self.records) + 1
        self.console.print(f"[bold cyan][{index}] {title}[/]")
        t0 = time.perf_counter()
        self._note = ""
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 -- every failure is recorded, required ones re-raised
            seconds = time.perf_counter() - t0
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if optional:
                self.records.append(StepRecord(title, "skipped", seconds, reason))
                self.console.print(f"    [yellow]skipped[/] after {seconds:.1f} s: {reason}")
                return None
            self.records.append(StepRecord(title, "failed", seconds, reason))
            self.console.print(f"    [red]failed[/] after {seconds:.1f} s: {reason}")
            self._write_report(failed=traceback.format_exc())
            raise DemoFailed(f"demo step '{title}' failed: {reason} (partial report in {self.out})") from exc
        seconds = time.perf_counter() - t0
        note = self._note
        self.records.append(StepRecord(title, "ok", seconds, note))
        self.console.print(f"    done in {seconds:.1f} s" + (f" ({note})" if note else ""))
        return value

    # ---- set-up ---------------------------------------------------------------------------------
    def prepare_folder(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise FresnetError(f"{out} exists and is not a folder; choose another --out")
        if out.is_dir() and any(out.iterdir()):
            if not (out / MARKER).exists() and not self.o.force:
                raise FresnetError(
                    f"{out} is not empty and holds no previous demo report; choose another --out or pass --force"
                )
            for name in (DATA_DIR, TRAIN_DIR):  # our own sub-folders from a previous run
                shutil.rmtree(out / name, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)

    def train_config(self):
        from fresnet.train import load_config

        overrides: dict[str, Any] = {}
        if self.o.quick:
            overrides.update(json.loads(json.dumps(QUICK_OVERRIDES)))
        if self.o.max_steps is not None:
            overrides["max_steps"] = int(self.o.max_steps)
            if overrides.get("warmup_steps", None) is None:
                base = load_config(self.o.config)
                if base.warmup_steps >= self.o.max_steps:
                    overrides["warmup_steps"] = max(0, self.o.max_steps // 10)
        overrides.update(
            output=str(self.out / TRAIN_DIR),
            dataset=str(self.out / DATA_DIR),
            val_targets=[str(self.out / DATA_DIR / BIN_NAME)],
            overwrite=True,
            resume=False,
            progress=self.o.progress,
        )
        return load_config(self.o.config, overrides)

    # ---- the steps ------------------------------------------------------------------------------
    def run(self) -> DemoResult:
        self.prepare_folder()
        self._write_report()  # marks the folder as a demo report at once, so an interrupted run can be redone
        self.console.print(f"fresnet demo -> {self.out}/ (config {self.o.config}{', quick' if self.o.quick else ''})")
        cfg = self.step("configuration", self._load_config)
        self.cfg = cfg
        self.step("data: synthetic identities -> RecordIO + held-out .bin", self._make_data)
        self.step("data: picture of sample identities", self._sample_picture, optional=True)
        self.step("model: summary", self._summary)
        self.step("model: network graph", self._network_plot, optional=True)
        self.step("evaluate the untrained network (random weights)", self._eval_untrained)
        self.step("train", self._train)
        self.step("training curves", self._training_plot, optional=True)
        self.step("evaluate the trained network", self._eval_trained)
        self.step("ROC and distance plots", self._roc_plots, optional=True)
        self.step("export ONNX and check parity", self._export)
        total = time.perf_counter() - self.start
        report = self._write_report(total=total)
        return DemoResult(self.out, self.results["trained"]["accuracy"], self.results["untrained"]["accuracy"],
                          self.records, total, report)

    def _load_config(self):
        cfg = self.train_config()
        net = cfg.net_config()
        self.net_config = net
        self.pairs = int(self.o.pairs or (QUICK_PAIRS if self.o.quick else cfg.val_pairs))
        syn = cfg.synthetic_options()
        self._note = (f"{cfg.network} at {net.input_size[0]}x{net.input_size[1]}, {cfg.max_steps} steps, "
                      f"{syn['num_identities']} training identities")
        return cfg

    def _make_data(self):
        from fresnet.data.synthetic import write_synthetic_dataset

        syn = self.cfg.synthetic_options()
        size = self.net_config.input_size[0]
        if self.net_config.input_size[0] != self.net_config.input_size[1]:
            size = 112  # non-square networks: render 112, the training loader resizes
        # the folder must exist first: the RecordIO writer takes a missing path as a file prefix
        (self.out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        paths = write_synthetic_dataset(
            self.out / DATA_DIR, num_identities=syn["num_identities"], images_per_identity=syn["images_per_identity"],
            holdout_identities=syn["holdout_identities"], pairs=self.pairs, seed=syn["seed"], size=size,
            overwrite=True, bin_name=BIN_NAME,
        )
        self.data_paths = paths
        n_train = syn["num_identities"] * syn["images_per_identity"]
        self.results["data"] = {
            "train_images": n_train, "train_identities": syn["num_identities"],
            "holdout_identities": syn["holdout_identities"], "pairs": self.pairs, "image_size": size,
            "rec_bytes": paths["rec"].stat().st_size, "bin_bytes": paths["bin"].stat().st_size,
        }
        self._note = f"{n_train} training images of {syn['num_identities']} identities, {self.pairs} held-out pairs"

    def _sample_picture(self):
        from PIL import Image

        from fresnet.data.synthetic import SyntheticFaces

        syn = self.cfg.synthetic_options()
        ids, per = 6, min(6, syn["images_per_identity"])
        faces = SyntheticFaces(min(ids, syn["num_identities"]), syn["images_per_identity"], seed=syn["seed"], size=96)
        indices = [i * faces.images_per_identity + j for i in range(faces.num_identities) for j in range(per)]
        images = faces.render(indices)
        grid = np.zeros((faces.num_identities * 98, per * 98, 3), np.uint8) + 255
        for k, image in enumerate(images):
            r, c = divmod(k, per)
            grid[r * 98:r * 98 + 96, c * 98:c * 98 + 96] = image
        import io

        buffer = io.BytesIO()
        Image.fromarray(grid).save(buffer, format="PNG")
        atomic_write_bytes(self.out / "samples.png", buffer.getvalue())
        self.doc_parts["samples"] = "samples.png"

    def _summary(self):
        from fresnet.inspection.summary import summarize

        s = summarize(self.net_config)
        self.summary = s
        self.results["model"] = {
            "config": self.net_config.to_dict(), "params": s.trainable_params, "mxnet_args": s.mxnet_args,
            "mxnet_aux": s.mxnet_aux, "macs": s.macs, "flops": s.flops, "size_mb": s.size_mb,
            "output_shape": list(s.output_shape),
        }
        self._note = f"{s.trainable_params / 1e6:.2f} M parameters, {s.macs / 1e6:.1f} M MACs per image"

    def _network_plot(self):
        from fresnet.network.model import FResNet
        from fresnet.inspection.viz import plot_network

        result = plot_network(FResNet(self.net_config).eval(), self.out / "network.svg", title=self.cfg.network)
        if not result.rendered:
            (self.out / "network.svg").unlink(missing_ok=True)
            self.doc_parts["network_dot"] = result.path.name
            self._note = (f"graphviz 'dot' not found: wrote {result.path.name} (render with "
                          f"`dot -Tsvg {result.path.name} -o network.svg`)")
            return
        self.doc_parts["network"] = result.path.name

    def _eval_untrained(self):
        import torch

        from fresnet.eval.embed import evaluate_bin
        from fresnet.eval.model_loader import load_any
        from fresnet.network.model import FResNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = FResNet(self.net_config)
        ev = evaluate_bin(load_any(model), self.data_paths["bin"], batch_size=self.o.batch_size)
        self.untrained = ev
        self.results["untrained"] = ev.result.to_dict()
        self._note = f"accuracy {ev.result.accuracy:.4f} (chance is 0.5)"

    def _train(self):
        import fresnet.train

        result = fresnet.train.run(self.cfg)
        self.train_result = result
        self.results["train"] = {
            "steps": result.steps, "final_loss": result.final_loss, "train_seconds": result.elapsed_s,
            "model_path": str(result.model_path), "log_path": str(result.log_path), "metrics": result.metrics,
            "batch_size": self.cfg.batch_size, "lr": self.cfg.lr, "loss": self.cfg.loss,
        }
        self._note = f"{result.steps} steps, final loss {result.final_loss:.3f}"

    def _training_plot(self):
        from fresnet.eval.plots import _pyplot, _save

        rows = self.train_result.history
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
        _save(fig, self.out / "training.png")
        plt.close(fig)
        self.doc_parts["training"] = "training.png"

    def _eval_trained(self):
        from fresnet.eval.embed import evaluate_bin
        from fresnet.eval.model_loader import load_any

        embedder = load_any(self.train_result.model_path)  # read back from disk: the saved file is what counts
        self.trained_embedder = embedder
        ev = evaluate_bin(embedder, self.data_paths["bin"], batch_size=self.o.batch_size)
        self.trained = ev
        self.results["trained"] = ev.result.to_dict()
        self._note = f"accuracy {ev.result.accuracy:.4f} ± {ev.result.accuracy_std:.4f}, AUC {_fmt(ev.result.auc)}"

    def _roc_plots(self):
        from fresnet.eval.plots import plot_distance_histograms, plot_roc

        plot_roc({"trained": self.trained.result, "untrained": self.untrained.result}, self.out / "roc.png",
                 title="held-out synthetic identities")
        plot_distance_histograms(
            {"untrained": (self.untrained.distances, self.untrained.issame),
             "trained": (self.trained.distances, self.trained.issame)},
            self.out / "distances.png",
        )
        self.doc_parts["roc"] = "roc.png"
        self.doc_parts["distances"] = "distances.png"

    def _export(self):
        import fresnet
        from fresnet.eval.embed import evaluate_bin
        from fresnet.eval.model_loader import load_any
        from fresnet.interop.onnx_export import verify_onnx

        model = self.trained_embedder.model
        path = self.out / "model.onnx"
        fresnet.export_onnx(model, path)
        max_diff = verify_onnx(model, path)
        ev = evaluate_bin(load_any(str(path)), self.data_paths["bin"], batch_size=self.o.batch_size)
        self.results["onnx"] = {
            "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": max_diff,
            "accuracy": ev.result.accuracy, "accuracy_matches": ev.result.accuracy == self.trained.result.accuracy,
        }
        tolerance = 1e-2
        if not max_diff <= tolerance:
            raise FresnetError(f"ONNX output differs from PyTorch by {max_diff:.3g} (> {tolerance}); the export is wrong")
        self._note = f"max |onnx - torch| = {max_diff:.2e}, ONNX accuracy {ev.result.accuracy:.4f}"

    # ---- the report -----------------------------------------------------------------------------
    def _write_report(self, total: Optional[float] = None, failed: Optional[str] = None) -> Path:
        doc = Doc()
        cfg = getattr(self, "cfg", None)
        doc.h(1, "fresnet demo report")
        trained, untrained = self.results.get("trained"), self.results.get("untrained")
        if failed:
            doc.p("**The demo failed.** The steps below show where; the error follows.")
        elif trained:
            doc.p(
                f"The `{cfg.network}`-shaped fresnet of `{self.o.config}`, trained for {cfg.max_steps} steps on synthetic identities, reaches "
                f"**{trained['accuracy']:.4f}** verification accuracy (InsightFace's 10-fold protocol, flip-sum) on "
                f"{trained['num_pairs']} pairs of **held-out** identities; the same network untrained scores "
                f"{untrained['accuracy']:.4f}."
            )
        doc.p(
            f"Run on {platform.node() or 'this machine'} ({platform.machine()}, {os.cpu_count()} CPUs), "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}" + (f", total {total:.1f} s." if total is not None else ".")
            + (" Quick mode: tiny settings, the numbers are not meaningful." if self.o.quick else "")
        )
        doc.h(2, "Steps")
        doc.table(["#", "step", "status", "time", "note"],
                  [[i + 1, r.title, r.status, f"{r.seconds:.1f} s", r.note] for i, r in enumerate(self.records)])
        if failed:
            doc.h(2, "Error")
            doc.pre(failed)

        data = self.results.get("data")
        if data:
            doc.h(2, "1. Data")
            doc.p(
                f"{data['train_images']} training images ({data['train_identities']} identities, "
                f"{data['image_size']}x{data['image_size']}) written as an InsightFace RecordIO set "
                f"(`{DATA_DIR}/train.rec`, `train.idx`, `property`; {data['rec_bytes'] / 1e6:.1f} MB), and "
                f"{data['pairs']} verification pairs (half same, half different) of {data['holdout_identities']} "
                f"other identities as `{DATA_DIR}/{BIN_NAME}`, in the `lfw.bin` format."
            )
            if "samples" in self.doc_parts:
                doc.img(self.doc_parts["samples"], "six synthetic identities (rows), six images each")

        model = self.results.get("model")
        if model:
            doc.h(2, "2. Model")
            doc.table(["", ""], [
                ["config", f"`{json.dumps({k: v for k, v in model['config'].items() if v is not None})}`"],
                ["parameters (true count)", f"{model['params']:,}"],
                ["MXNet arguments / aux", f"{model['mxnet_args']:,} / {model['mxnet_aux']:,}"],
                ["MACs / FLOPs per image", f"{model['macs']:,} / {model['flops']:,}"],
                ["size (float32)", f"{model['size_mb']:.2f} MB"],
                ["output", f"{model['output_shape']}"],
            ])
            if "network" in self.doc_parts:
                doc.img(self.doc_parts["network"], "the network graph (fresnet.inspection.viz.plot_network)")
            elif "network_dot" in self.doc_parts:
                doc.p(f"graphviz's `dot` is not installed, so the graph was written as `{self.doc_parts['network_dot']}` "
                      "(render it with `dot -Tsvg`).")

        train = self.results.get("train")
        if train:
            doc.h(2, "3. Training")
            doc.p(
                f"`fresnet.train.run('{self.o.config}')` on the RecordIO set: {train['steps']} steps of batch "
                f"{train['batch_size']}, loss `{train['loss']}`, lr {train['lr']}; final loss {train['final_loss']:.3f}; "
                f"{train['train_seconds']:.1f} s in training steps. Weights: `{Path(train['model_path']).relative_to(self.out)}`."
            )
            if "training" in self.doc_parts:
                doc.img(self.doc_parts["training"], "loss and held-out accuracy during training")

        if trained or untrained:
            doc.h(2, "4. Verification on held-out identities")
            cols = [("untrained", untrained), ("trained", trained)]
            cols = [(n, r) for n, r in cols if r]
            rows = [
                ["accuracy (10-fold)"] + [f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}" for _, r in cols],
                ["best threshold (sq. L2 / cosine)"] + [f"{r['best_threshold']:.2f} / {r['best_threshold_cosine']:.3f}" for _, r in cols],
                ["ROC AUC"] + [_fmt(r["auc"]) for _, r in cols],
                ["EER"] + [_fmt(r["eer"]) for _, r in cols],
            ]
            for far in cols[0][1]["tar_at_far"]:
                rows.append([f"TAR @ FAR={far}"] + [_fmt(r["tar_at_far"][far]) for _, r in cols])
            doc.table(["metric"] + [n for n, _ in cols], rows)
            notes = sorted({note for _, r in cols for note in r["notes"]})
            for note in notes:
                doc.p(f"Note: {note}.")
            if "roc" in self.doc_parts:
                doc.img(self.doc_parts["roc"], "ROC of the held-out pairs, trained vs untrained")
            if "distances" in self.doc_parts:
                doc.img(self.doc_parts["distances"], "squared L2 distances of normalised embeddings, same vs different pairs")

        onnx = self.results.get("onnx")
        if onnx:
            doc.h(2, "5. ONNX export")
            doc.p(
                f"`model.onnx` ({onnx['bytes'] / 1e6:.2f} MB): largest |onnxruntime - PyTorch| difference on random "
                f"inputs {onnx['max_abs_diff']:.2e}; accuracy of the ONNX graph on the held-out pairs "
                f"{onnx['accuracy']:.4f} ({'identical to' if onnx['accuracy_matches'] else 'differs from'} PyTorch)."
            )
        doc.h(2, "Reproduce")
        out = self.out.as_posix()
        doc.pre(
            f"fresnet demo --out {out}{' --quick' if self.o.quick else ''}\n"
            f"fresnet eval {out}/{TRAIN_DIR}/model.safetensors --bin {out}/{DATA_DIR}/{BIN_NAME} --out {out}/eval\n"
            f"fresnet eval {out}/model.onnx --bin {out}/{DATA_DIR}/{BIN_NAME} --out {out}/eval-onnx\n"
            f"fresnet compare {out}/{TRAIN_DIR}/model.safetensors A.jpg B.jpg"
        )

        results = {
            "status": "failed" if failed else ("ok" if total is not None else "running"),
            "options": {"config": self.o.config, "quick": self.o.quick, "max_steps": self.o.max_steps},
            "steps": [r.__dict__ for r in self.records],
            "total_seconds": total,
            **self.results,
        }
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
        atomic_write_text(self.out / "report.md", doc.markdown())
        atomic_write_text(self.out / "report.html", doc.html("fresnet demo report"))
        return self.out / "report.md"


def run_demo(options: DemoOptions, console=None) -> DemoResult:
    """Run the demo; raises :class:`DemoFailed` when a required step fails (a partial report is written)."""
    return Demo(options, console).run()
