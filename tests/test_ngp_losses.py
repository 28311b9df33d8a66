"""The backend's total-variation loss: its in-place block gradient equals autograd's, bit for bit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline import distributed
from plugins.ngp.config import DenseGridConfig, TVConfig
from plugins.ngp.fields import DenseGridField
from plugins.ngp.losses import TotalVariation


def _field(resolution: int = 24) -> DenseGridField:
    torch.manual_seed(0)
    field = DenseGridField(DenseGridConfig(resolution=resolution, features=4),
                           torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
    with torch.no_grad():
        field.grid.params.normal_()
    return field


def _grad(field: DenseGridField, tv: TotalVariation, *, block_path: bool, render: bool,
          monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(TV value, the grid's gradient) of ``TV [+ mean density at 512 points]``, by the chosen path."""
    with monkeypatch.context() as m:
        if not block_path:
            m.setattr(TotalVariation, "_block_gradient_ok", staticmethod(lambda f: False))
        field.grid.params.grad = None
        torch.manual_seed(1)
        x = torch.rand(512, 3) * 2 - 1
        value = tv({}, {}, SimpleNamespace(chain=SimpleNamespace(field=field)))
        total = value + (field(x)["density"].mean() if render else 0.0)
        total.backward()
    grad = field.grid.params.grad
    return value.detach(), None if grad is None else grad.clone()


@pytest.mark.parametrize("density_only", [False, True])
@pytest.mark.parametrize("render", [True, False], ids=["with-render-term", "tv-alone"])
def test_tv_block_gradient_equals_autograd(density_only, render, monkeypatch):
    field = _field()
    tv = TotalVariation(TVConfig(weight=0.5, block=8, density_only=density_only))
    fast_value, fast = _grad(field, tv, block_path=True, render=render, monkeypatch=monkeypatch)
    slow_value, slow = _grad(field, tv, block_path=False, render=render, monkeypatch=monkeypatch)
    assert fast_value.item() > 0
    torch.testing.assert_close(fast_value, slow_value, rtol=1e-6, atol=0)
    assert torch.equal(fast, slow)
    if not render:  # the block was penalised: voxels got a gradient, features only without density_only
        table_grad = fast.view(25, 25, 25, -1)
        assert (table_grad != 0).any()
        assert (table_grad[..., 1:] != 0).any() != density_only


def test_tv_block_gradient_accumulates_over_two_backward_passes(monkeypatch):
    """Gradient accumulation (two backward passes without zero_grad) adds the block twice, like autograd."""
    field = _field()
    tv = TotalVariation(TVConfig(weight=1.0, block=6))
    grads = []
    for block_path in (True, False):
        with monkeypatch.context() as m:
            if not block_path:
                m.setattr(TotalVariation, "_block_gradient_ok", staticmethod(lambda f: False))
            field.grid.params.grad = None
            torch.manual_seed(3)
            for _ in range(2):
                tv({}, {}, SimpleNamespace(chain=SimpleNamespace(field=field))).backward()
        grads.append(field.grid.params.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_tv_keeps_autograd_under_ddp_and_without_grad(monkeypatch):
    """Several processes: the gradient must flow through autograd so DDP averages it."""
    field = _field()
    tv = TotalVariation(TVConfig(block=6))
    calls = []
    monkeypatch.setattr(TotalVariation, "_tv_block_gradient", lambda self, f: calls.append(1) or torch.zeros(()))
    monkeypatch.setattr(distributed, "current", lambda: SimpleNamespace(world_size=2))
    system = SimpleNamespace(chain=SimpleNamespace(field=field))
    assert tv({}, {}, system).requires_grad
    monkeypatch.setattr(distributed, "current", lambda: SimpleNamespace(world_size=1))
    with torch.no_grad():
        assert not tv({}, {}, system).requires_grad
    assert calls == []
    tv({}, {}, system)
    assert calls == [1]
