"""MSAM (SGD and AdamW forms) and SAM against hand-written loops of their update rules."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from multifcl.config import FIELD_TYPES, ConfigError
from multifcl.optim import (
    MSAM,
    SAM,
    MSAMAdamW,
    build_optimizer,
    perturbation_radius,
    restore_unperturbed,
)

Tensors = list[torch.Tensor]
STEPS = 6
SIZES = (3, 2)  # two parameter groups
LRS = (0.1, 0.03)
NORM_EPS = 1e-12


def quadratic() -> tuple[torch.Tensor, torch.Tensor]:
    """L(x) = x^T A x / 2 - b^T x over x = cat(groups), A symmetric positive definite."""
    generator = torch.Generator().manual_seed(0)
    size = sum(SIZES)
    root = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return root @ root.T / size + torch.eye(size, dtype=torch.float64), torch.randn(
        size, generator=generator, dtype=torch.float64
    )


A, B = quadratic()


def loss_of(weights: Tensors) -> torch.Tensor:
    x = torch.cat(list(weights))
    return 0.5 * x @ A @ x - B @ x


def gradient_of(weights: Tensors) -> Tensors:
    return list(torch.split(A @ torch.cat(list(weights)) - B, SIZES))


def initial_weights() -> Tensors:
    return [torch.linspace(-1.0, 1.0, size, dtype=torch.float64) for size in SIZES]


def global_norm(tensors: Tensors) -> torch.Tensor:
    return torch.sqrt(sum((t**2).sum() for t in tensors))


def grouped_params() -> tuple[list[nn.Parameter], list[dict]]:
    params = [nn.Parameter(w) for w in initial_weights()]
    return params, [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]


def closure_for(params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> Callable:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    return closure


def assert_close(actual: Tensors, expected: Tensors) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e, rtol=1e-10, atol=1e-12)


def msam_sgd_by_hand(mu: float, rho: float, decay: float) -> list[tuple[Tensors, Tensors]]:
    """The MSAM rule (Becker et al., arXiv 2401.12033), step by step: (perturbed w~_{t+1}, unperturbed w_{t+1}) per step."""
    w = initial_weights()
    perturbed = [x.clone() for x in w]  # v_0 = 0: the first step is unperturbed
    v = [torch.zeros_like(x) for x in w]
    history = []
    for _ in range(STEPS):
        g = gradient_of(perturbed)
        g = [gi + decay * wi for gi, wi in zip(g, w, strict=True)]  # L2 at the unperturbed w
        v = [mu * vi + gi for vi, gi in zip(v, g, strict=True)]
        w = [wi - lr * vi for wi, vi, lr in zip(w, v, LRS, strict=True)]
        norm = global_norm(v)
        perturbed = [wi - rho * vi / (norm + NORM_EPS) for wi, vi in zip(w, v, strict=True)]
        history.append((perturbed, w))
    return history


def msam_adamw_by_hand(rho: float, decay: float) -> list[tuple[Tensors, Tensors]]:
    """AdamW (decoupled decay) from the unperturbed w, perturbation along m without correction."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    w = initial_weights()
    perturbed = [x.clone() for x in w]
    m = [torch.zeros_like(x) for x in w]
    s = [torch.zeros_like(x) for x in w]
    history = []
    for t in range(1, STEPS + 1):
        g = gradient_of(perturbed)
        w = [wi * (1 - lr * decay) for wi, lr in zip(w, LRS, strict=True)]
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g, strict=True)]
        s = [beta2 * si + (1 - beta2) * gi**2 for si, gi in zip(s, g, strict=True)]
        m_hat = [mi / (1 - beta1**t) for mi in m]
        s_hat = [si / (1 - beta2**t) for si in s]
        w = [
            wi - lr * mh / (sh.sqrt() + eps)
            for wi, mh, sh, lr in zip(w, m_hat, s_hat, LRS, strict=True)
        ]
        norm = global_norm(m)
        perturbed = [wi - rho * mi / (norm + NORM_EPS) for wi, mi in zip(w, m, strict=True)]
        history.append((perturbed, w))
    return history


def run_and_compare(optimizer, params, history) -> None:
    closure = closure_for(params, optimizer)
    for perturbed, unperturbed in history:
        optimizer.step(closure)
        assert_close(params, perturbed)
        optimizer.move_to_unperturbed()
        assert_close(params, unperturbed)
        optimizer.move_to_perturbed()  # resume exactly: the next step needs w~
        assert_close(params, perturbed)


def test_msam_sgd_follows_the_update_rule_with_two_groups() -> None:
    params, groups = grouped_params()
    optimizer = MSAM(groups, lr=1.0, momentum=0.9, rho=0.5, weight_decay=0.01)
    run_and_compare(optimizer, params, msam_sgd_by_hand(mu=0.9, rho=0.5, decay=0.01))


def test_msam_adamw_follows_the_update_rule_with_two_groups() -> None:
    params, groups = grouped_params()
    optimizer = MSAMAdamW(groups, lr=1.0, rho=0.5, weight_decay=0.05)
    run_and_compare(optimizer, params, msam_adamw_by_hand(rho=0.5, decay=0.05))


@pytest.mark.parametrize(
    ("make_msam", "make_torch"),
    [
        (
            lambda g: MSAM(g, lr=1.0, momentum=0.9, rho=0.0, weight_decay=0.01),
            lambda g: torch.optim.SGD(g, lr=1.0, momentum=0.9, weight_decay=0.01),
        ),
        (
            lambda g: MSAMAdamW(g, lr=1.0, rho=0.0, weight_decay=0.05),
            lambda g: torch.optim.AdamW(g, lr=1.0, weight_decay=0.05),
        ),
    ],
)
def test_msam_with_rho_zero_is_the_torch_optimizer(make_msam, make_torch) -> None:
    msam_params, msam_groups = grouped_params()
    torch_params, torch_groups = grouped_params()
    msam, reference = make_msam(msam_groups), make_torch(torch_groups)
    for _ in range(STEPS):
        msam.step(closure_for(msam_params, msam))
        reference.step(closure_for(torch_params, reference))
    assert_close(msam_params, [p.detach() for p in torch_params])


def test_move_to_unperturbed_is_idempotent_and_the_next_step_starts_unperturbed() -> None:
    params, groups = grouped_params()
    optimizer = MSAM(groups, lr=1.0, momentum=0.9, rho=0.5)
    closure = closure_for(params, optimizer)
    for _ in range(3):
        optimizer.step(closure)
    optimizer.move_to_unperturbed()
    unperturbed = [p.detach().clone() for p in params]
    velocity = [optimizer.state[p]["momentum_buffer"].clone() for p in params]
    optimizer.move_to_unperturbed()
    assert_close(params, unperturbed)

    optimizer.step(closure)  # gradient at the unperturbed weights, not at a double undo
    v = [0.9 * vi + gi for vi, gi in zip(velocity, gradient_of(unperturbed), strict=True)]
    w = [wi - lr * vi for wi, vi, lr in zip(unperturbed, v, LRS, strict=True)]
    norm = global_norm(v)
    assert_close(params, [wi - 0.5 * vi / (norm + NORM_EPS) for wi, vi in zip(w, v, strict=True)])


def test_a_parameter_without_gradient_keeps_its_unperturbed_value() -> None:
    used, idle = (
        nn.Parameter(torch.ones(2, dtype=torch.float64)),
        nn.Parameter(torch.ones(2, dtype=torch.float64)),
    )
    optimizer = MSAM([used, idle], lr=0.1, momentum=0.9, rho=0.5)
    optimizer.zero_grad()
    (used.sum() + idle.sum()).backward()
    optimizer.step()
    optimizer.move_to_unperturbed()
    idle_after_one_step = idle.detach().clone()
    optimizer.move_to_perturbed()
    for _ in range(3):  # idle gets no gradient from now on, but stays perturbed with the rest
        optimizer.zero_grad(set_to_none=True)
        (used**2).sum().backward()
        optimizer.step()
        assert not torch.equal(idle.detach(), idle_after_one_step)
    optimizer.move_to_unperturbed()
    torch.testing.assert_close(idle.detach(), idle_after_one_step, rtol=0, atol=1e-15)


def test_sam_updates_with_the_gradient_at_the_ascended_weights() -> None:
    params = [nn.Parameter(w) for w in initial_weights()]
    rho, lr, mu = 0.3, 0.1, 0.9
    optimizer = SAM(params, torch.optim.SGD, rho=rho, lr=lr, momentum=mu)
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        optimizer.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    w, v = initial_weights(), [torch.zeros(size, dtype=torch.float64) for size in SIZES]
    for step in range(STEPS):
        loss = optimizer.step(closure)
        assert len(calls) == 2 * (step + 1)
        torch.testing.assert_close(loss.detach(), loss_of(w))  # the loss at w, not at the ascent
        g = gradient_of(w)
        norm = global_norm(g)
        ascended = [wi + rho * gi / (norm + NORM_EPS) for wi, gi in zip(w, g, strict=True)]
        v = [mu * vi + gi for vi, gi in zip(v, gradient_of(ascended), strict=True)]
        w = [wi - lr * vi for wi, vi in zip(w, v, strict=True)]
        assert_close(params, w)


def test_sam_with_rho_zero_is_its_base_optimizer_and_shares_its_groups() -> None:
    sam_params, torch_params = (
        [nn.Parameter(w) for w in initial_weights()],
        [nn.Parameter(w) for w in initial_weights()],
    )
    sam = SAM(sam_params, torch.optim.AdamW, rho=0.0, lr=0.1, weight_decay=0.05)
    adamw = torch.optim.AdamW(torch_params, lr=0.1, weight_decay=0.05)
    for _ in range(STEPS):
        sam.step(closure_for(sam_params, sam))
        adamw.step(closure_for(torch_params, adamw))
    assert_close(sam_params, [p.detach() for p in torch_params])
    sam.param_groups[0]["lr"] = 0.5
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.5
    reloaded = SAM([nn.Parameter(w) for w in initial_weights()], torch.optim.AdamW, lr=0.1)
    reloaded.load_state_dict(sam.state_dict())
    assert reloaded.state is reloaded.base_optimizer.state
    assert reloaded.param_groups[0]["lr"] == 0.5


def test_no_perturbed_weight_leaves_a_client_round() -> None:
    """A client round: MSAM steps on a linear model, restore, upload the state_dict."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (8,), generator=generator)
    model = nn.Linear(4, 3).double()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = optimizer_config("msam", lr=0.2, rho=0.7)
    optimizer = build_optimizer(config, model.parameters())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        return loss

    for _ in range(STEPS):
        optimizer.step(closure)
    restore_unperturbed(optimizer)
    upload = {name: value.clone() for name, value in model.state_dict().items()}

    def gradient_at(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = {name: w.detach().requires_grad_(True) for name, w in weights.items()}
        logits = torch.func.functional_call(model, weights, (inputs,))
        loss = nn.functional.cross_entropy(logits, targets)
        return dict(zip(weights, torch.autograd.grad(loss, list(weights.values())), strict=True))

    w, perturbed = dict(initial), dict(initial)
    v = {name: torch.zeros_like(x) for name, x in w.items()}
    for _ in range(STEPS):
        g = gradient_at(perturbed)
        v = {name: 0.9 * v[name] + g[name] for name in w}
        w = {name: w[name] - 0.2 * v[name] for name in w}
        norm = global_norm(list(v.values()))
        perturbed = {name: w[name] - 0.7 * v[name] / (norm + NORM_EPS) for name in w}
    for name, value in upload.items():
        torch.testing.assert_close(value, w[name], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(value, perturbed[name])
    restore_unperturbed(optimizer)  # idempotent
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, upload[name], rtol=0, atol=1e-15)


def optimizer_config(optimizer: str, **overrides) -> SimpleNamespace:
    """The optimizer fields of an ExperimentConfig (the real one imports every method: slow)."""
    fields = {"optimizer": optimizer, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
    fields |= {"rho": 0.0} | overrides
    assert set(fields) <= set(FIELD_TYPES)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    ("name", "kind", "rho", "closure_calls"),
    [
        ("sgd", torch.optim.SGD, None, 1),
        ("adamw", torch.optim.AdamW, None, 1),
        ("msam", MSAM, 3.0, 1),
        ("msam-adamw", MSAMAdamW, 3.0, 1),
        ("sam", SAM, 0.2, 2),
    ],
)
def test_build_optimizer_defaults_and_one_step_interface(name, kind, rho, closure_calls) -> None:
    params, groups = grouped_params()
    groups[1].pop("lr")  # this group takes config.lr
    optimizer = build_optimizer(optimizer_config(name, weight_decay=0.01), groups)
    assert type(optimizer) is kind
    assert [group["lr"] for group in optimizer.param_groups] == [LRS[0], 0.01]
    assert all(group["weight_decay"] == 0.01 for group in optimizer.param_groups)
    if rho is not None:
        assert all(group["rho"] == rho for group in optimizer.param_groups)
    if "adamw" in name:
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    else:
        assert optimizer.param_groups[0]["momentum"] == 0.9
    calls = []
    closure = closure_for(params, optimizer)
    loss = optimizer.step(lambda: calls.append(1) or closure())
    assert len(calls) == closure_calls and torch.is_tensor(loss)
    restore_unperturbed(optimizer)  # a no-op unless MSAM


def test_build_optimizer_takes_an_explicit_rho_and_rejects_loudly() -> None:
    assert perturbation_radius(optimizer_config("msam", rho=1.5)) == 1.5
    assert perturbation_radius(optimizer_config("sam")) == 0.2
    with pytest.raises(ConfigError, match="'rho'"):
        perturbation_radius(optimizer_config("sgd"))
    params, _ = grouped_params()
    for adam_form in ("adamw", "msam-adamw"):
        with pytest.raises(ConfigError, match="'momentum'"):
            build_optimizer(optimizer_config(adam_form, momentum=1.0), params)
    with pytest.raises(ConfigError, match="'optimizer'"):
        build_optimizer(optimizer_config("lion"), params)
    with pytest.raises(ValueError, match="closure"):
        SAM(params, lr=0.1).step()
    with pytest.raises(ValueError, match="rho"):
        MSAM(params, lr=0.1, rho=-1.0)


@pytest.mark.parametrize("make", [lambda p: MSAM(p, lr=0.1), lambda p: MSAMAdamW(p, lr=0.1)])
def test_an_msam_step_never_reads_a_tensor_back_to_the_host(make, monkeypatch) -> None:
    """No float(norm) or other device-to-host read per step (a sync on a GPU)."""
    params, _ = grouped_params()
    optimizer = make(params)
    closure = closure_for(params, optimizer)
    optimizer.step(closure)
    closure()

    def host_read(*args, **kwargs):
        raise AssertionError("a tensor was read back to the host during an MSAM step")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    optimizer.step()
    optimizer.move_to_unperturbed()
    optimizer.move_to_perturbed()
