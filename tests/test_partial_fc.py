"""Partial FC: equals the full FC with one rank and r=1; sampling keeps positives; 2 ranks are exact."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fresnet.train.losses import FullFCLoss, margin_spec
from fresnet.train.partial_fc import PartialFC, distributed_cross_entropy, shard_range


@pytest.mark.parametrize("loss", ["softmax", "nsoftmax", "arcface", "cosface", "combined"])
def test_one_rank_full_rate_equals_full_fc(loss):
    torch.manual_seed(0)
    spec = margin_spec(loss)
    weight = torch.randn(11, 8) * 0.1
    pfc = PartialFC(8, 11, spec, sample_rate=1.0, rank=0, world_size=1, init_weight=weight)
    full = FullFCLoss(8, 11, spec, weight=weight)
    x = torch.randn(6, 8) * 3
    labels = torch.tensor([0, 4, 10, 4, 7, 2])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = pfc(x1, labels), full(x2, labels)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-5)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6, rtol=1e-4)
    assert torch.allclose(pfc.weight.grad, full.weight.grad, atol=1e-6, rtol=1e-4)


def test_shard_ranges_cover_all_classes():
    for n, w in [(10, 3), (7, 7), (100, 8)]:
        ranges = [shard_range(n, r, w) for r in range(w)]
        assert ranges[0][0] == 0
        assert all(s + c == ranges[i + 1][0] for i, (s, c) in enumerate(ranges[:-1]))
        assert sum(c for _, c in ranges) == n


def test_sampling_keeps_every_positive_and_the_rate():
    torch.manual_seed(0)
    pfc = PartialFC(4, 100, margin_spec("arcface"), sample_rate=0.2, rank=0, world_size=1)
    labels = torch.tensor([3, 97, 50, 3])
    index, remapped = pfc._sample(labels)
    assert len(index) == 20
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[remapped], labels)  # remapped labels point at the same classes
    loss = pfc(torch.randn(4, 4), labels)
    loss.backward()
    touched = (pfc.weight.grad.abs().sum(1) > 0).nonzero().flatten()
    assert len(touched) <= 20 and set(labels.tolist()) <= set(touched.tolist())


def test_distributed_cross_entropy_single_rank_is_cross_entropy():
    logits = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 0, 8, 3, 3])
    assert torch.allclose(distributed_cross_entropy(logits, labels), torch.nn.functional.cross_entropy(logits, labels))
    assert torch.autograd.gradcheck(lambda z: distributed_cross_entropy(z, labels), (logits,))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank, port, weight, x, labels, loss_name, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        pfc = PartialFC(x.shape[1], weight.shape[0], margin_spec(loss_name), init_weight=weight)
        half = x.shape[0] // 2
        mine = x[rank * half:(rank + 1) * half].clone().requires_grad_()
        loss = pfc(mine, labels[rank * half:(rank + 1) * half])
        loss.backward()
        out[rank] = (loss.detach(), mine.grad / 2, pfc.full_weight(), D_gather(pfc))  # /2: DDP's average
    finally:
        dist.destroy_process_group()


def D_gather(pfc):
    from fresnet.train.distributed import gather_rows

    return gather_rows(pfc.weight.grad, pfc.counts)


@pytest.mark.parametrize("loss_name", ["arcface", "softmax"])
def test_two_ranks_equal_one_rank(loss_name):
    torch.manual_seed(1)
    weight = torch.randn(9, 6) * 0.1  # 9 classes: shards of 5 and 4
    x = torch.randn(8, 6) * 2
    labels = torch.tensor([0, 8, 4, 5, 1, 8, 3, 6])
    out = mp.Manager().dict()
    mp.spawn(_two_rank_worker, args=(_free_port(), weight, x, labels, loss_name, out), nprocs=2, join=True)
    spec = margin_spec(loss_name)
    full = FullFCLoss(6, 9, spec, weight=weight)
    xr = x.clone().requires_grad_()
    ref = full(xr, labels)
    ref.backward()
    for rank in (0, 1):
        loss, grad_x, w, grad_w = out[rank]
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(grad_x, xr.grad[rank * 4:(rank + 1) * 4], atol=1e-6, rtol=1e-4)
        assert torch.equal(w, weight)
        assert torch.allclose(grad_w, full.weight.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("num_classes,world_size,rate", [(99, 1, 0.1), (101, 2, 0.3), (1000, 3, 0.07), (7, 1, 0.1)])
def test_sampled_class_count_is_arcface_torchs_floor(num_classes, world_size, rate):
    """arcface_torch's PartialFC_V2 keeps ``int(sample_rate * num_local)`` classes (floor): so does
    fresnet, so a sampled run keeps the same number of centres per step (at least one)."""
    for rank in range(world_size):
        pfc = PartialFC(4, num_classes, margin_spec("arcface"), sample_rate=rate, rank=rank, world_size=world_size)
        assert pfc.num_sample == max(1, int(rate * pfc.num_local))
        labels = torch.full((2,), -1, dtype=torch.long)  # no positives on this rank: only the sampled count
        index, _ = pfc._sample(labels)
        assert len(index) == pfc.num_sample
    # 99 classes at 0.1: 9.9 -> 9 (ceil would keep 10)
    assert PartialFC(4, 99, margin_spec("arcface"), sample_rate=0.1, rank=0, world_size=1).num_sample == 9
