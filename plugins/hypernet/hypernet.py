"""Deep Meta Functionals for Shape Representation (Littwin & Wolf, ICCV 2019).

The encoder f (:class:`plugins.shapes.encoder.ImageEncoder`, Sec. 4) maps an image I to an
embedding e. One group of linear heads per layer j of g emits that layer's weight matrix W_j,
bias b_j and scale s_j from e (Sec. 3, Eq. 2: theta_I = f(I)). g is an MLP 3 -> 32 -> 32 -> 32 ->
32 -> 1 with ELU activations; each layer computes (Eq. 4)

    y = ((W_j x) * s_j) + b_j          (s_j: one scale per output coordinate)

and the sigmoid of the last layer is the occupancy g(p; theta_I) in [0, 1]. g holds no parameters:
every weight comes from f. Training minimises the cross-entropy of Eq. 3 over sampled points
(:class:`plugins.shapes.losses.PointOccupancyCE`).

Initialisation (stated, not from the paper): the heads are initialised so that the generated W_j
has variance ~ 1/fan_in of layer j when e has unit second moment ("hyperfan-in", Chang et al.
2020); the scale heads' biases start at 1 and the bias heads' at 0, with small weights (std
sqrt(0.1 / dim)), so s starts near 1 and b near 0 (std about 0.32 for unit-moment e).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from plugins.shapes.conditional import ConditionalField
from plugins.shapes.encoder import build_encoder


class FunctionalMLP(nn.Module):
    """g: applies layers given as tensors. It has no parameters of its own.

    ``forward(x (B,N,3), weights [(W (B,out,in), b (B,out), s (B,out)), ...]) -> logits (B,N)``.
    """

    def __init__(self, widths: list[int]):
        super().__init__()
        self.dims = [3, *widths, 1]

    def shapes(self) -> list[tuple[tuple[int, int], tuple[int], tuple[int]]]:
        """Per layer: the shapes of W, b, s (without the batch dimension)."""
        return [((o, i), (o,), (o,)) for i, o in zip(self.dims[:-1], self.dims[1:])]

    def forward(self, x: Tensor, weights) -> Tensor:
        """x (B,N,3), weights [(W (B,out,in), b (B,out), s (B,out))] per layer -> logits (B,N);
        ELU between layers."""
        h = x
        for j, (W, b, s) in enumerate(weights):
            h = torch.einsum("bni,boi->bno", h, W) * s[:, None] + b[:, None]  # Eq. 4
            if j < len(weights) - 1:
                h = nn.functional.elu(h)
        return h[..., 0]


class WeightHeads(nn.Module):
    """e (B,E) -> [(W, b, s)] for every layer of g (one Linear head per tensor)."""

    def __init__(self, dim: int, g: FunctionalMLP, scale: bool = True):
        super().__init__()
        self.g_shapes = g.shapes()
        self.scale = scale
        self.w, self.b, self.s = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for (o, i), _, _ in self.g_shapes:
            hw, hb = nn.Linear(dim, o * i), nn.Linear(dim, o)
            nn.init.normal_(hw.weight, 0.0, math.sqrt(1.0 / (dim * i)))
            nn.init.zeros_(hw.bias)
            nn.init.normal_(hb.weight, 0.0, math.sqrt(0.1 / dim))
            nn.init.zeros_(hb.bias)
            self.w.append(hw)
            self.b.append(hb)
            if scale:
                hs = nn.Linear(dim, o)
                nn.init.normal_(hs.weight, 0.0, math.sqrt(0.1 / dim))
                nn.init.ones_(hs.bias)
                self.s.append(hs)

    def forward(self, e: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """e (B,E) -> [(W (B,o,i), b (B,o), s (B,o))] per layer of g (s = 1 without ``scale``)."""
        out = []
        for j, ((o, i), _, _) in enumerate(self.g_shapes):
            W = self.w[j](e).reshape(-1, o, i)
            b = self.b[j](e)
            s = self.s[j](e) if self.scale else torch.ones_like(b)
            out.append((W, b, s))
        return out


class HypernetField(ConditionalField):
    """Image-conditioned occupancy field: encoder f, weight heads, parameter-free g."""

    def __init__(self, cfg, ctx=None):
        super().__init__(build_encoder(cfg), ctx)
        self.g = FunctionalMLP(list(cfg.g_widths))
        self.heads = WeightHeads(self.encoder.dim, self.g, cfg.scale)

    def weights(self, e: Tensor):
        """The weights g receives for embeddings e (B,E): [(W (B,o,i), b (B,o), s (B,o))] per layer."""
        return self.heads(e)

    def logits(self, x: Tensor, e: Tensor) -> Tensor:
        """g with the weights generated from e. x (B,N,3), e (B,E) -> logits (B,N)."""
        return self.g(x, self.weights(e))


def build_hypernet(cfg, ctx):
    """Build the hypernet field from its ``field:`` block (``HypernetConfig``)."""
    return HypernetField(cfg, ctx)
