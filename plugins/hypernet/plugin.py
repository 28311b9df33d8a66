"""Hook implementations of the built-in plugin ``hypernet``: the image -> weights occupancy field.
Train it with the ``point_occupancy_ce`` loss (Eq. 3) and evaluate with ``shape_iou`` (plugin shapes)."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.hypernet.config import HypernetConfig


@hookimpl
def nls_register_fields(register):
    register("hypernet", "plugins.hypernet.hypernet:build_hypernet", config=HypernetConfig,
             consumes=["shapes"], produces={"occupancy", "embedding"}, description=HypernetConfig.__doc__)
