"""build_margin against the authors' own numbers (``../shared/reference/losses``) and identities.

Every fixture of ``index.json`` is run in float64 the way its reference ran: the trainer-level
normalisation of that reference (MXNet's eps, F.normalize, UniFace's eps=1e-5, opensphere's in-place
renormalised centres), then ``build_margin(...)(cos, labels, norms)``, backward, and for the 10-step
fixtures the whole free-running SGD trajectory. Compared as the fixtures' README says: NaN in the
same places, ``max|ours - ref| <= rtol * max|ref|``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REFERENCE_DIR
from fresnet.errors import FresnetError
from fresnet.train.losses import MARGIN_LOSSES, build_margin, describe_margins

LOSS_DIR = REFERENCE_DIR / "losses"
INDEX = LOSS_DIR / "index.json"
FIXTURES = json.loads(INDEX.read_text())["fixtures"] if INDEX.exists() else []
SKIPPED = {
    "arcface_torch_combined_1_0.3_0.2": "arcface_torch's quirk: m3 > 0 drops m1 and m2 (CosFace(m3)); the "
                                        "combined margin follows the MXNet formula (mxnet_combined_1_0.3_0.2)",
}
INITIAL_STATE = {"adaface": {"batch_mean": 20.0, "batch_std": 100.0}, "curricularface": {"t": 0.0}}


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---- comparison as the README defines it --------------------------------------------------------
def assert_close(ours: Any, ref: np.ndarray, rtol: float, what: str) -> None:
    ours = np.asarray(ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    ours = ours.reshape(ref.shape)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"{what}: NaN in different places"
    finite = ~np.isnan(ref)
    if not finite.any():
        return
    diff = np.abs(ours[finite] - ref[finite]).max()
    scale = np.abs(ref[finite]).max()
    bound = rtol * scale if scale > 0 else rtol
    assert diff <= bound, f"{what}: max |diff| {diff:.3e} > {bound:.3e} (rtol {rtol:g}, max |ref| {scale:.3e})"


# ---- how each reference's trainer gets the cosines ------------------------------------------------
def mxnet_normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(dim=1, keepdim=True) + 1e-10)


def l2_norm(v: torch.Tensor) -> torch.Tensor:  # the heads' own l2_norm: no eps
    return v / torch.norm(v, 2, 1, True)


@dataclass
class Plan:
    """How to run one fixture: the loss name and options, and the trainer-level pieces."""

    name: str
    options: dict
    normalize: Callable[[torch.Tensor], torch.Tensor]
    clamp: bool = False
    renormalize_centres: bool = False  # opensphere: centres renormalised in place, none in the graph
    uniface_eps: bool = False
    adaface_inputs: bool = False
    magface_norms: bool = False
    loss_key: str = "loss"
    extra: dict = field(default_factory=dict)


def plan_for(entry: dict) -> Plan:
    family, kw, ref = entry["family"], entry["kwargs"], entry["reference"]
    files = " ".join(ref.get("files", {}))
    if family == "combined_margin":
        if "arcface_mxnet" in files:
            return Plan("combined", {"s": kw["loss_s"], "m1": kw["loss_m1"], "m2": kw["loss_m2"], "m3": kw["loss_m3"]},
                        mxnet_normalize)
        if ref["repo"] == "fdbtrs/ElasticFace":
            name = "cosface" if entry["rtol"] <= 1e-12 or "cos" in entry["name"] else "arcface"
            return Plan(name, {"s": kw["s"], "m": kw["m"]}, l2_norm, clamp=True)
        cls = ref.get("cls")  # arcface_torch: straight-through margins, PartialFC's clamped loss aside
        if cls == "ArcFace":
            options = {"s": kw["s"], "m": kw["margin"], "grad": "straight_through"}
            return Plan("arcface", options, F.normalize, clamp=True, loss_key="loss_cross_entropy")
        if cls == "CosFace":
            return Plan("cosface", {"s": kw["s"], "m": kw["m"]}, F.normalize, clamp=True, loss_key="loss_cross_entropy")
        options = {"s": kw["s"], "m1": kw["m1"], "m2": kw["m2"], "m3": kw["m3"], "grad": "straight_through"}
        if "interclass_filtering_threshold" in kw:
            options["interclass_filtering_threshold"] = kw["interclass_filtering_threshold"]
        return Plan("combined", options, F.normalize, clamp=True, loss_key="loss_cross_entropy")
    if family == "subcenter_arcface":
        return Plan("subcenter_arcface", {"s": kw["loss_s"], "m": kw["loss_m2"], "K": kw["loss_K"]}, mxnet_normalize)
    if family == "adaface":
        return Plan("adaface", {k: kw[k] for k in ("m", "h", "s", "t_alpha")}, l2_norm, adaface_inputs=True)
    if family == "magface":
        lin, mag = kw["MagLinear"], kw["MagLoss"]
        options = {"s": lin["scale"], "easy_margin": lin["easy_margin"], "l_a": mag["l_a"], "u_a": mag["u_a"],
                   "l_m": mag["l_margin"], "u_m": mag["u_margin"], "lambda_g": kw["lambda_g"]}
        return Plan("magface", options, F.normalize, magface_norms=True)
    if family == "curricularface":
        if "margin" in kw:  # TFace
            return Plan("curricularface", {"m": kw["margin"], "s": kw["scale"], "alpha": kw["alpha"]}, l2_norm)
        return Plan("curricularface", {"m": kw["m"], "s": kw["s"], "alpha": 0.01}, l2_norm)
    if family == "elasticface":
        kind = "arc" if "_arc" in entry["name"] else "cos"
        name = f"elasticface_{kind}" + ("_plus" if kw["plus"] else "")
        return Plan(name, {"s": kw["s"], "m": kw["m"], "std": kw["std"]}, l2_norm)
    if family == "sphereface":
        return Plan("sphereface", {"s": kw["s"], "m": kw["m"]}, F.normalize, renormalize_centres=True)
    if family == "sphereface2":
        options = {k: kw[k] for k in ("alpha", "r", "m", "t", "lw")} | {"num_classes": kw["subj_num"]}
        return Plan("sphereface2", options, F.normalize, renormalize_centres=True)
    if family == "uniface":
        options = {k: kw[k] for k in ("m", "s", "l", "r")} | {"num_classes": kw["out_features"]}
        return Plan("uniface", options, F.normalize, uniface_eps=True)
    if family == "sface":
        return Plan("sface", {k: kw[k] for k in ("s", "k", "a", "b")}, F.normalize)
    raise AssertionError(f"no plan for family {family}")


# ---- one forward/backward as the reference's trainer runs it ---------------------------------------
def run_step(module, plan: Plan, arrays: dict, weight: torch.Tensor, rtol: float, tag: str) -> dict:
    """Forward + backward on ``arrays`` (one step's inputs); returns the tensors to compare."""
    out = {}
    labels = torch.as_tensor(arrays["labels"], dtype=torch.int64)
    norms = None
    if plan.adaface_inputs:
        x_raw = torch.as_tensor(arrays["x_raw"]).clone().requires_grad_()
        norm = torch.norm(x_raw, 2, 1, True)
        x = torch.div(x_raw, norm)
        x.retain_grad()
        norms = norm.squeeze(1)
        assert_close(x, arrays["x"], 1e-12 if x.dtype == torch.float64 else 1e-6, f"{tag} x")
        out["x_raw"] = x_raw
    else:
        x = torch.as_tensor(arrays["x"]).clone().requires_grad_()
    w = weight.detach().clone()
    if plan.renormalize_centres:
        w = F.normalize(w, dim=1)
        out["weight_used"] = w
    w.requires_grad_()
    if plan.renormalize_centres:
        cos = F.normalize(x, dim=1) @ w.T
    elif plan.uniface_eps:
        cos = F.linear(F.normalize(x, eps=1e-5), F.normalize(w, eps=1e-5))
    elif plan.adaface_inputs:
        cos = x @ (w / torch.norm(w, 2, 1, True)).T  # the head normalises only the kernel
    else:
        cos = plan.normalize(x) @ plan.normalize(w).T
    if plan.clamp:
        cos = cos.clamp(-1, 1)
    if plan.magface_norms:
        norms = torch.norm(x, dim=1)
    before = cos.detach().clone()
    kwargs = {}
    if "margins_drawn" in arrays:
        kwargs["margins"] = torch.as_tensor(arrays["margins_drawn"]).reshape(-1)
    loss = module(cos, labels, norms, **kwargs)
    assert loss.dim() == 0 and loss.dtype == cos.dtype
    assert torch.equal(cos.detach(), before), "the module changed cos in place"
    if "cos" in arrays:
        out["cos"] = cos
    loss.backward()
    out.update(loss=loss, grad_x=x.grad, grad_weight=w.grad, weight=w)
    if plan.adaface_inputs:
        out["grad_x_raw"] = out.pop("x_raw").grad
    if getattr(module, "bias", None) is not None:
        out["grad_bias"] = module.bias.grad
    return out


def write_state(module, arrays: dict, prefix: str) -> None:
    with torch.no_grad():
        for key, value in arrays.items():
            if key.startswith(prefix):
                getattr(module, key[len(prefix):]).copy_(torch.as_tensor(value))


def check_fresh_state(module, plan: Plan, entry: dict, arrays: dict) -> None:
    """The fresh bias / buffers equal the reference's initial values (1e-7: UniFace keeps float32)."""
    for name, value in INITIAL_STATE.get(plan.name, {}).items():
        assert float(getattr(module, name)) == value, name
        ref = arrays.get(f"state_in_{name}")
        if ref is not None and "injected" not in entry["name"]:
            assert abs(float(ref.reshape(-1)[0]) - value) <= 1e-7 * max(1.0, abs(value))
    if getattr(module, "bias", None) is not None:
        ref = arrays["bias_init"] if "bias_init" in arrays else arrays["bias"]
        assert abs(float(module.bias.detach()) - float(ref.reshape(-1)[0])) <= 1e-7 * abs(float(ref.reshape(-1)[0]))
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        assert tensor.dtype == torch.float64 and tensor.shape == (1,), name
        assert name in ("bias", "batch_mean", "batch_std", "t"), name


def run_fixture(entry: dict, module) -> None:
    plan = plan_for(entry)
    arrays = dict(np.load(LOSS_DIR / entry["file"]))
    rtol = entry["rtol"]
    check_fresh_state(module, plan, entry, arrays)
    module.train()
    if entry["kind"] == "single":
        write_state(module, arrays, "state_in_")
        if "bias" in arrays:
            with torch.no_grad():
                module.bias.copy_(torch.as_tensor(arrays["bias"]))
        out = run_step(module, plan, arrays, torch.as_tensor(arrays["weight"]), rtol, entry["name"])
        compare_step(out, arrays, plan, rtol, entry["name"])
        for key, value in arrays.items():
            if key.startswith("state_out_"):
                assert_close(getattr(module, key[len("state_out_"):]), value, rtol, f"{entry['name']} {key}")
        return
    # multistep: the whole free-running SGD trajectory
    lr = float(arrays["lr"])
    write_state(module, arrays, "state_in_")
    if "bias_init" in arrays:
        with torch.no_grad():
            module.bias.copy_(torch.as_tensor(arrays["bias_init"]))
    weight = torch.as_tensor(arrays["weight_init"]).clone()
    steps = arrays["loss"].shape[0]
    for t in range(steps):
        step = {k: v[t] for k, v in arrays.items() if k not in ("lr", "weight_init", "bias_init") and
                not k.startswith("state_in_") and v.ndim >= 1 and v.shape[0] == steps}
        tag = f"{entry['name']} step {t}"
        if getattr(module, "bias", None) is not None:
            module.bias.grad = None
        out = run_step(module, plan, step, weight, rtol, tag)
        compare_step(out, step, plan, rtol, tag)
        with torch.no_grad():
            weight = out["weight"].detach() - lr * out["grad_weight"]
            if getattr(module, "bias", None) is not None:
                module.bias -= lr * module.bias.grad
        assert_close(weight, step["weight_after"], rtol, f"{tag} weight_after")
        if "bias_after" in step:
            assert_close(module.bias, step["bias_after"], rtol, f"{tag} bias_after")
        for key, value in step.items():
            if key.startswith("state_after_"):
                assert_close(getattr(module, key[len("state_after_"):]), value, rtol, f"{tag} {key}")


def compare_step(out: dict, arrays: dict, plan: Plan, rtol: float, tag: str) -> None:
    assert_close(out["loss"], arrays[plan.loss_key] if plan.loss_key in arrays else arrays["loss"], rtol, f"{tag} loss")
    for key in ("grad_x", "grad_x_raw", "grad_weight", "grad_bias", "weight_used", "cos"):
        if key in arrays:
            assert key in out and out[key] is not None, f"{tag}: no {key}"
            assert_close(out[key], arrays[key], rtol, f"{tag} {key}")


def fixture_params():
    for entry in FIXTURES:
        marks = [pytest.mark.reference]
        if entry["name"] in SKIPPED:
            marks.append(pytest.mark.skip(reason=SKIPPED[entry["name"]]))
        yield pytest.param(entry, id=entry["name"], marks=marks)


@pytest.mark.parametrize("entry", list(fixture_params()) or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"reference data not available: {INDEX}"))])
def test_fixture(entry):
    plan = plan_for(entry)
    run_fixture(entry, build_margin(plan.name, **plan.options))
    # the defaults: built with no options (num_classes aside), it is the same loss when the fixture
    # used the authors' defaults
    required = {k: v for k, v in plan.options.items() if k == "num_classes"}
    defaults = MARGIN_LOSSES[plan.name].defaults
    if all(defaults.get(k) == v for k, v in plan.options.items() if k != "num_classes"):
        run_fixture(entry, build_margin(plan.name, **required))


def single_fixture_params():
    return [p for p in fixture_params() if p.values[0]["kind"] == "single"]


@pytest.mark.parametrize("entry", single_fixture_params() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"reference data not available: {INDEX}"))])
def test_fixture_in_float32(entry):
    """The same single-step fixtures with float32 inputs, state and module: within 1e-5."""
    torch.set_default_dtype(torch.float32)
    plan = plan_for(entry)
    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 else v
              for k, v in np.load(LOSS_DIR / entry["file"]).items()}
    reference = dict(np.load(LOSS_DIR / entry["file"]))
    module = build_margin(plan.name, **plan.options).train()
    write_state(module, arrays, "state_in_")
    if "bias" in arrays:
        with torch.no_grad():
            module.bias.copy_(torch.as_tensor(arrays["bias"]))
    out = run_step(module, plan, arrays, torch.as_tensor(arrays["weight"]), 1e-5, entry["name"])
    assert out["loss"].dtype == torch.float32
    compare_step({k: v.double() if isinstance(v, torch.Tensor) else v for k, v in out.items()}, reference, plan,
                 1e-5, entry["name"] + " float32")


@pytest.mark.reference
def test_magface_identity_loss():
    """loss_id and its gradients: magface with lambda_g=0."""
    entries = [e for e in FIXTURES if e["family"] == "magface"]
    if not entries:
        pytest.skip(f"reference data not available: {INDEX}")
    for entry in entries:
        plan = plan_for(entry)
        arrays = dict(np.load(LOSS_DIR / entry["file"]))
        module = build_margin("magface", **{**plan.options, "lambda_g": 0.0})
        out = run_step(module, plan, arrays, torch.as_tensor(arrays["weight"]), entry["rtol"], entry["name"])
        rtol = entry["rtol"]
        assert_close(out["loss"], arrays["loss_id"], rtol, "loss_id")
        assert_close(out["grad_x"], arrays["grad_x_id"], rtol, "grad_x_id")
        assert_close(out["grad_weight"], arrays["grad_weight_id"], rtol, "grad_weight_id")


def test_fixture_index_is_complete_when_present():
    if not FIXTURES:
        pytest.skip(f"reference data not available: {INDEX}")
    names = {plan_for(e).name for e in FIXTURES}
    assert names == set(MARGIN_LOSSES)  # every loss of the contract has a fixture


# ---- the contract itself ----------------------------------------------------------------------------
ALL = list(MARGIN_LOSSES)


def sample_inputs(name: str, rows: int = 6, classes: int = 9, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    columns = classes * (3 if name == "subcenter_arcface" else 1)
    cos = (torch.rand(rows, columns, generator=gen, dtype=dtype) * 1.6 - 0.8).requires_grad_()
    labels = torch.randint(0, classes, (rows,), generator=gen)
    norms = torch.rand(rows, generator=gen, dtype=dtype) * 60 + 5
    return cos, labels, norms


@pytest.mark.parametrize("name", ALL)
def test_contract_shape_dtype_and_state_names(name):
    module = build_margin(name, num_classes=9)
    for dtype in (torch.float64, torch.float32):
        cos, labels, norms = sample_inputs(name, dtype=dtype)
        before = cos.detach().clone()
        loss = module(cos, labels, norms)
        assert loss.dim() == 0 and loss.dtype == dtype and torch.isfinite(loss)
        loss.backward()
        assert torch.equal(cos.detach(), before) and torch.isfinite(cos.grad).all()
    assert set(module.state_dict()) <= {"bias", "batch_mean", "batch_std", "t"}
    if name in ("adaface", "curricularface"):
        assert set(dict(module.named_buffers())) == ({"batch_mean", "batch_std"} if name == "adaface" else {"t"})
    if name in ("sphereface2", "uniface"):
        assert [n for n, _ in module.named_parameters()] == ["bias"]


@pytest.mark.parametrize("name", ALL)
def test_float32_matches_float64(name):
    cos64, labels, norms = sample_inputs(name)
    margins = torch.full((6,), 0.5)
    results = []
    for dtype in (torch.float64, torch.float32):
        torch.set_default_dtype(dtype)
        module = build_margin(name, num_classes=9)
        cos = cos64.detach().to(dtype).requires_grad_()
        extra = {"margins": margins.to(dtype)} if name.startswith("elasticface") else {}
        loss = module(cos, labels, norms.to(dtype), **extra)
        loss.backward()
        results.append((loss.detach().double(), cos.grad.double()))
    (l64, g64), (l32, g32) = results
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    assert (g32 - g64).abs().max() <= 1e-5 * g64.abs().max()


@pytest.mark.parametrize("name", ALL)
def test_unlabelled_rows_get_no_margin(name):
    """A row labelled -1 (its class on another rank) gets no margin: its gradient does not depend on
    the label it would have had, and its loss term is that of a plain row with no target here."""
    if name in ("sphereface2", "uniface", "sface"):
        module = build_margin(name, num_classes=9)
        cos, labels, norms = sample_inputs(name)
        unlabelled = labels.clone()
        unlabelled[0] = -1
        loss = module(cos, unlabelled, norms)
        assert torch.isfinite(loss)
        return
    module = build_margin(name, num_classes=9).eval()
    cos, labels, norms = sample_inputs(name)
    extra = {"margins": torch.full((6,), 0.4)} if name.startswith("elasticface") else {}
    a, b = labels.clone(), labels.clone()
    a[0], b[0] = -1, -1
    b[1] = -1
    grads = []
    for lab in (a, b):
        c = cos.detach().clone().requires_grad_()
        module(c, lab, norms, **extra).backward()
        grads.append(c.grad)
    assert torch.isfinite(grads[0]).all()
    assert torch.allclose(grads[0][0], grads[1][0])  # row 0's treatment depends only on its own -1


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(FresnetError, match="unknown margin loss 'arcfce'; choose one of combined, arcface"):
        build_margin("arcfce")
    with pytest.raises(FresnetError, match=r"unknown option\(s\) margin; it takes s, m, grad"):
        build_margin("arcface", margin=0.5)
    with pytest.raises(FresnetError, match="needs num_classes"):
        build_margin("sphereface2")
    with pytest.raises(FresnetError, match="needs num_classes"):
        build_margin("uniface")
    with pytest.raises(FresnetError, match="grad='fast' is not one of exact, straight_through"):
        build_margin("arcface", grad="fast")
    with pytest.raises(FresnetError, match="process_group"):
        build_margin("arcface", process_group=None)
    with pytest.raises(FresnetError, match="finite number"):
        build_margin("cosface", m="big")
    with pytest.raises(FresnetError, match="norms"):
        build_margin("adaface")(torch.zeros(2, 3), torch.tensor([0, 1]))
    for name in ALL:  # every name takes num_classes
        build_margin(name, num_classes=5)
    build_margin("adaface", process_group=None)
    build_margin("curricularface", process_group=None)


def test_defaults_are_the_contracts_table():
    table = {
        "combined": {"s": 64, "m1": 1.0, "m2": 0.3, "m3": 0.2, "grad": "exact", "interclass_filtering_threshold": 0.0},
        "arcface": {"s": 64, "m": 0.5, "grad": "exact", "interclass_filtering_threshold": 0.0},
        "cosface": {"s": 64, "m": 0.35, "interclass_filtering_threshold": 0.0},
        "subcenter_arcface": {"s": 64, "m": 0.5, "K": 3},
        "adaface": {"m": 0.4, "h": 0.333, "s": 64, "t_alpha": 0.01},
        "magface": {"s": 64, "l_a": 10, "u_a": 110, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35, "easy_margin": True},
        "curricularface": {"m": 0.5, "s": 64, "alpha": 0.01},
        "elasticface_arc": {"s": 64, "m": 0.5, "std": 0.05}, "elasticface_arc_plus": {"s": 64, "m": 0.5, "std": 0.0175},
        "elasticface_cos": {"s": 64, "m": 0.35, "std": 0.05}, "elasticface_cos_plus": {"s": 64, "m": 0.35, "std": 0.02},
        "sphereface": {"s": 30, "m": 1.7}, "sphereface2": {"alpha": 0.7, "r": 40, "m": 0.4, "t": 3, "lw": 50},
        "uniface": {"m": 0.4, "s": 64, "l": 1.0, "r": 1.0}, "sface": {"s": 64, "k": 80, "a": 0.8, "b": 1.23},
    }
    assert {n: dict(e.defaults) for n, e in MARGIN_LOSSES.items()} == table
    assert [row[0] for row in describe_margins()] == list(table)


def test_buffers_update_in_training_only_and_before_use():
    cos, labels, norms = sample_inputs("adaface")
    module = build_margin("adaface", t_alpha=1.0)
    module(cos, labels, norms)
    clipped = norms.clip(0.001, 100)
    assert float(module.batch_mean) == pytest.approx(float(clipped.mean()))
    assert float(module.batch_std) == pytest.approx(float(clipped.std()))
    frozen = {k: v.clone() for k, v in module.state_dict().items()}
    module.eval()(cos, labels, norms)
    assert all(torch.equal(frozen[k], v) for k, v in module.state_dict().items())
    curricular = build_margin("curricularface", alpha=1.0)
    curricular(cos, labels)
    assert float(curricular.t) == pytest.approx(float(cos.detach().gather(1, labels[:, None]).mean()))


# ---- identities that need no fixture ---------------------------------------------------------------
def loss_and_grad(module, cos, labels, norms=None, **extra):
    c = cos.detach().clone().requires_grad_()
    n = None if norms is None else norms.detach().clone().requires_grad_()
    loss = module(c, labels, n, **extra)
    loss.backward()
    return loss.detach(), c.grad


def test_adaface_with_h0_is_cosface():
    """h = 0: r = 0, so the target angle is unchanged and the cosine gets -m: CosFace (on the
    cosines AdaFace clamps to +-(1 - 1e-3), which these stay inside)."""
    cos, labels, norms = sample_inputs("adaface")
    a = loss_and_grad(build_margin("adaface", h=0.0, m=0.4), cos, labels, norms)
    b = loss_and_grad(build_margin("cosface", m=0.4), cos, labels)
    assert torch.allclose(a[0], b[0], rtol=1e-12) and torch.allclose(a[1], b[1], rtol=1e-10, atol=1e-14)


def test_magface_at_constant_norm_is_easy_margin_arcface():
    cos, labels, _ = sample_inputs("magface")
    norm = torch.full((6,), 60.0)
    module = build_margin("magface", lambda_g=0.0)
    m = float(module.margin(norm[:1]))
    a = loss_and_grad(module, cos, labels, norm)
    # easy-margin ArcFace: cos(theta + m) where cos > 0
    c = cos.detach().clone().requires_grad_()
    cos_y = c.gather(1, labels[:, None]).squeeze(1)
    target = torch.where(cos_y > 0, torch.cos(torch.acos(cos_y) + m), cos_y)
    logits = c.scatter(1, labels[:, None], target[:, None]) * 64
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    assert torch.allclose(a[0], loss.detach(), rtol=1e-12) and torch.allclose(a[1], c.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind,plain", [("arc", "arcface"), ("cos", "cosface")])
@pytest.mark.parametrize("plus", [False, True])
def test_elasticface_with_zero_std_is_arcface_or_cosface(kind, plain, plus):
    cos, labels, _ = sample_inputs(plain)
    m = 0.45
    name = f"elasticface_{kind}" + ("_plus" if plus else "")
    a = loss_and_grad(build_margin(name, m=m, std=0.0), cos, labels)  # drawn: N(m, 0) = m
    b = loss_and_grad(build_margin(plain, m=m), cos, labels)
    assert torch.allclose(a[0], b[0], rtol=1e-12) and torch.allclose(a[1], b[1], rtol=1e-10, atol=1e-14)


def test_subcenter_with_one_subcentre_is_arcface():
    cos, labels, _ = sample_inputs("arcface")
    a = loss_and_grad(build_margin("subcenter_arcface", K=1, m=0.5), cos, labels)
    b = loss_and_grad(build_margin("arcface", m=0.5), cos, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_straight_through_keeps_values_and_takes_the_plain_gradient():
    cos, labels, _ = sample_inputs("arcface")
    exact = loss_and_grad(build_margin("arcface"), cos, labels)
    through = loss_and_grad(build_margin("arcface", grad="straight_through"), cos, labels)
    assert torch.allclose(exact[0], through[0], rtol=1e-14)
    assert not torch.allclose(exact[1], through[1])
    # the gradient is that of cross-entropy on fixed logits times s
    module = build_margin("arcface")
    with torch.no_grad():
        logits = module.logits(cos, labels)
    p = torch.softmax(logits, 1)
    expected = (p - F.one_hot(labels, cos.shape[1])) / cos.shape[0] * 64
    assert torch.allclose(through[1], expected, atol=1e-12)


def test_the_angle_guard_at_plus_minus_one():
    """A target exactly on its centre (cos = 1) or a hair past it: finite loss, finite gradients."""
    for name in ("arcface", "combined", "elasticface_arc", "magface", "curricularface", "sface", "subcenter_arcface"):
        cos, labels, norms = sample_inputs(name)
        cos = cos.detach().clone()
        cos[0, labels[0]] = 1.0
        cos[1, labels[1]] = 1.0 + 2e-16
        cos[2, labels[2]] = -1.0
        loss, grad = loss_and_grad(build_margin(name, num_classes=9), cos, labels, norms)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_half_precision_is_finite_at_the_edges(name, dtype):
    """fp16 / bf16 cosines, with targets and a non-target exactly at +-1: a finite loss in the input
    dtype and finite gradients (computed in float32 inside, see MarginLoss.forward)."""
    cos, labels, norms = sample_inputs(name)
    cos = cos.detach().to(dtype)
    cos[0, labels[0]], cos[1, labels[1]], cos[2, 0] = 1.0, -1.0, 1.0
    cos.requires_grad_()
    loss = build_margin(name, num_classes=9)(cos, labels, norms.to(dtype))
    loss.backward()
    assert loss.dtype == dtype and torch.isfinite(loss) and torch.isfinite(cos.grad).all()
