"""Hook implementations of the built-in plugin ``deep_level_sets``: the image -> phi-grid field and the
level-set losses (smoothed Heaviside, smoothed Dirac, eikonal)."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.deep_level_sets import config as C

M = "plugins.deep_level_sets"


@hookimpl
def nls_register_fields(register):
    register("deep_level_sets", f"{M}.field:build_level_set_field", config=C.LevelSetFieldConfig,
             consumes=["shapes"], produces={"sdf", "occupancy", "embedding", "phi_grid"},
             description=C.LevelSetFieldConfig.__doc__)


@hookimpl
def nls_register_losses(register):
    register("level_set_occupancy", f"{M}.losses:build_heaviside", config=C.HeavisideLossConfig,
             consumes=[{"shapes", "phi_grid"}], description=C.HeavisideLossConfig.__doc__)
    register("level_set_surface", f"{M}.losses:build_dirac", config=C.DiracLossConfig,
             consumes=[{"shapes", "phi_grid"}], description=C.DiracLossConfig.__doc__)
    register("level_set_eikonal", f"{M}.losses:build_eikonal_grid", config=C.EikonalGridConfig,
             consumes=[{"shapes", "phi_grid"}], description=C.EikonalGridConfig.__doc__)
