"""Kill the service (SIGKILL) while four clients enrol people; restart it: every enrolment it
acknowledged is there, and the gallery file passes SQLite's integrity check."""
from __future__ import annotations

import signal
import threading

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fresnet.gallery.gallery import Gallery
from service_fakes import photo
from service_process import fake_server, free_port


def test_sigkill_during_enrolments_keeps_every_acknowledged_one(tmp_path):
    path = tmp_path / "staff.db"
    port = free_port()
    server = fake_server(path, port)
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for index in range(1000):
                name = f"client{number}-{index}"
                colour = (number * 50 % 250, index % 250, (index * 7) % 250)
                try:
                    answer = http.post("/v1/galleries/staff/identities", data={"name": name},
                                       files=[("photos", ("p.png", photo((colour, (0, 0, 30, 30))), "image/png"))])
                except httpx.HTTPError:
                    return  # the service is gone
                if answer.status_code != 201:
                    return
                with lock:
                    acknowledged.append(name)
                    if len(acknowledged) >= 60:
                        enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    assert enough.wait(120), "the clients could not enrol 60 people"
    server.send_signal(signal.SIGKILL)
    server.wait()
    for thread in threads:
        thread.join(30)
    server = fake_server(path, port)  # restarted on the same file
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            listed = {i["name"]: i["samples"] for i in http.get("/v1/galleries/staff/identities").json()["identities"]}
    finally:
        server.kill()
        server.wait()
    assert set(acknowledged) <= set(listed)
    assert len(listed) <= len(acknowledged) + 4  # at most the enrolment in flight of each client
    assert all(count == 1 for count in listed.values())
    with Gallery(path) as gallery:
        assert gallery.integrity_check() == "ok"
