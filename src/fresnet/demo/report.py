"""The demo's report: ``report.md``, ``report.html`` and ``results.json``, written from the run's state
after every step, so an interrupted or failed run still leaves a report that says how far it got."""
from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fresnet.demo.state import BIN_NAME, DATA_DIR, TRAIN_DIR, DemoState
from fresnet.ioutil import atomic_write_text


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


def format_metric(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def machine_text(machine: dict[str, Any]) -> str:
    isa = machine.get("isa") or []
    vector = ", ".join(isa) if isa else "no AVX2"
    if "avx512f" not in isa:
        vector += ", no AVX-512"
    load = [machine.get("load_average_start"), machine.get("load_average_end")]
    load_text = " / ".join("?" if v is None else f"{v:.2f}" for v in load)
    busy = ""
    if machine.get("cpus") and any(v is not None and v > machine["cpus"] for v in load):
        busy = " The machine was busy (load above its CPU count): wall times are longer than on a quiet one."
    return (f"Machine: {machine.get('cpu')} ({machine.get('cpus')} CPUs; {vector}); torch {machine.get('torch')} "
            f"with {machine.get('threads')} threads, {machine.get('torch_cpu_capability')} kernels"
            + (f", OMP_WAIT_POLICY={machine['omp_wait_policy']}" if machine.get("omp_wait_policy") else "")
            + (f", GOMP_SPINCOUNT={machine['gomp_spincount']}" if machine.get("gomp_spincount") else "")
            + f". Load average (1 min) at the start / end: {load_text}.{busy}")


def write_report(state: DemoState, total: Optional[float] = None, failed: Optional[str] = None) -> Path:
    """Write ``report.md``, ``report.html`` and ``results.json`` for what has run so far."""
    doc = Doc()
    cfg = state.cfg
    doc.h(1, "fresnet demo report")
    trained, untrained = state.results.get("trained"), state.results.get("untrained")
    if failed:
        doc.p("**The demo failed.** The steps below show where; the error follows.")
    elif trained:
        doc.p(
            f"The `{cfg.network}`-shaped fresnet of `{state.options.config}`, trained for {cfg.max_steps} steps on synthetic identities, reaches "
            f"**{trained['accuracy']:.4f}** verification accuracy (InsightFace's 10-fold protocol, flip-sum) on "
            f"{trained['num_pairs']} pairs of **held-out** identities; the same network untrained scores "
            f"{untrained['accuracy']:.4f}."
        )
    doc.p(
        f"Run on {platform.node() or 'this machine'} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}" + (f", total {total:.1f} s." if total is not None else ".")
        + (" Quick mode: tiny settings, the numbers are not meaningful." if state.options.quick else "")
    )
    machine = state.results.get("machine")
    if machine:
        doc.p(machine_text(machine))
    doc.h(2, "Steps")
    doc.table(["#", "step", "status", "time", "CPU time", "note"],
              [[i + 1, r.title, r.status, f"{r.seconds:.1f} s", f"{r.cpu_seconds:.1f} s", r.note]
               for i, r in enumerate(state.records)])
    if state.records:
        wall, cpu = sum(r.seconds for r in state.records), sum(r.cpu_seconds for r in state.records)
        doc.p(f"Wall time {wall:.1f} s, CPU time {cpu:.1f} s (all threads). CPU time is the work done; on a busy "
              "machine the wall time grows and the CPU time does not, so the two together say whether a slow "
              "run was slow work or a shared machine.")
    if failed:
        doc.h(2, "Error")
        doc.pre(failed)

    data = state.results.get("data")
    if data:
        doc.h(2, "1. Data")
        doc.p(
            f"{data['train_images']} training images ({data['train_identities']} identities, "
            f"{data['image_size']}x{data['image_size']}) written as an InsightFace RecordIO set "
            f"(`{DATA_DIR}/train.rec`, `train.idx`, `property`; {data['rec_bytes'] / 1e6:.1f} MB), and "
            f"{data['pairs']} verification pairs (half same, half different) of {data['holdout_identities']} "
            f"other identities as `{DATA_DIR}/{BIN_NAME}`, in the `lfw.bin` format."
        )
        if "samples" in state.doc_parts:
            doc.img(state.doc_parts["samples"], "six synthetic identities (rows), six images each")

    photo = state.results.get("photo_faces")
    if photo:
        doc.h(2, "Photos in, faces out")
        doc.p(
            f"`fresnet.FaceAnalysis()` -- MTCNN, the embedded detector -- on matplotlib's sample photograph "
            f"(`grace_hopper.jpg`, {photo['size'][0]}x{photo['size'][1]}, public domain): {photo['faces']} face(s), "
            f"box {photo['box']}, score {photo['score']}; the five landmarks (eyes, nose, mouth corners) put the "
            "face onto InsightFace's ArcFace template, 112x112, exactly as InsightFace aligns it. A trained model "
            "embeds such crops: `fresnet embed PHOTOS --model model.safetensors --out faces.npz`."
        )
        if "faces" in state.doc_parts:
            doc.img(state.doc_parts["faces"], "detection (box, landmarks, score) and the aligned face")

    model = state.results.get("model")
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
        if "network" in state.doc_parts:
            renderer = state.doc_parts.get("network_renderer", "")
            doc.img(state.doc_parts["network"], "the network graph (fresnet.inspection.viz.plot_network"
                    + (", drawn with graphviz's dot)" if renderer == "dot" else ", drawn with matplotlib)"))

    train = state.results.get("train")
    if train:
        doc.h(2, "3. Training")
        doc.p(
            f"`fresnet.train.run('{state.options.config}')` on the RecordIO set: {train['steps']} steps of batch "
            f"{train['batch_size']}, loss `{train['loss']}`, lr {train['lr']}; final loss {train['final_loss']:.3f}; "
            f"{train['train_seconds']:.1f} s in training steps. Weights: `{Path(train['model_path']).relative_to(state.out)}`."
        )
        plan = state.results.get("step_plan")
        if plan:
            doc.p(
                f"**The training length adapts to the machine.** A calibration measured {plan['steps_per_s']:.2f} "
                f"training steps/s here ({plan['steps_per_s'] * train['batch_size']:.0f} samples/s); the demo's "
                f"budget of {plan['budget_s']:.0f} s of training gave {plan['steps']} steps ({plan['reason']}). "
                f"A faster machine trains more, up to the config's {plan['most']}; a slower or busy one trains "
                f"at least {plan['least']} (the quality floor), taking longer rather than learning less. "
                "`--max-steps N` fixes the length, `--train-budget SECONDS` changes the budget."
            )
        if "training" in state.doc_parts:
            doc.img(state.doc_parts["training"], "loss and held-out accuracy during training")

    if trained or untrained:
        doc.h(2, "4. Verification on held-out identities")
        cols = [("untrained", untrained), ("trained", trained)]
        cols = [(n, r) for n, r in cols if r]
        rows = [
            ["accuracy (10-fold)"] + [f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}" for _, r in cols],
            ["best threshold (sq. L2 / cosine)"] + [f"{r['best_threshold']:.2f} / {r['best_threshold_cosine']:.3f}" for _, r in cols],
            ["ROC AUC"] + [format_metric(r["auc"]) for _, r in cols],
            ["EER"] + [format_metric(r["eer"]) for _, r in cols],
        ]
        for far in cols[0][1]["tar_at_far"]:
            rows.append([f"TAR @ FAR={far}"] + [format_metric(r["tar_at_far"][far]) for _, r in cols])
        doc.table(["metric"] + [n for n, _ in cols], rows)
        notes = sorted({note for _, r in cols for note in r["notes"]})
        for note in notes:
            doc.p(f"Note: {note}.")
        if "roc" in state.doc_parts:
            doc.img(state.doc_parts["roc"], "ROC of the held-out pairs, trained vs untrained")
        if "distances" in state.doc_parts:
            doc.img(state.doc_parts["distances"], "squared L2 distances of normalised embeddings, same vs different pairs")

    onnx = state.results.get("onnx")
    if onnx:
        doc.h(2, "5. ONNX export")
        doc.p(
            f"`model.onnx` ({onnx['bytes'] / 1e6:.2f} MB): largest |onnxruntime - PyTorch| difference on random "
            f"inputs {onnx['max_abs_diff']:.2e}; accuracy of the ONNX graph on the held-out pairs "
            f"{onnx['accuracy']:.4f} ({'identical to' if onnx['accuracy_matches'] else 'differs from'} PyTorch)."
        )
    doc.h(2, "Reproduce")
    out = state.out.as_posix()
    doc.pre(
        f"fresnet demo --out {out}{' --quick' if state.options.quick else ''}\n"
        f"fresnet eval {out}/{TRAIN_DIR}/model.safetensors --bin {out}/{DATA_DIR}/{BIN_NAME} --out {out}/eval\n"
        f"fresnet eval {out}/model.onnx --bin {out}/{DATA_DIR}/{BIN_NAME} --out {out}/eval-onnx\n"
        f"fresnet compare {out}/{TRAIN_DIR}/model.safetensors A.jpg B.jpg"
    )

    results = {
        "status": "failed" if failed else ("ok" if total is not None else "running"),
        "options": {"config": state.options.config, "quick": state.options.quick, "max_steps": state.options.max_steps,
                    "train_budget": state.options.train_budget},
        "steps": [r.__dict__ for r in state.records],
        "total_seconds": total,
        **state.results,
    }
    atomic_write_text(state.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(state.out / "report.md", doc.markdown())
    atomic_write_text(state.out / "report.html", doc.html("fresnet demo report"))
    return state.out / "report.md"

