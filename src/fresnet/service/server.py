"""``fresnet serve``: open the galleries, build the face pipeline, run uvicorn."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fresnet.errors import FresnetError
from fresnet.service.security import check_exposure


@dataclass(frozen=True)
class ServeSettings:
    galleries: tuple[str, ...]
    model: str
    detector: str = "mtcnn"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    detect_workers: int = 2
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


def api_key_from(env: str | None) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise FresnetError(f"--api-key-env {env}: the environment variable {env} is not set (or empty)")
    return value


def open_galleries(paths, contract) -> dict:
    from fresnet.gallery.gallery import Gallery
    from fresnet.gallery.names import gallery_name

    galleries = {}
    for path in paths:
        name = gallery_name(Path(path).stem)
        if name in galleries:
            raise FresnetError(f"two galleries named {name!r} (the file name without .db names a gallery)")
        galleries[name] = Gallery(path, contract)
    return galleries


def serve(settings: ServeSettings) -> None:
    import uvicorn

    from fresnet.gallery.real_pipeline import build_pipeline
    from fresnet.service.app import create_app

    api_key = api_key_from(settings.api_key_env)
    check_exposure(settings.host, api_key)
    if not settings.galleries:
        raise FresnetError("give at least one --gallery G.db (created when absent)")
    pipeline = build_pipeline(settings.model, settings.detector, device=settings.device)
    galleries = open_galleries(settings.galleries, pipeline.contract)
    app = create_app(pipeline, galleries, api_key=api_key, max_batch=settings.max_batch,
                     max_wait_ms=settings.max_wait_ms, detect_workers=settings.detect_workers)
    print(f"fresnet serve: http://{settings.host}:{settings.port}/ (API docs at /docs), galleries "
          f"{', '.join(sorted(galleries))}, API key {'required' if api_key else 'off (loopback only)'}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", proxy_headers=False,
                server_header=False, timeout_keep_alive=5)
