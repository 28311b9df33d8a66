"""Hook implementations of the built-in plugin ``shapes``: shape-collection scene sources, the baseline
decoders, their losses, the IoU evaluator and ``nls infer``. Only names and configs load here."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.shapes import config as C

M = "plugins.shapes"


@hookimpl
def nls_register_scene_sources(register):
    register("r2n2", f"{M}.dataset:build_r2n2", config=C.R2N2Config, produces={"shapes"},
             description=C.R2N2Config.__doc__)
    register("shape_families", f"{M}.dataset:build_families", config=C.ShapeFamiliesConfig,
             produces={"shapes"}, description=C.ShapeFamiliesConfig.__doc__)


@hookimpl
def nls_register_fields(register):
    register("voxel_decoder", f"{M}.decoders:build_voxel_decoder", config=C.VoxelDecoderConfig,
             consumes=["shapes"], produces={"occupancy", "embedding", "occupancy_grid"},
             description=C.VoxelDecoderConfig.__doc__)
    register("cond_mlp", f"{M}.decoders:build_cond_mlp", config=C.CondMLPConfig,
             consumes=["shapes"], produces={"occupancy", "embedding"}, description=C.CondMLPConfig.__doc__)


@hookimpl
def nls_register_losses(register):
    register("point_occupancy_ce", f"{M}.losses:build_point_ce", config=C.PointCEConfig,
             consumes=[{"shapes", "embedding", "occupancy"}], description=C.PointCEConfig.__doc__)
    register("voxel_ce", f"{M}.losses:build_voxel_ce", config=C.VoxelCEConfig,
             consumes=[{"shapes", "occupancy_grid"}], description=C.VoxelCEConfig.__doc__)


@hookimpl
def nls_register_evaluators(register):
    register("shape_iou", f"{M}.evaluate:build_shape_iou", config=C.ShapeIoUConfig,
             consumes=[{"shapes", "embedding"}], description=C.ShapeIoUConfig.__doc__,
             metrics=C.SHAPE_IOU_METRICS)


@hookimpl
def nls_add_commands(subparsers):
    from plugins.shapes.infer import add_infer_command

    add_infer_command(subparsers)
