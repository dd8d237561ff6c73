"""TempBalance: the Hill estimator, which layers take part, and the layer-wise rates."""

import math

import pytest
import torch
from torch import nn

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.optim.local_training import EXTRA_GROUP, LocalTraining
from multifcl.optim.tempbalance import TempBalance, hill_alpha, layer_parameter_groups


def weight_with_spectrum(eigenvalues: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """W = U diag(sqrt(eigenvalues)) V^T: the nonzero eigenvalues of W^T W are `eigenvalues`."""
    generator = torch.Generator().manual_seed(0)
    rank = len(eigenvalues)
    left, _ = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(columns, rank, generator=generator, dtype=torch.float64))
    return left @ torch.diag(eigenvalues.sqrt()) @ right.T


def geometric_spectrum(count: int, log_ratio: float) -> torch.Tensor:
    """l_k = exp(log_ratio * k): Hill alpha = 1 + 2 / ((n - 1) * log_ratio), n = count - count//2.

    Above l_i the logs grow by log_ratio a step: sum_{j>=i} ln(l_j / l_i) = log_ratio n(n-1)/2.
    """
    return torch.exp(log_ratio * torch.arange(count, dtype=torch.float64))


def test_hill_alpha_of_a_known_power_law_spectrum():
    # 80 x 100: W^T W has 80 nonzero eigenvalues (and 20 zeros the estimator leaves out)
    weight = weight_with_spectrum(geometric_spectrum(80, 0.1), rows=80, columns=100)
    tail = 80 - 80 // 2
    assert hill_alpha(weight) == pytest.approx(1 + 2 / ((tail - 1) * 0.1), abs=1e-6)
    assert hill_alpha(weight.T.contiguous()) == pytest.approx(hill_alpha(weight), abs=1e-9)


def official_hill_alpha(conv_weight: torch.Tensor) -> float:
    """TempBalance's published computation ('median' fit, conv_norm 0.5, no zero filter),
    written out from the paper's code: one (out x in) matrix per kernel position."""
    matrix = torch.flatten(conv_weight.detach().double(), start_dim=2) * math.sqrt(0.5)
    matrix = matrix.transpose(1, 2).transpose(0, 1)  # (k*k, out, in)
    eigs, _ = torch.sort(torch.square(torch.linalg.svdvals(matrix).flatten()))
    i = int(len(eigs) / 2)
    n = float(len(eigs) - i)
    logs = torch.log(eigs)
    return float(1 + n / (torch.sum(logs[i:]) - n * logs[i]))


def test_hill_alpha_of_a_3x3_conv_equals_the_official_per_kernel_computation():
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 16, kernel_size=3)
    nn.init.kaiming_normal_(conv.weight)
    with torch.no_grad():  # a heavier tail at one kernel position
        conv.weight[:, :, 1, 1] *= torch.logspace(0, 1, 24)
    assert hill_alpha(conv.weight) == pytest.approx(official_hill_alpha(conv.weight), rel=1e-9)
    # not the (out, in * k * k) reading: that spectrum has 16 eigenvalues, this one 9 x 16
    assert hill_alpha(conv.weight) != pytest.approx(hill_alpha(conv.weight.flatten(1)), rel=1e-3)


def test_a_3x3_conv_counts_its_eigenvalues_per_kernel_position():
    narrow = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(8, 8, 3), nn.Linear(8, 8))
    groups = layer_parameter_groups(narrow)
    assert [g["tb_eligible"] for g in groups] == [False, True, False]  # 9 x 8 = 72 >= 50
    depthwise = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(64, 64, 5, groups=64), nn.Linear(8, 8))
    assert not layer_parameter_groups(depthwise)[1]["tb_eligible"]  # 25 x 1 eigenvalues


def test_a_batch_norm_after_a_layer_takes_that_layers_group():
    model = nn.Sequential(
        nn.Conv2d(3, 64, 1),
        nn.BatchNorm2d(64),
        nn.Conv2d(64, 64, 1),
        nn.BatchNorm2d(64),
        nn.LayerNorm(64),
        nn.BatchNorm2d(64),
        nn.Linear(64, 10),
    )
    groups = {g["layer"]: g["params"] for g in layer_parameter_groups(model)}
    assert groups["0"] == [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    assert groups["2"][2:] == [model[3].weight, model[3].bias]
    # a BatchNorm after anything but a layer keeps rate 1, with the other norms
    assert groups["other"] == [model[4].weight, model[4].bias, model[5].weight, model[5].bias]


def test_flat_spectrum_has_infinite_alpha():
    assert hill_alpha(torch.zeros(60, 60)) == math.inf


def layered_model() -> nn.Sequential:
    """first, three eligible layers with known alphas, a rank-8 adapter pair, a norm, last."""
    model = nn.Sequential(
        nn.Linear(64, 64),
        nn.Linear(64, 64),
        nn.Linear(64, 64),
        nn.Linear(64, 64),
        nn.Linear(64, 8),
        nn.Linear(8, 64),
        nn.LayerNorm(64),
        nn.Linear(64, 10),
    )
    with torch.no_grad():
        for index, log_ratio in ((1, 0.2), (2, 0.05), (3, 0.1)):  # alphas: low, high, middle
            spectrum = geometric_spectrum(64, log_ratio)
            model[index].weight.copy_(weight_with_spectrum(spectrum, 64, 64))
    return model


def test_groups_cover_every_trainable_parameter_once_and_skip_first_last_and_small():
    model = layered_model()
    model[5].requires_grad_(False)
    groups = layer_parameter_groups(model)
    assert [g["layer"] for g in groups] == ["0", "1", "2", "3", "4", "7", "other"]
    eligible = {g["layer"] for g in groups if g["tb_eligible"]}
    assert eligible == {"1", "2", "3"}
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert all(g["params"][0] is model[int(g["layer"])].weight for g in groups[:-1])


def test_factors_follow_alpha_within_bounds_and_set_the_rates():
    model = layered_model()
    balance = TempBalance(model, tb_min=0.5, tb_max=1.5)
    optimizer = torch.optim.SGD(balance.param_groups(base_lr=0.1), lr=0.1)
    factors = balance.factors
    assert balance.alphas["2"] > balance.alphas["3"] > balance.alphas["1"]
    assert factors["1"] == pytest.approx(0.5) and factors["2"] == pytest.approx(1.5)
    assert 0.5 < factors["3"] < 1.5
    balance.update(optimizer, base_lr=0.01)
    rates = {g["layer"]: g["lr"] for g in optimizer.param_groups}
    expected = {"0": 0.01, "4": 0.01, "5": 0.01, "7": 0.01, "other": 0.01}
    expected |= {name: 0.01 * factors[name] for name in ("1", "2", "3")}
    assert rates == pytest.approx(expected)


def test_equal_alphas_give_factor_one():
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(4)))
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(weight_with_spectrum(geometric_spectrum(64, 0.1), 64, 64))
    assert TempBalance(model).compute_factors() == pytest.approx({"1": 1.0, "2": 1.0})


def test_no_eligible_layer_is_a_one_line_error_naming_lr_schedule():
    adapters_and_prototypes = nn.ModuleDict(
        {
            "down": nn.Linear(192, 8),
            "up": nn.Linear(8, 192),
            "middle": nn.Linear(192, 8),
            "head": nn.Linear(192, 10),
        }
    )
    adapters_and_prototypes.register_parameter("prototypes", nn.Parameter(torch.randn(10, 192)))
    with pytest.raises(ConfigError) as caught:
        TempBalance(adapters_and_prototypes)
    message = str(caught.value)
    assert "'lr-schedule'" in message and "\n" not in message


def test_local_training_balances_extra_modules_as_layers_and_keeps_tensors_at_one():
    config = ExperimentConfig(lr_schedule="tempbalance")
    projections = [nn.Linear(64, 64) for _ in range(4)]  # ETF projections beside the module
    prototypes = nn.Parameter(torch.randn(10, 64))
    training = LocalTraining(config, nn.Module(), 1, extra=[*projections, prototypes])
    layers = {group["layer"]: group for group in training.optimizer.param_groups}
    assert [layers[f"{i}"]["params"][0] for i in (1, 2, 3, 4)] == [p.weight for p in projections]
    assert layers[EXTRA_GROUP]["params"] == [prototypes]
    assert set(training.balance.eligible) == {"2", "3"}  # first and last excluded
    # extra layers none of which is eligible: plain cosine, as when only prototypes train
    small = LocalTraining(config, nn.Module(), 1, extra=[nn.Linear(8, 8), prototypes])
    assert small.balance is None
