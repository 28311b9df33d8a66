"""Built-in plugin ``lipschitz``: only names and config classes are imported here; torch loads lazily."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl
from plugins.lipschitz import config as C

M = "plugins.lipschitz"


@hookimpl
def nls_register_fields(register):
    register("lipschitz_sll", f"{M}.sll:build_field", config=C.SLLFieldConfig, produces={"sdf", "rgb"},
             description=C.SLLFieldConfig.__doc__)


@hookimpl
def nls_register_losses(register):
    register("hkr", f"{M}.losses:build_hkr", config=C.HKRConfig, consumes=["sdf"],
             description=C.HKRConfig.__doc__)


@hookimpl
def nls_register_renderers(register):
    register("sphere_tracing", f"{M}.tracing:build_renderer", config=C.SphereTracingConfig, consumes=["sdf"],
             produces={"depth", "normals"}, description=C.SphereTracingConfig.__doc__)


@hookimpl
def nls_register_evaluators(register):
    register("sphere_trace", f"{M}.tracing:build_evaluator", config=C.SphereTraceEvalConfig, consumes=["sdf"],
             description=C.SphereTraceEvalConfig.__doc__, metrics=C.SPHERE_TRACE_METRICS)
    register("distance_quality", f"{M}.evaluate:build_distance", config=C.DistanceEvalConfig,
             consumes=[{"sdf", "gt_mesh"}], description=C.DistanceEvalConfig.__doc__,
             metrics=C.DISTANCE_METRICS)
    register("level_set_points", f"{M}.queries:build_level_set_points", config=C.LevelSetPointsConfig,
             consumes=["sdf"], description=C.LevelSetPointsConfig.__doc__,
             metrics=C.LEVEL_SET_POINTS_METRICS)
