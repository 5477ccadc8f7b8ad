"""Run the service with the fake pipeline on a loopback port (a subprocess of the tests).

    python service_fake_server.py GALLERY.db PORT
"""
from __future__ import annotations

import sys

import uvicorn

from fresnet.gallery.gallery import Gallery
from fresnet.service.app import create_app
from service_fakes import FakePipeline


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    pipeline = FakePipeline()
    gallery = Gallery(path, pipeline.contract)
    app = create_app(pipeline, {gallery.name: gallery}, max_wait_ms=2)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
