"""The service under load, and its durability: loopback only, bounded in time and count.

    python benchmarks/bench_service.py                          # 16 clients x 60 s, then durability
    python benchmarks/bench_service.py --clients 8 --seconds 20 --enrolments 200

Load: ``fresnet serve`` runs in a subprocess; ``--clients`` threads send the reference photos to
``/v1/embeddings`` and ``/v1/galleries/bench/search`` for ``--seconds`` each; throughput (photos/s),
p50/p99 latency and failures are reported, beside the offline pipeline's throughput on the same
photos in one process (detect -> align -> embed, photo after photo) -- the issue's goal is the
service at >= 80% of it with batching. Durability: four clients enrol ``--enrolments`` people, the
service is killed (SIGKILL) half-way, restarted on the same file; every acknowledged enrolment must be
there and the file must pass SQLite's integrity check.
"""
from __future__ import annotations

import os

# as the fresnet command line does first thing (cli/process_settings.py): OpenMP threads spin only
# briefly before sleeping -- on a shared machine long spins take the cores the working threads need
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from common import REPO_ROOT, machine_info

PHOTOS = REPO_ROOT.parent / "shared" / "reference" / "faces" / "photos"


def default_parts() -> tuple[str, str]:
    """SFace and MTCNN when this build has them; else a random-weight r18 and the SCRFD oracle graph."""
    recogniser, detector = "r18", str(Path(sys.prefix) / "oracles" / "scrfd.onnx")
    try:
        from fresnet.faces.recognizer import ONNXRecognizer  # noqa: F401
        from fresnet.faces.weights import sface_model

        recogniser = str(sface_model())
    except Exception as exc:
        print(f"SFace is not available ({type(exc).__name__}); the recogniser is r18", file=sys.stderr)
    for name, module in (("mtcnn", "fresnet.faces.mtcnn"), ("yunet", "fresnet.faces.yunet")):
        try:
            __import__(module)
            return recogniser, name
        except Exception as exc:
            print(f"detector {name} is not available ({type(exc).__name__})", file=sys.stderr)
    return recogniser, detector


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(gallery: Path, port: int, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "fresnet", "serve", "--gallery", str(gallery), "--model",
                                args.model, "--detector", args.detector, "--port", str(port), "--max-wait-ms",
                                str(args.max_wait_ms)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the service did not start within 300 s")


class Offline:
    """The pipeline in this process, one photo after another (warmed up on every photo first)."""

    def __init__(self, args, photos: list[bytes]):
        from fresnet.gallery.real_pipeline import build_pipeline

        self.pipeline = build_pipeline(args.model, args.detector)
        self.photos = photos
        self.done, self.seconds = 0, 0.0
        for data in photos:
            self._one(data)

    def _one(self, data: bytes) -> None:
        import numpy as np

        from fresnet.gallery.photos import decode_photo

        faces = self.pipeline.locate(decode_photo(data, "photo"))
        if faces:
            self.pipeline.embed(np.stack([f.crop for f in faces]))

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self._one(self.photos[self.done % len(self.photos)])
            self.done += 1
        self.seconds += time.perf_counter() - start

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


def load(base: str, photos: list[bytes], clients: int, seconds: float, path: str) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(number: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            index = number
            while time.monotonic() < stop:
                body = photos[index % len(photos)]
                index += 1
                start = time.perf_counter()
                try:
                    answer = http.post(path, files=[("photo", ("p.jpg", body, "image/jpeg"))])
                    ok = answer.status_code == 200
                    reason = f"{answer.status_code} {answer.text[:100]}"
                except httpx.HTTPError as exc:
                    ok, reason = False, repr(exc)
                with lock:
                    (latencies.append(time.perf_counter() - start) if ok else failures.append(reason))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    return {"requests": len(latencies), "failures": len(failures), "first_failure": failures[:1], "wall": wall,
            "latencies": latencies}


def durability(args, folder: Path) -> dict:
    gallery = folder / "durable.db"
    port = free_port()
    server = start_service(gallery, port, args)
    photos = sorted(PHOTOS.glob("*.jpg"))
    acknowledged: list[str] = []
    lock = threading.Lock()
    half = threading.Event()
    per_client = args.enrolments // 4

    def client(number: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for index in range(per_client):
                name = f"client{number}-{index}"
                photo = photos[(number + index) % len(photos)]
                try:
                    answer = http.post("/v1/galleries/durable/identities", data={"name": name},
                                       files=[("photos", (photo.name, photo.read_bytes(), "image/jpeg"))])
                except httpx.HTTPError:
                    return
                if answer.status_code != 201:
                    return
                with lock:
                    acknowledged.append(name)
                    if len(acknowledged) >= args.enrolments // 2:
                        half.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    half.wait(args.durability_timeout)
    server.send_signal(signal.SIGKILL)
    server.wait()
    for thread in threads:
        thread.join(60)
    server = start_service(gallery, port, args)
    try:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/galleries/durable/identities", timeout=60).json()["identities"]
    finally:
        server.kill()
        server.wait()
    from fresnet.gallery.gallery import Gallery

    with Gallery(gallery) as opened:
        integrity = opened.integrity_check()
    present = {row["name"] for row in listed}
    missing = sorted(set(acknowledged) - present)
    return {"acknowledged_before_kill": len(acknowledged), "present_after_restart": len(present),
            "acknowledged_missing": missing, "integrity_check": integrity,
            "ok": not missing and integrity == "ok" and len(present) <= len(acknowledged) + 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="per endpoint (and for the offline pipeline)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the seconds are split into")
    parser.add_argument("--enrolments", type=int, default=1000, help="durability: enrolments from 4 clients")
    parser.add_argument("--durability-timeout", type=float, default=600.0)
    parser.add_argument("--model", help="recogniser (default: SFace if present, else r18 random weights)")
    parser.add_argument("--detector", help="detector (default: mtcnn if present, else the SCRFD oracle graph)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: load, offline, durability")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    model, detector = default_parts()
    args.model, args.detector = args.model or model, args.detector or detector
    skip = set(filter(None, args.skip.split(",")))
    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"no photos in {PHOTOS}")
    results: dict = {"machine": machine_info(), "model": args.model, "detector": args.detector,
                     "clients": args.clients, "seconds": args.seconds}
    print(f"model {args.model}, detector {args.detector}, load average {results['machine']['load_average_start']}")
    folder = Path(tempfile.mkdtemp(prefix="bench_service_"))
    if "load" not in skip:
        offline = None if "offline" in skip else Offline(args, photos)
        port = free_port()
        server = start_service(folder / "bench.db", port, args)
        base = f"http://127.0.0.1:{port}"
        parts: dict[str, list[dict]] = {"embeddings": [], "search": []}
        try:
            for index, photo in enumerate(photos):  # also the service's warm-up
                httpx.post(f"{base}/v1/galleries/bench/identities", data={"name": f"person {index}"}, timeout=120,
                           files=[("photos", ("p.jpg", photo, "image/jpeg"))])
            slice_ = args.seconds / args.rounds
            for _round in range(args.rounds):  # interleaved, so slow spells of the machine hit all alike
                if offline is not None:
                    offline.run(slice_)
                for name, path in (("embeddings", "/v1/embeddings"), ("search", "/v1/galleries/bench/search")):
                    parts[name].append(load(base, photos, args.clients, slice_, path))
            results["batching"] = httpx.get(f"{base}/v1/health").json()["batching"]
        finally:
            server.kill()
            server.wait()
        for name, runs in parts.items():
            latencies = sorted(x for run in runs for x in run.pop("latencies"))
            results[name] = {
                "requests": sum(r["requests"] for r in runs), "failures": sum(r["failures"] for r in runs),
                "first_failure": next((r["first_failure"] for r in runs if r["first_failure"]), []),
                "photos_per_s": round(sum(r["requests"] for r in runs) / sum(r["wall"] for r in runs), 2),
                "p50_ms": round(1e3 * statistics.median(latencies), 1) if latencies else None,
                "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
                if latencies else None}
            print(f"{name}: {json.dumps(results[name])}")
        print(f"batching: {results['batching']}")
        if offline is not None:
            results["offline_photos_per_s"] = round(offline.rate, 2)
            print(f"offline pipeline (same photos, same rounds): {results['offline_photos_per_s']} photos/s")
            for name in ("embeddings", "search"):
                results[name]["vs_offline"] = round(results[name]["photos_per_s"] / offline.rate, 3)
                print(f"{name}: {results[name]['vs_offline']:.0%} of the offline pipeline's throughput")
    if "durability" not in skip:
        results["durability"] = durability(args, folder)
        print(f"durability: {json.dumps(results['durability'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
