"""The HTTP service with a fake pipeline: the /v1 API, its error envelope, the API key, the body
and pixel caps, dynamic batching, OpenAPI and the page."""
from __future__ import annotations

import concurrent.futures
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install 'fresnet[serve]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient

from fresnet.errors import FresnetError
from fresnet.gallery.gallery import Gallery
from fresnet.limits import override
from fresnet.service.app import create_app
from fresnet.service.security import check_exposure, is_loopback
from service_fakes import BLUE, GREEN, RED, FakePipeline, photo

KEY = "k" * 24


def make_client(tmp_path, pipeline=None, **options):
    pipeline = pipeline or FakePipeline()
    galleries = {"staff": Gallery(tmp_path / "staff.db", pipeline.contract)}
    return TestClient(create_app(pipeline, galleries, **options)), galleries["staff"]


def files(**named):
    return [(field, (f"{field}.png", data, "image/png")) for field, data in named.items()]


def error_of(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def test_detect_embed_compare(tmp_path):
    client, _ = make_client(tmp_path)
    with client:
        health = client.get("/v1/health").json()
        assert health["status"] == "ok" and health["galleries"] == ["staff"] and health["model"]["embedding_size"] == 16
        two = photo((RED, (10, 10, 50, 60)), (BLUE, (90, 20, 150, 100)))
        faces = client.post("/v1/detect", files=files(photo=two)).json()["faces"]
        assert [f["box"] for f in faces] == [[10, 10, 50, 60], [90, 20, 150, 100]]
        assert len(faces[0]["landmarks"]) == 5 and faces[0]["score"] == pytest.approx(0.99)
        assert client.post("/v1/detect", files=files(photo=photo())).json()["faces"] == []
        embedded = client.post("/v1/embeddings", files=files(photo=two)).json()["faces"]
        assert len(embedded) == 2 and np.linalg.norm(embedded[0]["embedding"]) == pytest.approx(1, abs=1e-5)
        same = client.post("/v1/compare", files=files(photo_a=photo((BLUE, (0, 0, 40, 40))), photo_b=two)).json()
        assert same["score"] == pytest.approx(1.0, abs=1e-5)  # the largest face of `two` is the blue one
        different = client.post("/v1/compare", files=files(photo_a=photo((RED, (0, 0, 40, 40))),
                                                           photo_b=photo((BLUE, (0, 0, 9, 9))))).json()
        assert different["score"] < 0.9
        a, b = embedded[0]["embedding"], embedded[1]["embedding"]
        assert client.post("/v1/compare", json={"a": a, "b": b}).json()["score"] == pytest.approx(float(np.dot(a, b)))


def test_enrol_list_get_search_delete(tmp_path):
    client, gallery = make_client(tmp_path)
    with client:
        answer = client.post("/v1/galleries/staff/identities", data={"name": "Ada Lovelace"},
                             files=[("photos", ("a.png", photo((RED, (10, 10, 70, 70))), "image/png")),
                                    ("photos", ("b.png", photo((RED, (0, 0, 20, 20)), (GREEN, (30, 30, 40, 40))),
                                                "image/png"))])
        assert answer.status_code == 201, answer.text
        assert len(answer.json()["samples"]) == 2
        client.post("/v1/galleries/staff/identities", data={"name": "Grace"},
                    files=[("photos", ("g.png", photo((BLUE, (5, 5, 60, 60))), "image/png"))])
        listed = client.get("/v1/galleries/staff/identities").json()["identities"]
        assert [(i["name"], i["samples"]) for i in listed] == [("Ada Lovelace", 2), ("Grace", 1)]
        assert client.get("/v1/galleries/staff/identities/Ada Lovelace").json()["samples"] == answer.json()["samples"]
        found = client.post("/v1/galleries/staff/search", data={"limit": "2"},
                            files=files(photo=photo((BLUE, (10, 10, 50, 50)), (RED, (60, 10, 100, 50))))).json()
        assert [f["matches"][0]["name"] for f in found["faces"]] == ["Grace", "Ada Lovelace"]
        assert found["faces"][0]["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert found["faces"][0]["box"] == [10, 10, 50, 50] and len(found["faces"][0]["matches"]) == 2
        scores = [m["score"] for m in found["faces"][0]["matches"]]
        assert scores == sorted(scores, reverse=True)
        strict = client.post("/v1/galleries/staff/search", data={"threshold": "0.999"},
                             files=files(photo=photo((BLUE, (10, 10, 50, 50))))).json()
        assert [m["name"] for m in strict["faces"][0]["matches"]] == ["Grace"]
        by_embedding = client.post("/v1/galleries/staff/search", json={
            "embeddings": [client.post("/v1/embeddings", files=files(photo=photo((RED, (0, 0, 9, 9))))).json()
                           ["faces"][0]["embedding"]], "limit": 1}).json()
        assert by_embedding["faces"][0]["box"] is None
        assert by_embedding["faces"][0]["matches"][0]["name"] == "Ada Lovelace"
        assert client.delete("/v1/galleries/staff/identities/Grace").json() == {"removed": "Grace"}
        assert "Grace" not in gallery


def test_errors_come_in_one_envelope(tmp_path):
    client, gallery = make_client(tmp_path)
    with client:
        enrol = "/v1/galleries/staff/identities"
        message = error_of(client.post(enrol, data={"name": "x"}, files=[("photos", ("w.png", photo(), "image/png"))]),
                           422, "face_not_found")
        assert "w.png" in message and "x" not in gallery
        error_of(client.post("/v1/detect", files=[("photo", ("t.txt", b"hello, not an image", "text/plain"))]),
                 415, "not_an_image")
        error_of(client.post("/v1/detect", content=b"{}", headers={"content-type": "application/json"}),
                 415, "unsupported_media_type")
        error_of(client.post("/v1/detect", data={"photo": "text"}), 415, "unsupported_media_type")
        error_of(client.post("/v1/detect", data={"photo": "text"}, files=[("other", ("o.txt", b"o", "text/plain"))]),
                 422, "invalid_request")
        error_of(client.post(enrol, data={"name": "../../etc/passwd"},
                             files=[("photos", ("a.png", photo((RED, (0, 0, 9, 9))), "image/png"))]),
                 422, "invalid_name")
        error_of(client.get("/v1/galleries/..%2Fother/identities"), 404, "not_found")
        error_of(client.get("/v1/galleries/..other/identities"), 404, "gallery_not_found")
        error_of(client.get("/v1/galleries/nope/identities"), 404, "gallery_not_found")
        error_of(client.get("/v1/galleries/staff/identities/Nobody"), 404, "identity_not_found")
        error_of(client.delete("/v1/galleries/staff/identities/Nobody"), 404, "identity_not_found")
        error_of(client.get("/v1/nothing-here"), 404, "not_found")
        error_of(client.post("/v1/galleries/staff/search", json={"embeddings": [[1.0] * 15]}), 400, "bad_request")
        error_of(client.post("/v1/galleries/staff/search", json={"embeddings": [[1.0] * 16], "limit": 0}),
                 422, "invalid_request")
        error_of(client.post("/v1/galleries/staff/search", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "bad_request")
        from PIL import Image

        huge = io.BytesIO()
        Image.new("1", (12000, 12000)).save(huge, "PNG")  # 144 megapixels in a few hundred KB
        assert len(huge.getvalue()) < 1 << 20
        error_of(client.post("/v1/detect", files=[("photo", ("big.png", huge.getvalue(), "image/png"))]),
                 413, "too_large")


def test_the_body_cap_answers_413_whatever_the_declared_length(tmp_path):
    with override(max_upload_bytes=20_000):
        client, _ = make_client(tmp_path)
    with client:
        big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
        from PIL import Image

        data = io.BytesIO()
        Image.fromarray(big).save(data, "PNG")
        error_of(client.post("/v1/detect", files=[("photo", ("n.png", data.getvalue(), "image/png"))]),
                 413, "too_large")

        def chunks():  # no Content-Length: the cap counts the bytes as they arrive
            for _ in range(30):
                yield b"x" * 1000

        error_of(client.post("/v1/galleries/staff/search", content=chunks(),
                             headers={"content-type": "application/json"}), 413, "too_large")


def test_an_api_key_guards_everything_but_health(tmp_path):
    client, _ = make_client(tmp_path, api_key=KEY)
    with client:
        assert client.get("/v1/health").json()["api_key_required"] is True
        error_of(client.get("/v1/galleries/staff/identities"), 401, "unauthorized")
        error_of(client.get("/v1/galleries/staff/identities", headers={"X-API-Key": KEY[:-1] + "x"}),
                 401, "unauthorized")
        assert client.get("/v1/galleries/staff/identities", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/galleries/staff/identities",
                          headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        error_of(client.post("/v1/detect", files=files(photo=photo())), 401, "unauthorized")
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(FresnetError, match="needs an API key"):
            check_exposure(host, None)
        check_exposure(host, KEY)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(host, None)
    with pytest.raises(FresnetError, match="at least 16"):
        check_exposure("0.0.0.0", "short")


def test_concurrent_requests_share_recogniser_calls(tmp_path):
    pipeline = FakePipeline(embed_seconds=0.05)
    client, _ = make_client(tmp_path, pipeline, max_wait_ms=20, max_batch=64)
    with client:
        body = photo((RED, (0, 0, 20, 20)), (BLUE, (40, 40, 60, 60)))
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/embeddings", files=files(photo=body)), range(24)))
        assert all(a.status_code == 200 and len(a.json()["faces"]) == 2 for a in answers)
        stats = client.get("/v1/health").json()["batching"]
    assert stats["requests"] == 24 and stats["crops"] == 48
    assert stats["recogniser_calls"] == len(pipeline.calls) < 24  # several requests per call
    assert stats["largest_batch"] > 2


def test_openapi_docs_and_the_page(tmp_path):
    client, _ = make_client(tmp_path)
    with client:
        schema = client.get("/openapi.json").json()
        for path in ("/v1/health", "/v1/detect", "/v1/embeddings", "/v1/compare", "/v1/galleries/{gallery}/identities",
                     "/v1/galleries/{gallery}/identities/{name}", "/v1/galleries/{gallery}/search"):
            assert path in schema["paths"], path
        assert "multipart/form-data" in schema["paths"]["/v1/galleries/{gallery}/search"]["post"]["requestBody"][
            "content"]
        assert client.get("/docs").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert "fetch(" in client.get("/static/app.js").text
