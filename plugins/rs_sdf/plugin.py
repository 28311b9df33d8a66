"""Built-in plugin ``rs_sdf``: randomized smoothing of a voxel occupancy grid as a certified weak SDF
(Pérez et al., "Certified robustness as a tool for 3D vision"). Only names and config classes are
imported here; torch loads lazily. Meshes come from the ngp backend's ``marching_cubes`` on the
weak SDF (``quantity: sdf``) at the paper's slightly negative ``level``, which is +0.002 here: the
paper's weak SDF is positive inside, this project's negative inside, and the level lies just outside the
smoothed surface."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.rs_sdf import config as C

M = "plugins.rs_sdf"


@hookimpl
def nls_register_fields(register):
    register("voxel_occupancy", f"{M}.field:build_voxel_occupancy", config=C.VoxelOccupancyConfig,
             produces={"occupancy", "rgb"}, description=C.VoxelOccupancyConfig.__doc__)


@hookimpl
def nls_register_certifiers(register):
    register("randomized_smoothing", f"{M}.certifier:build_randomized_smoothing",
             config=C.RandomizedSmoothingConfig, consumes=["occupancy"], produces={"sdf"},
             description=C.RandomizedSmoothingConfig.__doc__)


@hookimpl
def nls_register_density_maps(register):
    register("hard_occupancy", f"{M}.density:build_hard_occupancy", config=C.HardOccupancyConfig,
             consumes=["sdf"], produces={"density"}, description=C.HardOccupancyConfig.__doc__)


@hookimpl
def nls_register_evaluators(register):
    register("sdf_slices", f"{M}.evaluate:build_sdf_slices", config=C.SDFSlicesConfig,
             consumes=["sdf"], description=C.SDFSlicesConfig.__doc__, metrics=C.SDF_SLICES_METRICS)
    register("certify_check", f"{M}.evaluate:build_certify_check", config=C.CertifyCheckConfig,
             consumes=[{"occupancy", "sdf"}], description=C.CertifyCheckConfig.__doc__,
             metrics=C.CERTIFY_CHECK_METRICS)
