"""The README's Python blocks run as written (issue 24 item 13), and a wrong input size is a clear
error naming the size the network takes.

A block preceded by an HTML comment ``<!-- not run: REASON -->`` is skipped (it needs data that a
reader has and the test does not, e.g. a folder of face images); every other ```python block is
executed, in order, in one namespace, from a temporary working directory.
"""
from __future__ import annotations

import re

import pytest
import torch

from conftest import REPO_ROOT

FENCE = re.compile(r"(?P<marker><!--\s*not run:[^>]*-->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def python_blocks(text: str) -> list[str]:
    return [m.group("code") for m in FENCE.finditer(text) if not m.group("marker")]


def test_the_readmes_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, code in enumerate(blocks, 1):
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)


def test_the_skip_marker_is_honoured():
    text = "```python\nx = 1\n```\n<!-- not run: needs faces/ -->\n```python\nraise SystemExit\n```\n"
    assert python_blocks(text) == ["x = 1\n"]


def test_a_wrong_input_size_names_the_size_the_network_takes():
    import fresnet
    from fresnet.errors import FresnetError

    model = fresnet.create_model("r18", units=[1, 1, 1, 1], filter_list=[8, 8, 8, 8, 8], emb_size=16,
                                 input_size=(112, 96)).eval()
    with pytest.raises(FresnetError, match=r"takes 112x96 images.*got 112x112"):
        model(torch.zeros(2, 3, 112, 112))
    assert model(torch.zeros(2, 3, 112, 96)).shape == (2, 16)
