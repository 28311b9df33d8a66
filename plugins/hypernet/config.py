"""Config of the ``hypernet`` field (no torch import)."""

from __future__ import annotations

from pydantic import Field

from plugins.shapes.config import EncoderOptions


class HypernetConfig(EncoderOptions):
    """Deep meta functionals (Littwin & Wolf 2019): f(image) -> weights of the occupancy MLP g (Eq. 2, 4)."""

    g_widths: list[int] = Field([32, 32, 32, 32], min_length=1,
                                description="hidden widths of g: 3 -> widths -> 1 (paper: 32,32,32,32)")
    scale: bool = Field(True, description="per-coordinate scale s in y = (W x) * s + b (Eq. 4)")
