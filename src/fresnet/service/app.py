"""The FastAPI application: the ``/v1`` API, the web page at ``/``, OpenAPI docs at ``/docs``.

:func:`create_app` takes its collaborators -- the face pipeline (anything with ``locate`` and a
batched ``embed``, see :class:`fresnet.gallery.photos.FacePipeline`) and the open galleries -- so
tests inject fakes and :mod:`fresnet.service.server` the real ones.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fresnet.errors import FresnetError
from fresnet.gallery.names import gallery_name, identity_name
from fresnet.gallery.photos import FacePipeline, LocatedFace, decode_photo, largest
from fresnet.service import errors
from fresnet.service.batching import EmbedBatcher
from fresnet.service.errors import ApiError
from fresnet.service.security import Guard

MAX_PHOTOS = 16
MAX_LIMIT = 100
MAX_QUERY_EMBEDDINGS = 1000


def _multipart(description: str, fields: dict[str, Any], required: list[str]) -> dict:
    return {"requestBody": {"required": True, "description": description, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": fields, "required": required}}}}}


_PHOTO = {"type": "string", "format": "binary", "description": "a JPEG/PNG/WebP photo"}
_SEARCH_BODY = _multipart("a photo (every face in it is searched), or JSON embeddings",
                          {"photo": _PHOTO, "limit": {"type": "integer", "default": 5},
                           "threshold": {"type": "number"}}, ["photo"])
_SEARCH_BODY["requestBody"]["content"]["application/json"] = {"schema": {"type": "object", "properties": {
    "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    "limit": {"type": "integer", "default": 5}, "threshold": {"type": "number"}}, "required": ["embeddings"]}}
_COMPARE_BODY = _multipart("two photos (the largest face of each), or JSON {a, b} embeddings",
                           {"photo_a": _PHOTO, "photo_b": _PHOTO}, ["photo_a", "photo_b"])
_COMPARE_BODY["requestBody"]["content"]["application/json"] = {"schema": {"type": "object", "properties": {
    "a": {"type": "array", "items": {"type": "number"}}, "b": {"type": "array", "items": {"type": "number"}}},
    "required": ["a", "b"]}}


def face_json(face: LocatedFace, embedding: np.ndarray | None = None) -> dict:
    out = {"box": [round(float(v), 2) for v in face.box],
           "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
           "score": round(float(face.score), 5)}
    if embedding is not None:
        out["embedding"] = [float(v) for v in embedding]
    return out


class Service:
    """What the routes share: the pipeline, the batcher, the galleries, the detection threads."""

    def __init__(self, pipeline: FacePipeline, galleries: Mapping[str, Any], max_batch: int, max_wait_s: float,
                 detect_workers: int):
        self.pipeline = pipeline
        self.galleries = dict(galleries)
        self.batcher = EmbedBatcher(pipeline.embed, max_batch=max_batch, max_wait_s=max_wait_s)
        self.detection = concurrent.futures.ThreadPoolExecutor(detect_workers, thread_name_prefix="fresnet-detect")

    def gallery(self, name: str):
        try:
            name = gallery_name(name)
        except FresnetError as exc:
            raise ApiError(404, "gallery_not_found", str(exc)) from None
        if name not in self.galleries:
            raise ApiError(404, "gallery_not_found", f"no gallery named {name!r}; this service has "
                           f"{', '.join(sorted(self.galleries)) or 'none'}")
        return self.galleries[name]

    async def faces(self, data: bytes, where: str) -> tuple[list[LocatedFace], np.ndarray]:
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.detection, decode_photo, data, where)
        faces = await loop.run_in_executor(self.detection, self.pipeline.locate, image)
        if not faces:
            return [], np.zeros((0, self.pipeline.contract.embedding_size), np.float32)
        return faces, await self.batcher.embed(np.stack([face.crop for face in faces]))


async def _form(request: Request):
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", f"send multipart/form-data here, not {kind or 'no body'}")
    try:
        return await request.form(max_files=MAX_PHOTOS, max_fields=16)
    except Exception as exc:  # starlette's MultiPartException, a malformed body
        if type(exc).__name__ == "_BodyTooLarge":
            raise
        raise ApiError(400, "bad_request", f"malformed multipart body: {str(exc)[:200]}") from None


async def _photo_bytes(form, field: str) -> tuple[bytes, str]:
    item = form.get(field)
    if not isinstance(item, UploadFile):
        raise ApiError(422, "invalid_request", f"form field {field!r}: attach a photo file")
    return await item.read(), f"{field} {item.filename or ''}".strip()


async def _json(request: Request) -> Any:
    from fresnet.validate import load_json

    body = await request.body()
    try:
        return load_json(body.decode("utf-8"), "request body")
    except (UnicodeDecodeError, FresnetError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {str(exc)[:200]}") from None


def _limit_and_threshold(limit: Any, threshold: Any, gallery) -> tuple[int, float | None]:
    from fresnet.validate import as_float, as_int

    try:
        limit = as_int(5 if limit in (None, "") else limit, "limit", "search", minimum=1, maximum=MAX_LIMIT)
        if threshold in (None, ""):
            return limit, gallery.threshold
        return limit, as_float(threshold, "threshold", "search", minimum=-1.0, maximum=1.0)
    except FresnetError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def create_app(pipeline: FacePipeline, galleries: Mapping[str, Any], *, api_key: str | None = None,
               max_batch: int = 32, max_wait_ms: float = 5.0, detect_workers: int = 2) -> FastAPI:
    from fresnet.limits import current

    service = Service(pipeline, galleries, max_batch, max_wait_ms / 1000.0, detect_workers)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()
        service.detection.shutdown(wait=False)

    app = FastAPI(title="fresnet face service", version="1", lifespan=lifespan,
                  description="Detect, embed, compare, enrol and search faces (docs/service.md). Errors come as "
                  '{"error": {"code", "message"}}.')
    app.state.service = service
    errors.install(app)
    app.add_middleware(Guard, api_key=api_key, max_body=current().max_upload_bytes)
    static = resources.files("fresnet.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/v1/health", tags=["service"])
    async def health():
        contract = pipeline.contract
        return {"status": "ok", "galleries": sorted(service.galleries), "api_key_required": api_key is not None,
                "model": json.loads(contract.to_json()), "batching": service.batcher.stats.to_dict()}

    @app.post("/v1/detect", tags=["faces"], openapi_extra=_multipart("a photo", {"photo": _PHOTO}, ["photo"]))
    async def detect(request: Request):
        data, where = await _photo_bytes(await _form(request), "photo")
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(service.detection, decode_photo, data, where)
        faces = await loop.run_in_executor(service.detection, pipeline.locate, image)
        return {"faces": [face_json(face) for face in faces], "width": int(image.shape[1]),
                "height": int(image.shape[0])}

    @app.post("/v1/embeddings", tags=["faces"], openapi_extra=_multipart("a photo", {"photo": _PHOTO}, ["photo"]))
    async def embeddings(request: Request):
        data, where = await _photo_bytes(await _form(request), "photo")
        faces, vectors = await service.faces(data, where)
        return {"faces": [face_json(face, vector) for face, vector in zip(faces, vectors)]}

    @app.post("/v1/compare", tags=["faces"], openapi_extra=_COMPARE_BODY)
    async def compare(request: Request):
        from fresnet.gallery.gallery import Gallery

        if request.headers.get("content-type", "").startswith("application/json"):
            body = await _json(request)
            if not isinstance(body, dict) or "a" not in body or "b" not in body:
                raise ApiError(422, "invalid_request", 'send {"a": [...], "b": [...]}: two embeddings')
            if np.ndim(body["a"]) != 1 or np.ndim(body["b"]) != 1:
                raise ApiError(422, "invalid_request", '"a" and "b" must each be one embedding (a list of numbers)')
            return {"score": float(Gallery.compare(body["a"], body["b"]))}
        form = await _form(request)
        vectors = []
        for field in ("photo_a", "photo_b"):
            data, where = await _photo_bytes(form, field)
            faces, rows = await service.faces(data, where)
            face = largest(faces)
            if face is None:
                raise ApiError(422, "face_not_found", f"{where}: no face found")
            vectors.append(rows[faces.index(face)])
        return {"score": float(np.dot(vectors[0], vectors[1]))}

    @app.post("/v1/galleries/{gallery}/identities", tags=["galleries"], status_code=201,
              openapi_extra=_multipart("a name and photos; the largest face of each photo is enrolled",
                                       {"name": {"type": "string"}, "photos": {"type": "array", "items": _PHOTO}},
                                       ["name", "photos"]))
    async def enrol(gallery: str, request: Request):
        store = service.gallery(gallery)
        form = await _form(request)
        name = form.get("name")
        if not isinstance(name, str):
            raise ApiError(422, "invalid_request", "form field 'name': the identity's name")
        try:
            name = identity_name(name)
        except FresnetError as exc:
            raise ApiError(422, "invalid_name", str(exc)) from None
        photos = [item for item in form.getlist("photos") if isinstance(item, UploadFile)]
        if not photos:
            raise ApiError(422, "invalid_request", "form field 'photos': attach one or more photos")
        embeddings, sources = [], []
        for index, item in enumerate(photos):
            where = f"photos[{index}] {item.filename or ''}".strip()
            faces, rows = await service.faces(await item.read(), where)
            face = largest(faces)
            if face is None:
                raise ApiError(422, "face_not_found", f"{where}: no face found; nothing was enrolled")
            embeddings.append(rows[faces.index(face)])
            sources.append({"photo": (item.filename or "")[:200], "box": face_json(face)["box"]})
        samples = await run_in_threadpool(store.add, name, np.stack(embeddings), None, sources, pipeline.contract)
        return {"name": name, "samples": samples, "faces": [s["box"] for s in sources]}

    @app.get("/v1/galleries/{gallery}/identities", tags=["galleries"])
    async def identities(gallery: str):
        store = service.gallery(gallery)
        rows = await run_in_threadpool(store.identities)
        return {"identities": [{"name": i.name, "samples": i.sample_count, "metadata": i.metadata} for i in rows]}

    @app.get("/v1/galleries/{gallery}/identities/{name}", tags=["galleries"])
    async def identity(gallery: str, name: str):
        store = service.gallery(gallery)
        found = await run_in_threadpool(store.identity, name)
        return {"name": found.name, "samples": list(found.samples), "metadata": found.metadata}

    @app.delete("/v1/galleries/{gallery}/identities/{name}", tags=["galleries"])
    async def remove(gallery: str, name: str):
        store = service.gallery(gallery)
        await run_in_threadpool(store.remove, name)
        return {"removed": name}

    @app.post("/v1/galleries/{gallery}/search", tags=["galleries"], openapi_extra=_SEARCH_BODY)
    async def search(gallery: str, request: Request):
        store = service.gallery(gallery)
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await _json(request)
            if not isinstance(body, dict) or not isinstance(body.get("embeddings"), list):
                raise ApiError(422, "invalid_request", 'send {"embeddings": [[...], ...], "limit": 5}')
            if len(body["embeddings"]) > MAX_QUERY_EMBEDDINGS:
                raise ApiError(413, "too_large", f"at most {MAX_QUERY_EMBEDDINGS} embeddings per request")
            limit, threshold = _limit_and_threshold(body.get("limit"), body.get("threshold"), store)
            found = await run_in_threadpool(store.search, body["embeddings"], limit, threshold)
            return {"threshold": threshold, "faces": [
                {"box": None, "matches": [{"name": m.name, "score": m.score} for m in row]} for row in found]}
        form = await _form(request)
        limit, threshold = _limit_and_threshold(form.get("limit"), form.get("threshold"), store)
        data, where = await _photo_bytes(form, "photo")
        faces, vectors = await service.faces(data, where)
        found = await run_in_threadpool(store.search, vectors, limit, threshold, pipeline.contract) if faces else []
        return {"threshold": threshold, "faces": [
            {**face_json(face), "matches": [{"name": m.name, "score": m.score} for m in row]}
            for face, row in zip(faces, found)]}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def unknown(rest: str):
        return JSONResponse({"error": {"code": "not_found", "message": f"no endpoint /v1/{rest[:100]}"}}, 404)

    return app
