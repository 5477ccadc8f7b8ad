"""A short version of the quality bar: a tiny network trained for a few dozen steps on synthetic
identities verifies *unseen images* clearly better than the same network untrained. (The CI
machine has no time for held-out identities to separate; the full bar, >= 95% on held-out
identities within 5 minutes on 2 cores, is benchmarks/bench_train_quality.py.)"""
import torch

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [16, 16, 32, 64, 128], "input_size": [32, 32], "emb_size": 64,
            "net_output": "E"}


def test_short_training_beats_the_untrained_network(tmp_path):
    from fresnet.data.synthetic import synthetic_pairs
    from fresnet.train.config import load_config
    from fresnet.train.loop import Trainer

    torch.set_num_threads(2)
    cfg = load_config("synthetic-r18", {
        "net": TINY_NET, "loss": "cosface", "loss_s": 32.0,
        "synthetic": {"num_identities": 40, "images_per_identity": 8, "holdout_identities": 2, "seed": 1},
        "val_targets": [], "max_steps": 60, "batch_size": 32, "lr": 0.1, "lr_schedule": "step",
        "warmup_steps": 5, "checkpoint_every": 0, "output": str(tmp_path), "progress": False,
    })
    trainer = Trainer(cfg)
    # pairs of the training identities, from images the run never sees (numbers >= 1,000,000)
    trainer.verification.sets = {"unseen": synthetic_pairs(200, 40, identity_offset=0, seed=1, size=32)}
    before = trainer.verify()["unseen"]
    result = trainer.fit()
    after = trainer.verify()["unseen"]
    print(f"verification accuracy on unseen images: untrained {before:.3f}, after {cfg.max_steps} steps {after:.3f}")
    losses = [float(row["loss"]) for row in result.history]
    assert sum(losses[-5:]) < sum(losses[:5])  # the loss goes down
    assert after >= before + 0.1 and after >= 0.6, (before, after)  # measured: 0.495 -> 0.665
