"""One error envelope for every failure: ``{"error": {"code": "...", "message": "..."}}``."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fresnet.errors import FresnetError
from fresnet.gallery.errors import ContractMismatch, GalleryCorrupt, IdentityNotFound
from fresnet.gallery.photos import ImageRefused


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def envelope(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "not_an_image", 422: "invalid_request"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return envelope(exc.status, exc.code, exc.message)

    @app.exception_handler(ImageRefused)
    async def image_refused(_: Request, exc: ImageRefused):
        return envelope(413, "too_large", str(exc)) if exc.kind == "too_large" else \
            envelope(415, "not_an_image", str(exc))

    @app.exception_handler(IdentityNotFound)
    async def identity_not_found(_: Request, exc: IdentityNotFound):
        return envelope(404, "identity_not_found", str(exc))

    @app.exception_handler(ContractMismatch)
    async def contract_mismatch(_: Request, exc: ContractMismatch):
        return envelope(409, "model_mismatch", str(exc))

    @app.exception_handler(GalleryCorrupt)
    async def corrupt(_: Request, exc: GalleryCorrupt):
        return envelope(500, "gallery_corrupt", str(exc))

    @app.exception_handler(FresnetError)
    async def bad_input(_: Request, exc: FresnetError):
        return envelope(400, "bad_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return envelope(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return envelope(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), str(exc.detail),
                        getattr(exc, "headers", None))
