"""Options of the ``lipschitz`` plugin's components (pydantic only: no torch import here).

Defaults follow Coiffier & Béthune, "1-Lipschitz Neural Distance Fields" (SGP 2024) and
their public code (margin 1e-2, lambda 100, 20 SLL layers x 128) except where a field's description
says otherwise (the CPU-friendly default depth/width of the field). Their optimiser, Adam at 5e-4, is
not an option here: the learning rate is the trainer's ``train.lr``, which the shipped lipschitz scenes
set to 5e-3, decaying 20x over the run (``lr_final_factor: 0.05``).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.metric_notes import lower


class SLLFieldConfig(ComponentConfig):
    """1-Lipschitz SDF network (Coiffier & Béthune 2024): zero-padding -> `depth` SLL layers
    (Araujo et al. 2023) -> a norm-1 linear layer. Lipschitz by construction, not by penalty.
    A small colour branch gives rgb when view directions are given (posed-image scenes)."""

    depth: int = Field(8, ge=1, le=200, description="number of SLL layers (paper default 20; 8 is the "
                       "CPU default here: ~2.5x cheaper per step, set 20 for the paper's model)")
    width: int = Field(128, ge=4, le=2048, description="padded width of every SLL layer (paper default 128)")
    final_norm: Literal["frobenius", "spectral"] = Field(
        "frobenius", description="normalisation of the last (width -> 1) linear layer; for one output "
                                 "row both norms coincide")
    eps: float = Field(1e-6, gt=0, description="added to the SLL rescaling sums before inversion")
    seed: Optional[int] = Field(None, description="initialisation seed (default: the global torch RNG, "
                                                  "seeded from train.seed)")
    color_hidden: int = Field(32, ge=1, description="hidden units of the colour branch (used only with images)")


class HKRConfig(ComponentConfig):
    """hinge-Kantorovich-Rubinstein loss E[-y f] + lambda E[max(0, m - y f)] on points labelled by
    generalized winding numbers (signed: y=-1 inside, +1 outside) or by surface/elsewhere
    (unsigned: y=-1 on surface samples, +1 elsewhere). Points are labelled once at build time."""

    mode: Literal["signed", "unsigned"] = Field("signed", description="signed (closed/solid input) or "
                                                "unsigned (open surfaces, curves; the margin is a thickness)")
    source: Literal["auto", "mesh", "points"] = Field(
        "auto", description="what is labelled: the scene's mesh (watertight or triangle soup) or its "
                            "point cloud; auto prefers the mesh")
    normals: Literal["auto", "given", "estimate"] = Field(
        "auto", description="point-cloud normals: given (refuse when absent), estimate (PCA + MST "
                            "orientation propagation), auto (given when present, else estimate)")
    margin: float = Field(0.01, gt=0, description="hinge margin m (paper 1e-2)")
    lam: float = Field(100.0, gt=0, description="hinge weight lambda (paper 100)")
    weight: float = Field(1.0, ge=0, description="overall weight of this loss term")
    n_uniform: int = Field(100_000, ge=100, description="labelled points uniform in the loose box")
    n_near: int = Field(100_000, ge=0, description="labelled points near the surface (surface samples + "
                                                   "Gaussian offsets)")
    near_sigma: list[float] = Field([0.01, 0.05], min_length=1,
                                    description="std-devs of the near-surface offsets (split evenly)")
    box_padding: float = Field(0.05, ge=0, description="loose box = scene box grown by this per side")
    threshold: float = Field(0.5, gt=0, lt=1, description="winding number above which a point is inside")
    max_ambiguous: float = Field(0.02, ge=0, le=1, description="refuse the input when more than this fraction "
                                 "of the uniform samples has a |winding number| in (0.25, 0.75) (bad orientation)")
    batch_size: int = Field(2048, ge=1, description="half the points per step (paper: 200 inside + 200 outside)")
    sampling: Literal["union", "balanced"] = Field(
        "union", description="union: draw from all labelled points, so the sampling density is the same on "
                             "both sides of the surface and the hinge puts the zero level on it; balanced: "
                             "batch_size per class as the authors' loaders (biases the level set outwards "
                             "when the inside pool is smaller)")
    surface_weight: float = Field(0.0, ge=0, description="optional extra weight of E[f(s)^2] on surface "
                                  "samples (0: the paper's pure hKR). Not in the paper: it pins the zero level to "
                                  "the surface, which bounds |f| - |SDF| by max |f| on the surface (spot, 1e4: "
                                  "max overestimate 0.027 -> 0.007) at the cost of a flatter far field")
    seed: int = Field(0, description="seed of the label sampling (labels are deterministic)")


class SphereTracingConfig(ComponentConfig):
    """Sphere tracing of any SDF field: depth, normals, shaded image, per-ray step counts. Steps by
    f(x)/lipschitz, provably safe for a 1-Lipschitz field with lipschitz=1."""

    lipschitz: float = Field(1.0, gt=0, description="assumed Lipschitz bound L; steps are f(x)/L")
    max_steps: int = Field(128, ge=1, description="iterations per ray")
    eps: float = Field(1e-3, gt=0, description="hit when f(x) < eps")
    near: float = Field(0.0, ge=0, description="ray distance where tracing starts")
    far: float = Field(4.0, gt=0, description="ray distance where tracing gives up (a miss)")
    chunk: int = Field(16384, ge=1, description="rays per batch")


class SphereTraceEvalConfig(ComponentConfig):
    """Sphere-trace orbit views of the trained SDF: steps per ray, hit rate, and how often a step was longer
    than the true distance (libigl exact signed distance to the GT mesh) or crossed the field's own zero level."""

    n_views: int = Field(4, ge=1, description="views on a circle around the object")
    image_size: int = Field(64, ge=8, description="pixels per side")
    radius: float = Field(1.5, gt=0, description="camera distance from the box centre")
    fov_deg: float = Field(40.0, gt=1, lt=170, description="field of view of the traced cameras, degrees")
    tolerance: float = Field(0.01, ge=0, description="slack (world units): a step longer than the true distance "
                             "by more than this counts as overshoot; the hKR margin m, since a trained field "
                             "satisfies |f| <= |SDF| + m where its level set is on the surface")
    save_images: bool = Field(True, description="write shaded|normals|depth|steps PNGs under renders/sphere_trace "
                                                "(<stem>_renders/sphere_trace for nls eval -o <stem>.json)")


class DistanceEvalConfig(ComponentConfig):
    """Distance quality against the ground-truth mesh (libigl exact signed distance): mean |f - SDF|,
    max overestimate |f| - |SDF| near and far from the surface, and the mean/min/max of ||grad f||."""

    n_points: int = Field(20000, ge=100, description="uniform points in the scene box")
    near: float = Field(0.05, gt=0, description="|SDF| below this counts as near the surface")
    unsigned: bool = Field(False, description="compare |f| to the unsigned distance (unsigned fields)")
    seed: int = Field(0, description="seed of this component's random samples")


class LevelSetPointsConfig(ComponentConfig):
    """Sample the field's level set by closest-point projection (the paper's x - f(x) grad f(x), divided
    by ||grad f||^2: a Newton step on the level) and write it as meshes/level_set_points.ply (with normals)."""

    n_points: int = Field(30000, ge=10, description="points projected onto the level set")
    level: float = Field(0.0, description="level to sample (0 for a signed field)")
    iterations: int = Field(4, ge=1, description="projection steps")
    tolerance: float = Field(2e-3, gt=0, description="keep points with |f - level| below this")
    max_rounds: int = Field(3, ge=1, description="rounds of 4n candidates before giving up on n points")
    seed: int = Field(0, description="seed of this component's random samples")


#: what the ``sphere_trace`` evaluator reports (the overshoot figures need a ground-truth mesh)
SPHERE_TRACE_METRICS = {
    "trace_steps_per_ray": "mean sphere-tracing steps per ray of the orbit views",
    "trace_steps_per_ray_max": "most steps any ray took",
    "trace_steps_per_hit_ray": "mean steps of the rays that hit the surface",
    "trace_hit_rate": "share of the rays that hit the surface",
    "trace_passed_field_rate": "share of the rays with an iterate below -tolerance: past the field's own zero level",
    "trace_overshoot_rate": lower("share of the rays with a step longer than the true distance by more than "
                                  "tolerance"),
    "trace_overshoot_rays": lower("rays with such a step"),
    "trace_max_step_excess": lower("scene units: the most any step exceeded the true distance"),
    "trace_max_penetration": lower("scene units: the deepest any iterate went inside the true solid"),
    "trace_n_rays": "rays traced",
}

#: what the ``distance_quality`` evaluator reports
DISTANCE_METRICS = {
    "dist_mean_abs_err": lower("scene units: mean |f - SDF| at uniform points in the box (libigl exact SDF)"),
    "dist_max_over": lower("scene units: the largest |f| - |SDF|; above 0, the field overestimates the distance "
                           "somewhere"),
    "dist_max_over_near": lower("scene units: the same where |SDF| < near"),
    "dist_max_over_far": lower("scene units: the same where |SDF| >= near"),
    "dist_over_rate": lower("share of the points where |f| > |SDF| + 1e-4"),
    "dist_grad_mean": "mean gradient norm of the field (1 for an exact SDF, at most 1 for a 1-Lipschitz one)",
    "dist_grad_min": "least gradient norm",
    "dist_grad_max": "largest gradient norm",
    "dist_n_points": "points compared",
}

#: what the ``level_set_points`` evaluator reports
LEVEL_SET_POINTS_METRICS = {
    "level_set_n_points": "points projected onto the level set within tolerance",
    "level_set_mean_abs_residual": lower("field units: mean |f - level| at those points"),
    "level_set_chamfer_l1": lower("×10³ in the GT's frame (its box centred, largest side 1): chamfer_l1 of those "
                                  "points against the GT's samples"),
    "level_set_chamfer_l1_floor": "×10³: the GT against as many of its own samples as there are points: the least "
                                  "level_set_chamfer_l1 at that count",
}
