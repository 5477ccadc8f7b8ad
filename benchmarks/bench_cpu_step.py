"""How torch's OpenMP threads should wait, and whether malloc should keep freed memory, for a CPU
training step: the synthetic-r18 step (the demo's) under each setting, each in its own process
(libgomp reads its variables once, at load), in interleaved rounds.

    python benchmarks/bench_cpu_step.py                 # quiet machine
    python benchmarks/bench_cpu_step.py --busy 4        # beside 4 busy-looping processes
    python benchmarks/bench_cpu_step.py --settings passive,spin10000 --rounds 3

Prints, per setting, the median wall and CPU milliseconds per step, system time, page faults per
step, and the wall-time ratio to the CLI's own setting (``spin10000`` with malloc kept). The CLI's
choice (fresnet.cli.process_settings) comes from these numbers (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# name -> (environment, keep freed memory, threads)
SETTINGS = {
    "one-thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, True, 1),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, True, 2),
    "spin2000": ({"GOMP_SPINCOUNT": "2000"}, True, 2),
    "spin10000": ({"GOMP_SPINCOUNT": "10000"}, True, 2),
    "spin10000-default-malloc": ({"GOMP_SPINCOUNT": "10000"}, False, 2),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, True, 2),
}
CLI_SETTING = "spin10000"

STEP = r"""
import json, resource, sys, time
from fresnet.cli.process_settings import keep_freed_memory
if sys.argv[1] == "1":
    keep_freed_memory()
import torch
torch.set_num_threads(int(sys.argv[2]))
from fresnet.network.model import FResNet
from fresnet.train.config import load_config
from fresnet.train.optim import build_optimizer
from fresnet.train.partial_fc import PartialFC
from fresnet.train.step import StepSettings, TrainStep
cfg = load_config("synthetic-r18", {})
net = cfg.net_config()
device = torch.device("cpu")
settings = StepSettings(cfg.amp, cfg.uses_channels_last("cpu"), None, float(cfg.clip_grad_norm))
torch.manual_seed(0)
model = FResNet(net).train().to(memory_format=torch.channels_last)
fc = PartialFC(net.emb_size, 300, cfg.margin(), 1.0)
step = TrainStep(model, model, fc, build_optimizer(cfg, model, fc, device), None, settings, device)
images = torch.randint(0, 256, (cfg.batch_size, 3, *net.input_size), dtype=torch.uint8)
labels = torch.randint(0, 300, (cfg.batch_size,))
for _ in range(3):
    float(step(images, labels, 1e-3))
steps = int(sys.argv[3])
before, wall, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
for _ in range(steps):
    float(step(images, labels, 1e-3))
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_ms": (time.perf_counter() - wall) / steps * 1e3,
                  "cpu_ms": (time.process_time() - cpu) / steps * 1e3,
                  "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1e3,
                  "faults": (after.ru_minflt - before.ru_minflt) / steps}))
"""


def run_setting(name: str, steps: int) -> dict:
    env_extra, keep, threads = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
           and not k.startswith("MALLOC_")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", STEP, "1" if keep else "0", str(threads), str(steps)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="timed steps per process (after 3 warm-up steps)")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes to run beside (a shared machine)")
    args = parser.parse_args()
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results: dict[str, list[dict]] = {n: [] for n in names}
    try:
        print(f"load average at the start: {os.getloadavg()[0]:.2f}; {args.busy} busy processes beside")
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]  # rotate: drifts hit all alike
            for name in order:
                results[name].append(run_setting(name, args.steps))
    finally:
        for process in busy:
            process.kill()
    median = {n: {k: statistics.median(r[k] for r in results[n]) for k in results[n][0]} for n in names}
    reference = median.get(CLI_SETTING)
    print(f"{'setting':28s} {'wall ms':>8s} {'CPU ms':>8s} {'sys ms':>7s} {'faults':>7s}  wall / CLI's")
    for name in names:
        m = median[name]
        ratio = f"{m['wall_ms'] / reference['wall_ms']:.2f}x" if reference else "--"
        print(f"{name:28s} {m['wall_ms']:8.1f} {m['cpu_ms']:8.1f} {m['sys_ms']:7.1f} {m['faults']:7.0f}  {ratio}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
