"""The command line's process settings: sleeping OpenMP threads and an allocator that keeps freed memory."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from fresnet.cli import process_settings

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"  # found independently of the code under test

# a training-like loop: ~4 MB activations allocated and freed every step; prints page faults per step
# (the fewest of six 5-step windows, so that a machine under load does not add its own)
FAULTS_PER_STEP = textwrap.dedent("""
    import json, resource, sys
    from fresnet.cli.process_settings import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    import torch
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.PReLU(16),
                              torch.nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(32, 16, 32, 32)
    def step():
        net(x).square().mean().backward()
    for _ in range(3):
        step()
    windows = []  # the quietest of several windows: faults that a busy machine adds (reclaim,
    for _ in range(6):  # compaction) come and go, the allocator's come with every step
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            step()
        windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    print(json.dumps({"applied": applied, "faults": min(windows), "windows": windows}))
""")


def _faults_per_step(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != process_settings.OPT_OUT}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], env=environment, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; other C libraries keep their own defaults")
def test_keeping_freed_memory_stops_the_page_faults_of_every_step():
    default = _faults_per_step("default")
    kept = _faults_per_step("keep")
    assert kept["applied"] is True
    assert default["faults"] > 100, default  # glibc maps and trims the activations' memory every step
    assert kept["faults"] < default["faults"] / 10, (default, kept)


@pytest.mark.parametrize("env", [{"FRESNET_DEFAULT_MALLOC": "1"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                 {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
def test_the_users_allocator_settings_win(monkeypatch, env):
    for name in ("FRESNET_DEFAULT_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD", *process_settings.MALLOC_ENVIRONMENT):
        monkeypatch.delenv(name, raising=False)
    assert not process_settings.user_chose_malloc_settings()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert process_settings.user_chose_malloc_settings()
    assert process_settings.keep_freed_memory() is False


def test_fresnet_default_malloc_0_does_not_opt_out(monkeypatch):
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", *process_settings.MALLOC_ENVIRONMENT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRESNET_DEFAULT_MALLOC", "0")
    assert not process_settings.user_chose_malloc_settings()


def test_glibc_is_recognised_like_platform_does():
    assert process_settings.running_on_glibc() == GLIBC


def test_no_settings_outside_glibc(monkeypatch):
    monkeypatch.setattr(process_settings.os, "confstr", lambda name: None)  # musl has no CS_GNU_LIBC_VERSION
    monkeypatch.delenv("FRESNET_DEFAULT_MALLOC", raising=False)
    assert process_settings.keep_freed_memory() is False


SPIN_CODE = ("import os; from fresnet.cli import main; main(['list']); "
             "print(os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('OMP_WAIT_POLICY', '-'))")


@pytest.mark.parametrize("user, expected", [
    ({}, "10000 -"),  # ours: spin briefly, then sleep
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "- PASSIVE"),  # the user's policy wins, and no spin count is added to it
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "- ACTIVE"),
    ({"GOMP_SPINCOUNT": "1"}, "1 -"),
])
def test_the_command_line_spins_briefly_unless_the_user_chose(user, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = subprocess.run([sys.executable, "-c", SPIN_CODE], env={**env, **user}, capture_output=True, text=True,
                         check=True)
    assert run.stdout.splitlines()[-1] == expected


def test_no_spin_setting_once_torch_is_loaded(monkeypatch):
    """libgomp reads its variables when torch loads; setting them later would only mislead a report."""
    import torch  # noqa: F401

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    process_settings.wait_briefly_then_sleep()
    assert "GOMP_SPINCOUNT" not in os.environ
