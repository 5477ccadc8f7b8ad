"""Shared test helpers: where ``../shared/reference`` is, and a skip when it is absent."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"

# keep the 2-core CI machine responsive and results reproducible
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def reference_path(*parts: str) -> Path:
    """Path inside ../shared/reference, or skip the test when the folder is absent."""
    path = REFERENCE_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not available: {path}")
    return path


def load_reference_rows() -> list[dict]:
    path = REFERENCE_DIR / "reference.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["rows"]


@pytest.fixture
def reference_dir() -> Path:
    return reference_path()


# ---- MXNet fixture archives (../shared/reference/fixtures/fx*.tar.xz), extracted once per session ----
@pytest.fixture(scope="session")
def mxnet_fixture(tmp_path_factory):
    """``mxnet_fixture('fx02_r18_unit1_se1_relu_FC')`` -> the extracted folder (skips when absent)."""
    import tarfile

    extracted: dict[str, Path] = {}

    def get(fixture_id: str) -> Path:
        if fixture_id not in extracted:
            archive = reference_path("fixtures", f"{fixture_id}.tar.xz")
            target = tmp_path_factory.mktemp("mxnet_fixtures")
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(target, filter="data")
            folder = target / fixture_id
            extracted[fixture_id] = folder if folder.is_dir() else target
        return extracted[fixture_id]

    return get
