"""``fresnet serve``: the HTTP API and web page over face galleries (docs/service.md)."""
from __future__ import annotations

import argparse

from fresnet.cli import args as A


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the face service: HTTP API (/v1, OpenAPI at /docs) and a web page over galleries",
        description="Serve detection, embeddings, comparison, enrolment and 1:N search over HTTP (FastAPI + "
        "uvicorn). Loopback only by default; any other --host needs an API key (--api-key-env).",
    )
    p.add_argument("--gallery", dest="galleries", action="append", required=True, metavar="G.db",
                   help="a gallery file (created when absent; its file name without .db is its name in the URLs); "
                   "repeatable")
    p.add_argument("--model", required=True, help="recognition model (.onnx, .safetensors, preset, ...)")
    p.add_argument("--detector", default="mtcnn", help="face detector: mtcnn, scrfd, yunet, or a detector file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback)")
    p.add_argument("--port", type=A.positive_int, default=8000)
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the API key clients send in X-API-Key (required off loopback)")
    p.add_argument("--max-batch", type=A.positive_int, default=32, help="faces per recogniser call (default 32)")
    p.add_argument("--max-wait-ms", type=A.nonnegative_float, default=5.0,
                   help="how long a face waits for others to share its recogniser call (default 5 ms)")
    p.add_argument("--detect-workers", type=A.positive_int, default=2, help="detection threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fresnet.service.server import (  # the service loads only for this command
        ServeSettings,
        serve,
    )

    serve(ServeSettings(tuple(args.galleries), args.model, args.detector, args.host, args.port, args.api_key_env,
                        args.max_batch, args.max_wait_ms, args.detect_workers, args.device))
    return 0
