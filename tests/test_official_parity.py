"""Preconditioners, losses, EMA and augmentation against numbers from the official EDM code.

Every number below was computed once from NVlabs/edm at commit 008a4e5 by a throwaway script
outside this repository (the code is under a non-commercial licence and is not in edmgrid):

- ``training/networks.py``: VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond (σ_data 0.5 and
  0.75) wrapped around a stub model that records its input (c_in·x with x = 1, and c_noise) and
  returns 0 (so D = c_skip) or 1 (so D − c_skip = c_out), at ``SIGMAS``; their float32
  ``sigma_min``/``sigma_max``; iDDPM's ``u`` buffer.
- ``training/loss.py``: VPLoss, VELoss, EDMLoss with their random draw forced (u for VP/VE, z for
  EDM), zero noise and a net with D − y = 1, so the returned loss is λ(σ) at the σ it drew; and
  quantiles of ln σ over 200,000 draws of ``torch.manual_seed(0)``.
- ``training/training_loop.py``: its four EMA lines executed for the settings in ``EMA``.
- ``training/augment.py``: AugmentPipe(p=1, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
  translate_frac=1) with its draws forced to one transform per image (``AUGMENT``), on the
  smooth 8×8 test image of ``_image``.

The official code computes in float32; tolerances are float32's unless a test says otherwise.
"""

from __future__ import annotations

import pytest
import torch

from edmgrid.design.augment import EDMAugment, labels
from edmgrid.design.loss_weight import loss_weights
from edmgrid.design.p_train import p_trains
from edmgrid.design.precond import preconds
from edmgrid.engine.train import update_ema

SIGMAS = [0.002, 0.02, 0.1, 0.5, 1.0, 2.5, 10.0, 80.0]

#: c_in = 1/√(σ² + 1) at SIGMAS (official VPPrecond and iDDPMPrecond, float32; Table 1).
UNIT_C_IN = [0.99999797, 0.99980015, 0.99503714, 0.89442718, 0.70710677, 0.37139067, 0.09950373,
             0.01249902]  # fmt: skip

#: (c_skip, c_out, c_in, c_noise) at SIGMAS, per preconditioner (official, float32).
PRECOND = {
    "vp": (
        [1.0] * 8,
        [-0.002, -0.02, -0.1, -0.5, -1.0, -2.5, -10.0, -80.0],
        UNIT_C_IN,
        [0.0403283, 3.0612812, 26.967937, 144.66911, 258.70132, 440.76328, 675.36890, 932.57764],
    ),
    "ve": (
        [1.0] * 8,
        [0.002, 0.02, 0.1, 0.5, 1.0, 2.5, 10.0, 80.0],
        [1.0] * 8,
        [
            -6.9077554,
            -4.6051702,
            -2.9957323,
            -1.3862944,
            -0.6931472,
            0.2231435,
            1.6094379,
            3.6888795,
        ],
    ),
    "iddpm": (
        [1.0] * 8,
        [-0.002, -0.02, -0.1, -0.5, -1.0, -2.5, -10.0, -80.0],
        UNIT_C_IN,
        [-1.0, 6.0, 55.0, 289.0, 495.0, 755.0, 935.0, 991.0],
    ),
    "edm": (
        [0.99998403, 0.99840254, 0.96153849, 0.5, 0.2, 0.03846154, 0.00249377, 3.9060975e-05],
        [0.002, 0.01998407, 0.09805804, 0.35355341, 0.44721359, 0.49029037, 0.49937615, 0.49999020],
        [
            1.99998403,
            1.99840176,
            1.96116138,
            1.41421354,
            0.89442718,
            0.39223227,
            0.09987523,
            0.01249976,
        ],
        [-1.5536520, -0.9780058, -0.5756463, -0.1732868, 0.0, 0.2290727, 0.5756463, 1.0955067],
    ),
    "edm_0.75": (
        [
            0.99999291,
            0.99928933,
            0.98253280,
            0.69230771,
            0.36,
            0.08256880,
            0.00559354,
            8.7882901e-05,
        ],
        [0.002, 0.01999289, 0.09912282, 0.41602516, 0.6, 0.71836972, 0.74789947, 0.74996704],
        [1.33332860, 1.33285952, 1.32163727, 1.10940039, 0.8, 0.38313052, 0.09971993, 0.01249945],
        [-1.5536520, -0.9780058, -0.5756463, -0.1732868, 0.0, 0.2290727, 0.5756463, 1.0955067],
    ),
}


def _precond(name: str):
    if name == "edm_0.75":
        return preconds["edm"](sigma_data=0.75)
    return preconds[name]()


@pytest.mark.parametrize("name", list(PRECOND))
def test_preconditioner_coefficients_match_the_official_networks(name):
    sigma = torch.tensor(SIGMAS, dtype=torch.float32)  # both networks cast σ to float32
    ours = _precond(name).coefficients(sigma)
    names = ("c_skip", "c_out", "c_in", "c_noise")
    for label, got, want in zip(names, ours, PRECOND[name], strict=True):
        expected = torch.tensor(want, dtype=torch.float32)
        torch.testing.assert_close(got, expected, rtol=2e-6, atol=1e-6, msg=label)


def test_network_sigma_ranges_are_the_official_float32_values():
    # VPPrecond.sigma_min = float(σ(1e-5)) in float32: exp(1.000001e-6) − 1 rounds to 2⁻²⁰.
    assert preconds["vp"]().sigma_range() == (0.0009765625, 152.16697692871094)
    assert preconds["iddpm"]().sigma_range() == (0.006422337144613266, 20291.171875)
    u = preconds["iddpm"]().u()
    assert [float(u[j]) for j in (0, 1, 8, 500, 998, 999, 1000)] == [
        20291.171875,
        641.6624145507812,
        80.2037124633789,
        1.0123894214630127,
        0.009347748942673206,
        0.006422337144613266,
        0.0,
    ]


#: name: (λ's σ_data, σ drawn by the official loss, its λ(σ)).
LOSS = {
    "vp": (
        None,
        [152.16698, 17.017338, 3.4130113, 0.95374888, 0.010540543],
        [4.3187611e-05, 0.0034531604, 0.085846886, 1.0993397, 9000.6533],
    ),
    "ve": (
        None,
        [0.02, 0.16817927, 1.4142135, 11.892072, 99.151901],
        [2500.0, 35.355343, 0.50000006, 0.0070710671, 0.00010171802],
    ),
    "edm": (
        0.5,
        [0.027323719, 0.090717942, 0.30119419, 1.0, 3.3201170],
        [1343.4312, 125.51044, 15.023178, 5.0, 4.0907178],
    ),
    "edm_0.75": (
        0.75,
        [0.027323719, 0.090717942, 0.30119419, 1.0, 3.3201170],
        [1341.2090, 123.28822, 12.800956, 2.7777777, 1.8684957],
    ),
}


@pytest.mark.parametrize("name", list(LOSS))
def test_loss_weight_matches_the_official_losses(name):
    sigma_data, sigma, weight = LOSS[name]
    choice = loss_weights[name.split("_")[0]]
    weight_fn = choice() if sigma_data is None else choice(sigma_data=sigma_data)
    got = weight_fn(torch.tensor(sigma, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(weight, dtype=torch.float64), rtol=1e-6, atol=0)


#: Quantiles (10, 25, 50, 75, 90%) of ln σ over 200,000 official draws, and their mean and std.
P_TRAIN = {
    "vp": ([-1.07995, -0.05258, 1.22006, 2.82194, 4.0725], 1.33387, 1.93226),
    "ve": ([-3.05443, -1.78256, 0.34563, 2.47787, 3.75297], 0.34773, 2.45735),
    "edm": ([-2.73959, -2.00869, -1.20267, -0.39396, 0.33593], -1.20264, 1.20025),
}


@pytest.mark.parametrize("name", list(P_TRAIN))
def test_p_train_draws_have_the_official_distribution_of_ln_sigma(name):
    quantiles, mean, std = P_TRAIN[name]
    log_sigma = p_trains[name]().sample(200_000, torch.Generator().manual_seed(7)).double().log()
    got = torch.quantile(log_sigma, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64))
    # Two independent 200k samples: a quantile's standard error is ≲ 0.012·std of ln σ here.
    tolerance = 0.03 * std
    assert got.tolist() == pytest.approx(quantiles, abs=tolerance)
    assert float(log_sigma.mean()) == pytest.approx(mean, abs=tolerance)
    assert float(log_sigma.std()) == pytest.approx(std, rel=0.01)


#: (half-life kimg, ramp-up ratio, images before the step, batch) → official β.
EMA = [
    (500, 0.05, 0, 512, 0.0),
    (500, 0.05, 512, 512, 9.5367431640625e-07),
    (500, 0.05, 1_000_000, 512, 0.9929273029545619),
    (500, 0.05, 20_000_000, 512, 0.9992904691232699),
    (500, None, 0, 512, 0.9992904691232699),
    (2.5, 0.05, 6400, 128, 0.757858283255199),
    (2.5, 0.05, 49_920, 128, 0.9650783306691824),
    (4.45, 0.05, 49_984, 32, 0.9911641437074284),
    (0.125, 0.05, 49_920, 128, 0.49175103701312417),
]


@pytest.mark.parametrize(("halflife", "ratio", "seen", "batch", "beta"), EMA)
def test_ema_step_moves_by_the_official_beta(halflife, ratio, seen, batch, beta):
    net = torch.nn.Linear(1, 1, bias=False).double()
    ema = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    update_ema(ema, net, halflife, ratio, seen=seen, batch=batch)
    assert 1 - float(ema.weight.detach()) == pytest.approx(beta, rel=1e-12, abs=1e-15)


def _image() -> torch.Tensor:
    """A smooth asymmetric 8×8 image, repeated for the six images of ``AUGMENT``."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    img = torch.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.3) + 0.5 * x * y
    return img.expand(6, 1, 8, 8).clone()


#: Per image: our parameters a (only the nonzero ones), the official labels (nonzero ones), and
#: the official output's row 3 and column 4; the last item is the tolerance against ours.
AUGMENT = [
    (
        {0: 1.0},
        {0: 1.0},
        [0.12174, 0.5072, 0.90553, 0.90081, 0.52467, 0.1992, 0.08308, 0.07497],
        [0.13303, 0.2664, 0.46758, 0.52467, 0.34128, 0.10874, -0.01896, -0.06715],
        2e-5,
    ),
    (
        {1: 1.0},
        {1: 1.0},
        [-0.06901, -0.02912, 0.08457, 0.34128, 0.63262, 0.6702, 0.43241, 0.2034],
        [0.07901, 0.10779, 0.27738, 0.63262, 0.90081, 0.74317, 0.33036, 0.03765],
        2e-5,
    ),
    (
        {3: 0.7},
        {3: -0.23515791, 4: 0.64421779},
        [0.2677, 0.23082, 0.387, 0.70067, 0.84548, 0.63824, 0.36718, 0.2827],
        [0.00482, 0.51883, 0.90516, 0.84548, 0.44001, 0.08862, -0.09569, -0.2448],
        0.03,
    ),
    (
        {2: 1.0},
        {2: 1.0},
        [0.06596, 0.09704, 0.24496, 0.54393, 0.8701, 0.91538, 0.65595, 0.22918],
        [0.12312, 0.47441, 0.77953, 0.8701, 0.63878, 0.32973, 0.1398, 0.07498],
        0.005,
    ),
    (
        {4: 0.5, 5: 1.0},
        {5: 0.87758261, 6: 0.47942540},
        [0.13754, 0.12099, 0.22087, 0.51484, 0.8677, 0.90266, 0.59833, 0.21552],
        [0.11956, 0.26336, 0.67188, 0.8677, 0.6006, 0.25036, 0.12667, 0.13479],
        0.005,
    ),
    (
        {6: 0.5, 7: -0.25},
        {7: 0.5, 8: -0.25},
        [0.04208, 0.04208, 0.09383, 0.30759, 0.69228, 0.91635, 0.7237, 0.25841],
        [0.12075, 0.39225, 0.67264, 0.69228, 0.42018, 0.1506, 0.03084, 0.01101],
        2e-5,
    ),
]


def test_augmentation_labels_and_images_match_the_official_pipe():
    """x/y-flips, isotropic scale (a2 = 1), rotation (0.7 rad), anisotropy (a5 = 1 at angle ½)
    and translation (½ px right, ¼ px up) one per image. Flips and translation match to float32;
    our warps place the sym6 2× samples at the filter's centroid where StyleGAN2-ADA uses 0.5
    (``augment.DELAY``), which moves rotated content by a fraction of a pixel: 0.026 at most here
    for values in [−0.25, 0.9], 0.004 for scale and anisotropy."""
    a = torch.zeros(6, 8)
    for i, (params, *_rest) in enumerate(AUGMENT):
        for k, v in params.items():
            a[i, k] = v
    out = EDMAugment(p=1.0).apply(_image(), a)
    got_labels = labels(a)
    for i, (_params, official_labels, row, col, tol) in enumerate(AUGMENT):
        want = torch.zeros(9)
        for k, v in official_labels.items():
            want[k] = v
        torch.testing.assert_close(got_labels[i], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(out[i, 0, 3], torch.tensor(row), rtol=0, atol=tol)
        torch.testing.assert_close(out[i, 0, :, 4], torch.tensor(col), rtol=0, atol=tol)
