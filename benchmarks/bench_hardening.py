"""What the hardening checks cost on real-size inputs, as ratios measured in one run (interleaved).

* ``.bin``: reading every image's header for the pixel limits, against the whole ``load_bin``;
* ``save_mxnet``: parsing the symbol it is about to write and inferring the config back, against
  the whole save (r100);
* ``NetConfig``: building a config (field checks and the size computed from it), against building
  the network itself (r100).

Usage: python benchmarks/bench_hardening.py [--pairs 3000]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import fresnet
from common import interleaved_timing, print_table, set_threads
from fresnet.data import load_bin, save_bin
from fresnet.data.synthetic import synthetic_pairs
from fresnet.data.verification_bin import check_pack_pixels, read_bin
from fresnet.interop.mxnet import _check_reads_back, mxnet_arrays
from fresnet.interop.mxnet_symbol import to_json
from fresnet.interop.mxnet_symbol_build import build_graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3000, help="pairs of the .bin (default 3000, LFW's size)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images, issame = synthetic_pairs(args.pairs, 100, 0, size=112)
        pack = Path(tmp) / "pairs.bin"
        save_bin(pack, images, issame)
        encoded, _ = read_bin(pack)
        t = interleaved_timing({"header checks": lambda: check_pack_pixels(encoded, str(pack)),
                                "load_bin": lambda: load_bin(pack)}, rounds=3, warmup=1)
        rows.append([f".bin, {2 * args.pairs} images", t["header checks"].median, t["load_bin"].median,
                     t["header checks"].median / t["load_bin"].median])

        model = fresnet.create_model("r100").eval()
        arrays = mxnet_arrays(model)
        text = to_json(build_graph(model.config))
        prefix = Path(tmp) / "r100"
        t = interleaved_timing({"read-back check": lambda: _check_reads_back(text, arrays, model.config, str(prefix)),
                                "save_mxnet": lambda: fresnet.save_mxnet(model, prefix)}, rounds=3, warmup=1)
        rows.append(["save_mxnet r100", t["read-back check"].median, t["save_mxnet"].median,
                     t["read-back check"].median / t["save_mxnet"].median])

        t = interleaved_timing({"NetConfig": lambda: fresnet.NetConfig(num_layers=100),
                                "create_model": lambda: fresnet.create_model("r100")}, rounds=3, warmup=1)
        rows.append(["NetConfig r100", t["NetConfig"].median, t["create_model"].median,
                     t["NetConfig"].median / t["create_model"].median])
    print_table("cost of the checks (median seconds, interleaved)", ["what", "check", "whole operation", "ratio"],
                rows)


if __name__ == "__main__":
    main()
