"""Built-in plugin ``ngp``: the shared NeRF backend (fields, renderer, density maps, extractor,
losses and evaluators). Only names and config classes are imported here; torch loads lazily."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.ngp import config as C

M = "plugins.ngp"


@hookimpl
def nls_register_fields(register):
    register("dense_grid", f"{M}.fields:build_dense_grid", config=C.DenseGridConfig,
             produces={"density", "rgb", "voxels"}, description=C.DenseGridConfig.__doc__)
    register("hash_grid", f"{M}.fields:build_hash_grid", config=C.HashGridConfig,
             produces={"density", "rgb"}, description=C.HashGridConfig.__doc__)


@hookimpl
def nls_register_density_maps(register):
    register("laplace", f"{M}.density:build_laplace", config=C.LaplaceDensityConfig,
             consumes=["sdf"], produces={"density"}, description=C.LaplaceDensityConfig.__doc__)
    register("occupancy_scale", f"{M}.density:build_occupancy", config=C.OccupancyDensityConfig,
             consumes=["occupancy"], produces={"density"}, description=C.OccupancyDensityConfig.__doc__)


@hookimpl
def nls_register_renderers(register):
    register("volume", f"{M}.renderer:build_volume", config=C.VolumeRendererConfig,
             consumes=[{"density", "rgb", "images"}], produces={"render", "depth"},
             description=C.VolumeRendererConfig.__doc__)


@hookimpl
def nls_register_mesh_extractors(register):
    register("marching_cubes", f"{M}.extract:build_marching_cubes", config=C.MarchingCubesConfig,
             consumes=["sdf", "occupancy", "density"], produces={"mesh"},
             description=C.MarchingCubesConfig.__doc__)
    register("udf_marching_cubes", f"{M}.extract:build_udf_marching_cubes", config=C.UdfMarchingCubesConfig,
             consumes=["sdf", "occupancy", "density"], produces={"mesh"},
             description=C.UdfMarchingCubesConfig.__doc__)


@hookimpl
def nls_register_losses(register):
    register("photometric", f"{M}.losses:build_photometric", config=C.PhotometricConfig,
             consumes=[{"render", "images"}], description=C.PhotometricConfig.__doc__)
    register("depth", f"{M}.losses:build_depth", config=C.DepthLossConfig,
             consumes=[{"render", "images"}], description=C.DepthLossConfig.__doc__)
    register("eikonal", f"{M}.losses:build_eikonal", config=C.EikonalConfig,
             consumes=["sdf"], description=C.EikonalConfig.__doc__)
    register("point_normals", f"{M}.losses:build_point_normals", config=C.PointNormalsConfig,
             consumes=[{"sdf", "points"}], description=C.PointNormalsConfig.__doc__)
    register("tv", f"{M}.losses:build_tv", config=C.TVConfig,
             consumes=["voxels"], description=C.TVConfig.__doc__)


@hookimpl
def nls_register_evaluators(register):
    register("psnr", f"{M}.evaluate:build_image_metrics", config=C.PSNRConfig,
             consumes=[{"render", "images"}], description=C.PSNRConfig.__doc__, metrics=C.PSNR_METRICS)
    register("chamfer", f"{M}.evaluate:build_geometry_metrics", config=C.ChamferConfig,
             consumes=[{"mesh", "gt_mesh"}], description=C.ChamferConfig.__doc__, metrics=C.CHAMFER_METRICS)
    register("train_views", f"{M}.evaluate:build_train_views", config=C.TrainViewsConfig,
             consumes=[{"render", "images"}], description=C.TrainViewsConfig.__doc__,
             metrics=C.TRAIN_VIEWS_METRICS)
    register("depth", f"{M}.evaluate:build_depth_metrics", config=C.DepthConfig,
             consumes=[{"render", "images", "gt_mesh"}], description=C.DepthConfig.__doc__, metrics=C.DEPTH_METRICS)
    register("sensor_depth", f"{M}.evaluate:build_sensor_depth_metrics", config=C.DepthConfig,
             consumes=[{"render", "images"}], description=C.SENSOR_DEPTH_DOC, metrics=C.SENSOR_DEPTH_METRICS)
    register("mesh_psnr", f"{M}.evaluate:build_mesh_psnr", config=C.MeshPSNRConfig,
             consumes=[{"mesh", "images"}], description=C.MeshPSNRConfig.__doc__, metrics=C.MESH_PSNR_METRICS)
    register("dtu", f"{M}.evaluate:build_dtu_metrics", config=C.DTUConfig,
             consumes=["mesh"], description=C.DTUConfig.__doc__, metrics=C.DTU_METRICS)
    register("point_fit", f"{M}.evaluate:build_point_fit", config=C.PointFitConfig,
             consumes=[{"mesh", "points"}], description=C.PointFitConfig.__doc__,
             metrics=C.POINT_FIT_METRICS)
