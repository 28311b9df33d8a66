"""hypernet: the weights g receives, g's functional form (Eq. 4), gradients, the current embedding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.types import NLSError
from plugins.hypernet.config import HypernetConfig
from plugins.hypernet.hypernet import HypernetField

SMALL = dict(width=4, blocks=2, fc_layers=2, norm="group")


def test_generated_weights_have_exactly_the_shapes_g_needs():
    f = HypernetField(HypernetConfig(**SMALL))
    e = torch.randn(5, f.embedding_dim)
    ws = f.weights(e)
    dims = [3, 32, 32, 32, 32, 1]
    assert len(ws) == 5
    for (W, b, s), i, o in zip(ws, dims[:-1], dims[1:]):
        assert W.shape == (5, o, i) and b.shape == (5, o) and s.shape == (5, o)
    assert f.embedding_dim == 16 * 4


def test_g_has_no_parameters_and_gradients_reach_f():
    f = HypernetField(HypernetConfig(**SMALL))
    assert list(f.g.parameters()) == [] and list(f.g.buffers()) == []
    imgs = torch.rand(3, 3, 32, 32)
    x = torch.rand(3, 100, 3) - 0.5
    loss = nn.functional.binary_cross_entropy_with_logits(f.logits(x, f.encode(imgs)), (x.norm(dim=-1) < 0.3).float())
    loss.backward()
    for name, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(n.startswith("encoder.") for n, _ in f.named_parameters())


def test_g_computes_eq4_with_elu():
    """Reference: per item, y = (W x) * s + b with explicit loops, ELU between layers, sigmoid at the end."""
    f = HypernetField(HypernetConfig(**SMALL))
    e = torch.randn(2, f.embedding_dim)
    x = torch.rand(2, 7, 3) - 0.5
    ws = f.weights(e)
    for bi in range(2):
        h = x[bi]
        for j, (W, b, s) in enumerate(ws):
            h = torch.stack([(W[bi] @ p) * s[bi] + b[bi] for p in h])
            if j < len(ws) - 1:
                h = torch.where(h > 0, h, torch.exp(h) - 1)
        torch.testing.assert_close(f.occupancy(x, e)[bi], torch.sigmoid(h[:, 0]), rtol=1e-5, atol=1e-6)


def test_scale_can_be_disabled_and_widths_configured():
    f = HypernetField(HypernetConfig(**SMALL, g_widths=[16, 8], scale=False))
    ws = f.weights(torch.randn(1, f.embedding_dim))
    assert [w[0].shape[1:] for w in ws] == [(16, 3), (8, 16), (1, 8)]
    assert all(torch.equal(s, torch.ones_like(s)) for _, _, s in ws)


def test_forward_without_an_embedding_is_a_clear_error():
    f = HypernetField(HypernetConfig(**SMALL))
    with pytest.raises(NLSError, match="no current embedding"):
        f(torch.zeros(4, 3))
    f.set_embedding(torch.zeros(f.embedding_dim))
    assert f(torch.zeros(4, 3))["occupancy"].shape == (4,)
    with pytest.raises(NLSError, match="needs 64"):
        f.set_embedding(torch.zeros(3))


def test_chain_check_refuses_hypernet_on_an_image_scene_and_wrong_losses():
    import copy

    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.types import ConfigError

    host = plugin_host()
    data = copy.deepcopy(TINY_SCENE)
    data["field"] = {"type": "hypernet"}
    with pytest.raises(ConfigError, match="field 'hypernet' needs shapes"):
        validate(data, host)
    data = {"scene": {"type": "shape_families"}, "field": {"type": "hypernet"}, "losses": [{"type": "voxel_ce"}]}
    with pytest.raises(ConfigError, match="loss 'voxel_ce' needs occupancy_grid\\+shapes"):
        validate(data, host)
