"""Measured saved-tensor cost, the checkpointing planner, and gradient equality under a plan."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.memory import MB, feature_map_cost, plan, probe_loss, profile_units, random_batch
from fresnet.network.layers import MXBatchNorm
from fresnet.network.model import create_model

TINY = dict(units=[2, 2, 1, 1], input_size=32, emb_size=32)


def _step(model: nn.Module, x: torch.Tensor, seed: int = 7):
    """One training step from a fixed RNG state: returns the loss and the gradients by name."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = probe_loss(model(x))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _count_bn_calls(model: nn.Module) -> dict[str, int]:
    calls: dict[str, int] = {}

    def hook(name):
        def count(module, args, output):
            calls[name] = calls.get(name, 0) + 1
        return count

    for name, module in model.named_modules():
        if isinstance(module, MXBatchNorm):
            module.register_forward_hook(hook(name))
    return calls


def _assert_same_step(reference: nn.Module, planned: nn.Module, x: torch.Tensor) -> dict[str, int]:
    calls = _count_bn_calls(planned)
    loss_ref, grads_ref = _step(reference, x)
    loss_plan, grads_plan = _step(planned, x)
    torch.testing.assert_close(loss_plan, loss_ref, rtol=1e-6, atol=1e-6)
    assert grads_plan.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_plan[name], grads_ref[name], rtol=1e-5, atol=1e-6, msg=name)
    # BatchNorm moving statistics are updated once per step, not again by the recomputation
    for (name, buf_ref), (_, buf_plan) in zip(reference.named_buffers(), planned.named_buffers()):
        torch.testing.assert_close(buf_plan, buf_ref, rtol=0, atol=0, msg=name)
    return calls


@pytest.mark.parametrize(
    "options",
    [dict(net_unit=3), dict(net_unit=2, net_se=1, net_act="relu"), dict(net_unit=1, net_input=0)],
    ids=["v3-prelu", "v2-se-relu", "v1-input0"],
)
def test_gradients_and_bn_stats_equal_with_sqrt_plan(options):
    torch.manual_seed(0)
    reference = create_model(**TINY, **options)  # head E: dropout is active in training
    planned = copy.deepcopy(reference)
    memory_plan = plan(planned)
    assert any(len(segment) > 1 for segment in memory_plan.segments)
    planned.set_grad_checkpointing(memory_plan)
    calls = _assert_same_step(reference, planned, random_batch(4, (32, 32)))
    # the checkpointed units really ran twice (forward, then recomputation in backward); the head once
    assert calls["stem.bn0"] == 2 and calls["stage1.unit1.bn1"] == 2 and calls["stage4.unit1.bn1"] == 2
    assert calls["head.bn1"] == 1


def test_gradients_equal_with_per_unit_names_and_dropout_inside_a_segment():
    torch.manual_seed(0)
    reference = create_model(**TINY)
    # put a dropout *inside* a checkpointed unit: the recomputation must draw the same mask
    reference.stage2.unit1.relu1 = nn.Sequential(reference.stage2.unit1.relu1, nn.Dropout(0.5))
    planned = copy.deepcopy(reference)
    planned.set_grad_checkpointing(["stage1.unit2", "stage2.unit1", "stage3.unit1"])
    assert planned.grad_checkpoint_segments == (("stage1.unit2",), ("stage2.unit1",), ("stage3.unit1",))
    calls = _assert_same_step(reference, planned, random_batch(4, (32, 32)))
    assert calls["stage2.unit1.bn1"] == 2 and calls["stage1.unit1.bn1"] == 1


def test_set_grad_checkpointing_true_uses_the_planner_and_false_turns_it_off():
    model = create_model(**TINY)
    model.set_grad_checkpointing(True)
    assert model.grad_checkpoint_units == frozenset(plan(model).units)
    assert len(model.grad_checkpoint_segments) >= 2
    model.set_grad_checkpointing(False)
    assert model.grad_checkpoint_segments == () and model.grad_checkpoint_units == frozenset()


def test_bad_segments_are_refused():
    model = create_model(**TINY)

    class Plan:  # a look-alike of MemoryPlan is not one
        segments = (("stage1.unit1",),)

    with pytest.raises(FresnetError, match="must list consecutive units"):
        model.set_grad_checkpointing([("stage1.unit1", "stage2.unit1")])
    with pytest.raises(FresnetError, match="takes True/False, a MemoryPlan"):
        model.set_grad_checkpointing(Plan())
    with pytest.raises(FresnetError, match="unknown unit"):
        model.set_grad_checkpointing(["stage9.unit1"])
    with pytest.raises(FresnetError, match="budget"):
        plan(model, strategy="budget")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        h = self.fc(x.flatten(1))  # saves the flattened input (a view of x); x needs no grad: no weight
        y = torch.relu(h)  # saves y
        z = self.fc2(y)  # saves y again (same storage) and fc2's weight (a parameter)
        return z * z.view(z.shape)  # saves z twice: one storage


def test_feature_map_cost_counts_each_storage_once_and_parameters_apart():
    cost = feature_map_cost(_Toy(), batch=5, input_size=(4, 4))
    assert cost.saved_bytes == 5 * 48 * 4 + 5 * 8 * 4 + 5 * 4 * 4
    assert cost.saved_tensors == 3
    assert cost.param_bytes == 4 * 8 * 4
    assert cost.peak_bytes is None or cost.peak_bytes >= 0


def test_plan_estimates_match_measurement_and_the_model_is_left_untouched():
    torch.manual_seed(0)
    model = create_model(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = profile_units(model)
    memory_plan = plan(model, batch=6, profile=profile)
    old = feature_map_cost(model, 6)
    model.set_grad_checkpointing(memory_plan)
    new = feature_map_cost(model, 6)
    assert new.saved_bytes * 2 < old.saved_bytes
    assert memory_plan.baseline_bytes == pytest.approx(old.saved_bytes, rel=0.03)
    assert memory_plan.estimated_bytes == pytest.approx(new.saved_bytes, rel=0.03)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # create_model leaves train mode on; the sandbox restores it


def test_budget_strategy_recomputes_less_and_fits_a_reachable_budget():
    model = create_model(**TINY)
    profile = profile_units(model)
    full = plan(model, batch=8, profile=profile)
    budget_mb = (full.baseline_bytes + full.estimated_bytes) / 2 / MB
    partial = plan(model, budget_mb, batch=8, profile=profile)
    assert partial.strategy == "budget" and partial.meets_budget
    assert 0 < len(partial.units) < len(full.units)
    assert partial.recompute_fraction < full.recompute_fraction
    # the stem and the first units hold the widest maps: they free the most bytes per recomputed MAC
    assert partial.units[:2] == ("stem", "stage1.unit1")
    impossible = plan(model, full.estimated_bytes / MB / 10, batch=8, profile=profile)
    assert not impossible.meets_budget and set(impossible.units) == set(full.units)


def test_memory_command_prints_old_and_new_cost(capsys):
    from fresnet.cli import main

    code = main(["memory", "r18", "--set", "units=[1,1,1,1]", "--set", "input_size=32", "--batch", "2",
                 "--steps", "1", "--show-plan"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Old feature map cost=" in out and "New feature map cost=" in out
    assert "Step time:" in out and "segment:" in out


def test_memory_command_with_steps_0_skips_the_timing(capsys):
    """--steps 0 (documented: skips timing) was refused once the options became typed."""
    from fresnet.cli import main

    code = main(["memory", "r18", "--set", "units=[1,1,1,1]", "--set", "input_size=32", "--batch", "2", "--steps", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "Old feature map cost=" in out and "Step time:" not in out


@pytest.mark.parametrize("argv,hint", [
    (["--strategy", "sqrt", "--budget", "50"], "--budget would be ignored; drop --budget"),
    (["--strategy", "sqrt", "--ratio", "4"], "--ratio would be ignored"),
    (["--strategy", "budget"], "--budget MB (e.g. --budget 2000) or --ratio R"),
    (["--budget", "50", "--ratio", "4"], "not both"),
])
def test_memory_command_refuses_a_limit_it_would_ignore_in_flags_the_user_can_type(capsys, argv, hint):
    from fresnet.cli import main

    code = main(["memory", "r18", "--set", "units=[1,1,1,1]", "--set", "input_size=32", "--batch", "2", *argv])
    err = capsys.readouterr().err
    assert code == 2 and hint in err and "budget=2000" not in err.replace("--budget 2000", "")


def test_memory_plan_refuses_a_budget_the_sqrt_strategy_ignores():
    model = create_model(**TINY)
    with pytest.raises(FresnetError, match="'sqrt' strategy recomputes every unit"):
        plan(model, 50, strategy="sqrt")
    with pytest.raises(FresnetError, match=r"plan\(model, budget=2000\)"):
        plan(model, strategy="budget")


def test_memory_command_reads_a_model_file(tmp_path, capsys):
    import fresnet
    from fresnet.cli import main

    path = tmp_path / "tiny.safetensors"
    fresnet.save(create_model("r18", units=[1, 1, 1, 1], input_size=32, emb_size=32), path)
    code = main(["memory", str(path), "--batch", "2", "--steps", "0"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("tiny, batch 2, 32x32") and "Old feature map cost=" in out
    assert main(["memory", str(path), "--set", "emb_size=8"]) == 2
    assert "--set applies to preset names only" in capsys.readouterr().err
