"""The image encoder f of Littwin & Wolf 2019 (Sec. 4), shared by every single-image decoder.

A ResNet of pre-activation residual modules (He et al. 2016: norm-ReLU-conv, twice, plus the
identity or a strided 1x1 projection): a first 5x5 conv with N kernels, B blocks of 3 modules
(the first module of each block has stride 2 and doubles the width), global average pooling and K
fully connected layers; the embedding e has 16N entries.

Deviations (stated): the first conv has stride 2 (the paper does not say; it halves the cost on
137x137 inputs), and the FC layers are ReLU-separated with the last one linear.
"""

from __future__ import annotations

from torch import Tensor, nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """Norm layer over ``channels``: BatchNorm2d (``batch``), GroupNorm with the largest of 8/4/2/1
    groups dividing ``channels`` (``group``), else Identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class PreActModule(nn.Module):
    """norm-ReLU-conv3x3(stride)-norm-ReLU-conv3x3 + shortcut. (B,Cin,H,W) -> (B,Cout,H/stride,W/stride)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.n1, self.c1 = make_norm(norm, cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none")
        self.n2, self.c2 = make_norm(norm, cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=norm == "none")
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        """x (B,Cin,H,W) -> (B,Cout,H/stride,W/stride)."""
        h = nn.functional.relu(self.n1(x))
        s = x if self.short is None else self.short(h)
        h = self.c1(h)
        return s + self.c2(nn.functional.relu(self.n2(h)))


class ImageEncoder(nn.Module):
    """f: images (B,3,H,W) in [0,1] -> embedding (B, 16N)."""

    def __init__(self, width: int = 64, blocks: int = 5, fc_layers: int = 2, norm: str = "batch"):
        super().__init__()
        self.dim = 16 * width
        layers: list[nn.Module] = [nn.Conv2d(3, width, 5, 2, 2)]
        c = width
        for _ in range(blocks):
            layers += [PreActModule(c, 2 * c, 2, norm), PreActModule(2 * c, 2 * c, 1, norm),
                       PreActModule(2 * c, 2 * c, 1, norm)]
            c *= 2
        layers += [make_norm(norm, c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        for k in range(fc_layers):
            layers.append(nn.Linear(c if k == 0 else self.dim, self.dim))
            if k < fc_layers - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) in [0,1] (mapped to [-1,1]) -> embedding (B, 16N)."""
        return self.net(images * 2 - 1)


def build_encoder(cfg) -> ImageEncoder:
    """The :class:`ImageEncoder` of a field config's ``EncoderOptions`` (width, blocks, fc_layers, norm)."""
    return ImageEncoder(cfg.width, cfg.blocks, cfg.fc_layers, cfg.norm)
