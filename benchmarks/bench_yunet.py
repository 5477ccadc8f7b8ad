"""YuNet: fresnet's ``faces.YuNet`` (onnxruntime) against OpenCV's ``cv2.FaceDetectorYN`` on the same graph.

Both detect the faces of the same photos as ``bench_mtcnn.py`` (six portraits, their collage,
``grace_hopper.jpg``), each at the photo's own size, interleaved; both with ``--threads`` threads.
Prints the median wall-clock per pass, the ratio, and whether both found the same faces.

    python benchmarks/bench_yunet.py [--threads 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
from bench_mtcnn import photos

from fresnet.faces import yunet as yunet_module
from fresnet.faces.weights import yunet_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    import onnxruntime as ort

    def session(graph: bytes, providers):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(graph, options, providers=providers or ["CPUExecutionProvider"])

    yunet_module._session = session  # the same session, with the thread count fixed for the comparison
    ours = yunet_module.YuNet()
    images = photos()
    bgr = {name: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for name, rgb in images.items()}
    opencv = {name: cv2.FaceDetectorYN.create(str(yunet_model()), "", (im.shape[1], im.shape[0]))
              for name, im in bgr.items()}

    same = 0
    for name, rgb in images.items():
        found, (_, faces) = ours.detect(rgb), opencv[name].detect(bgr[name])
        faces = np.zeros((0, 15), np.float32) if faces is None else faces
        same += len(found) == len(faces) and bool(np.allclose(found.boxes[:, :2], faces[:, :2], atol=0.5))

    runs = {"fresnet": lambda: [ours.detect(rgb) for rgb in images.values()],
            "opencv": lambda: [opencv[name].detect(im) for name, im in bgr.items()]}
    seconds = {name: [] for name in runs}
    for run in runs.values():
        run()
    for r in range(args.rounds):
        for name in list(runs)[r % 2:] + list(runs)[:r % 2]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    mine, theirs = (statistics.median(seconds[name]) for name in ("fresnet", "opencv"))
    print(f"YuNet on {len(images)} photos, {args.threads} threads, {args.rounds} rounds; same faces on {same}/{len(images)}")
    print(f"cv2.FaceDetectorYN        {theirs * 1000:8.1f} ms per pass")
    print(f"fresnet faces.YuNet       {mine * 1000:8.1f} ms per pass")
    print(f"ratio (OpenCV / fresnet): {theirs / mine:.2f}x")


if __name__ == "__main__":
    main()
