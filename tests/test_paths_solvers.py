"""Numbers against known answers: the path algebra and the ODE solvers."""

import math

import pytest
import torch

from slimstep import paths
from slimstep.solvers import guided, integrate


def test_path_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = torch.rand(5, generator=g) * 0.9
    xt = paths.interpolate(x0, x1, t)
    v = paths.target_velocity(x0, x1)
    torch.testing.assert_close(paths.x1_from_velocity(xt, v, t), x1)
    torch.testing.assert_close(paths.x0_from_velocity(xt, v, t), x0)
    torch.testing.assert_close(paths.velocity_from_x1(xt, x1, t), v)
    # endpoints: t = 0 is noise, t = 1 is data
    torch.testing.assert_close(paths.interpolate(x0, x1, torch.zeros(5)), x0)
    torch.testing.assert_close(paths.interpolate(x0, x1, torch.ones(5)), x1)


def test_sigma_time_map_inverts():
    t = torch.linspace(0.05, 0.95, 7)
    torch.testing.assert_close(paths.t_from_sigma(paths.sigma_from_t(t)), t)
    assert float(paths.sigma_from_t(torch.tensor(1 / 81))) == pytest.approx(80.0)


def test_edm_adapter_gives_the_linear_path_velocity():
    """An ideal EDM denoiser for a single data point c returns c; the wrapped
    velocity must then be the linear-path velocity (c - x_t) / (1 - t)."""
    c = torch.tensor([[0.3, -0.7]])

    class PointDenoiser(torch.nn.Module):
        def forward(self, x, sigma, y=None):
            return c.expand_as(x)

    v = paths.EDMVelocity(PointDenoiser())
    x, t = torch.randn(4, 2), torch.full((4,), 0.4)
    torch.testing.assert_close(v(x, t), (c - x) / 0.6)


def gaussian_velocity(mu: float, s: float):
    r"""Exact marginal velocity of the linear path from N(0,1) to N(mu, s^2):
    v(x, t) = mu + (t s^2 - (1 - t)) / sigma_t^2 * (x - t mu), sigma_t^2 = t^2 s^2 + (1-t)^2.
    Its flow maps z at t = 0 to mu + s z at t = 1."""
    def v(x, t):
        tb = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        var = tb**2 * s**2 + (1 - tb) ** 2
        return mu + (tb * s**2 - (1 - tb)) / var * (x - tb * mu)
    return v


@pytest.mark.parametrize("solver,steps,tol", [("euler", 400, 5e-3), ("heun", 100, 1e-4),
                                              ("dopri5", 0, 1e-4)])
def test_analytic_field_integrates_to_known_endpoint(solver, steps, tol):
    mu, s = 1.5, 0.5
    z = torch.linspace(-2, 2, 9, dtype=torch.float64).reshape(-1, 1)
    x, nfe = integrate(gaussian_velocity(mu, s), z, solver=solver, steps=max(steps, 1))
    assert (x - (mu + s * z)).abs().max() < tol
    if solver == "euler":
        assert nfe == steps
    elif solver == "heun":
        assert nfe == 2 * steps
    else:
        assert nfe > 6  # adaptive: at least one dopri5 step of 6 stages


def test_heun_is_second_order_and_euler_first_order():
    v = lambda x, t: x * torch.cos(t).reshape(-1, 1)  # dx/dt = cos(t) x -> x(1) = z e^{sin 1}
    z = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(math.sin(1.0))
    err = {(s, n): abs(float(integrate(v, z, solver=s, steps=n)[0]) - exact)
           for s in ("euler", "heun") for n in (10, 20)}
    assert 1.8 < err["euler", 10] / err["euler", 20] < 2.2
    assert 3.6 < err["heun", 10] / err["heun", 20] < 4.4


def test_one_euler_step_is_z_plus_v0():
    v = lambda x, t: 2 * x + t.reshape(-1, 1)
    z = torch.randn(3, 2)
    x, nfe = integrate(v, z, solver="euler", steps=1)
    torch.testing.assert_close(x, z + 2 * z)
    assert nfe == 1


def test_classifier_free_guidance_combines_fields():
    def net(x, t, y):  # conditional field y, null class 9 gives 0
        return torch.where((y == 9)[:, None], torch.zeros_like(x), y[:, None].float().expand_as(x))
    y = torch.tensor([1, 2])
    v = guided(net, y, scale=3.0, null_class=9)
    out = v(torch.zeros(2, 2), torch.zeros(2))
    torch.testing.assert_close(out, torch.tensor([[3.0, 3.0], [6.0, 6.0]]))


def test_unknown_solver_is_an_error():
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, torch.zeros(1, 1), solver="rk4")
