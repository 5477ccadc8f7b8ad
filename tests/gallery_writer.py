"""A writer process for the gallery's durability and concurrency tests (run as a script).

    python gallery_writer.py GALLERY PREFIX COUNT [SEED]

Adds identities ``PREFIX-0 .. PREFIX-{COUNT-1}`` (two random 32-d samples each), one transaction
each, and prints each name on its own line after its ``add`` returned (that is the acknowledgement).
"""
from __future__ import annotations

import sys

import numpy as np

from fresnet.gallery.gallery import Gallery


def main() -> None:
    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    rng = np.random.default_rng(seed)
    gallery = Gallery(path, embedding_size=32)
    print("ready", flush=True)
    for index in range(count):
        gallery.add(f"{prefix}-{index}", rng.standard_normal((2, 32)).astype(np.float32), metadata={"i": index})
        print(f"{prefix}-{index}", flush=True)


if __name__ == "__main__":
    main()
