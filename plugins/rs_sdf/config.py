"""Config classes of the ``rs_sdf`` components (no torch import: listed by `nls plugins`)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.metric_notes import higher, lower
from plugins.ngp.config import DenseGridConfig, HashGridConfig


class VoxelOccupancyConfig(ComponentConfig):
    """Learnable soft-occupancy voxel grid V (sigmoid of logits, trilinear) plus a shared hash/dense-grid
    appearance field; 3-phase schedule: NeRF stage, voxel fine-tune, joint fine-tune."""

    resolution: int = Field(192, ge=8, le=512, description="vertices per axis of V (paper: 192, 256 or 384)")
    aabb: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="box of V, xmin ymin zmin xmax ymax zmax; default the scene box "
                                        "(the colour field and the phase-1 NeRF always span the scene box)")
    appearance: Literal["hash_grid", "dense_grid"] = Field(
        "hash_grid", description="colour field (and the phase-1 NeRF): the ngp backend's hash or dense grid")
    hash_grid: HashGridConfig = Field(default_factory=HashGridConfig,
                                      description="options of the hash-grid appearance field")
    dense_grid: DenseGridConfig = Field(default_factory=DenseGridConfig,
                                        description="options of the dense-grid appearance field")
    ngp_steps: int = Field(2000, ge=0, description="phase 1: steps training the appearance field as a plain NeRF")
    voxel_steps: int = Field(1000, ge=0, description="phase 2: steps training only V (colour frozen); then "
                             "phase 3 trains V and colour jointly until train.steps")
    ngp_fraction: Optional[float] = Field(None, ge=0, le=1, description="place the phases by the fraction of the "
                                          "training budget instead of steps (for train.max_seconds budgets): "
                                          "phase 1 ends at this fraction; needs voxel_fraction")
    voxel_fraction: Optional[float] = Field(None, ge=0, le=1, description="with ngp_fraction: the fraction of the "
                                            "budget spent in phase 2 (phase 3 gets the rest)")
    voxel_lr_scale: float = Field(10.0, gt=0, description="learning-rate multiplier of V's logits")
    voxel_adam_eps: float = Field(1e-9, gt=0, description="Adam eps of V's logits: damps the ~1e-13 gradients "
                                  "that reach the inside of opaque objects (Adam would otherwise step them like "
                                  "surface voxels and the interior would drift)")
    init_occupancy: float = Field(0.05, gt=0, lt=1, description="occupancy of V before it is initialised "
                                  "(used as is when ngp_steps = 0)")
    init_density: float = Field(5.0, gt=0, description="at the phase switch, vertices where the NeRF density "
                                "exceeds this start occupied (enclosed cavities filled)")
    init_closing: int = Field(2, ge=0, le=8, description="binary-closing iterations that seal gaps in the NeRF's "
                              "shell before its cavities are filled")
    init_clamp: float = Field(0.02, gt=0, lt=0.5, description="V initialised from the NeRF is clamped to "
                              "[c, 1-c] before the logit, so gradients can still move it")


class RandomizedSmoothingConfig(ComponentConfig):
    """Occupancy->SDF certifier: weak SDF = -sigma * Phi^-1(G_sigma * occ) (negative inside), by a
    Gaussian blur of a voxel grid computed once per optimisation step."""

    sigma: float = Field(0.02, gt=0, description="smoothing std in world units (converted to voxels per axis)")
    eps: float = Field(1e-4, gt=0, lt=0.5, description="clamp of the smoothed occupancy to [eps, 1-eps] before Phi^-1")
    truncate: float = Field(4.0, ge=3.0, le=8.0, description="blur radius in standard deviations")
    method: Literal["auto", "kernel", "matmul", "conv", "fft", "triton"] = Field(
        "auto", description="blur implementation (auto: the C++ CPU kernel for float32 CPU grids; on CUDA the Triton "
        "kernels when triton imports and the radius is <= 24 voxels, else the FFT; otherwise the FFT for radii "
        "> 24, else banded matmul; conv: torch "
        "conv3d, cuDNN on CUDA; triton: one Triton kernel per axis, CUDA only)")
    resolution: int = Field(128, ge=8, le=512, description="rasterisation grid (vertices per axis) for occupancy "
                            "fields that have no voxel grid of their own")
    aabb: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="rasterisation box for such fields; default the scene box")


class HardOccupancyConfig(ComponentConfig):
    """Density map: hard occupancy = sigmoid(-eccentricity * sdf / width), density = scale * hard occupancy."""

    eccentricity: float = Field(19.0, gt=0, description="sigmoid slope (paper: 19)")
    width: Optional[float] = Field(None, gt=0, description="sdf unit of the sigmoid, world units; default the "
                                   "certifier's sigma (so the sigmoid acts on Phi^-1 of the smoothed occupancy)")
    scale: float = Field(200.0, gt=0, description="density of fully occupied space (1/world units)")


class SDFSlicesConfig(ComponentConfig):
    """Colour-mapped transversal slices of the weak SDF written as PNGs into the run folder (paper Fig. 3 d-f)."""

    axes: list[Literal["x", "y", "z"]] = Field(["x", "y", "z"], min_length=1, description="slice normals")
    positions: list[float] = Field([0.5], min_length=1, description="slice positions as fractions of the box")
    size: int = Field(256, ge=16, le=2048, description="pixels along the longer side of a slice")
    colormap: str = Field("RdBu", description="matplotlib colormap (negative inside = first colour)")
    folder: str = Field("sdf_slices", description="sub-folder of the run folder (of <stem>_renders/ for nls eval)")


class CertifyCheckConfig(ComponentConfig):
    """Cross-check of the grid's smoothed occupancy against Monte-Carlo CERTIFY (Cohen et al.) on the field."""

    n_points: int = Field(64, ge=2, description="points checked (half near the surface, half uniform)")
    n0: int = Field(100, ge=1, description="selection samples")
    n: int = Field(2000, ge=10, description="estimation samples")
    alpha: float = Field(0.001, gt=0, lt=0.5, description="failure probability of the Clopper-Pearson bounds")
    soft: bool = Field(True, description="read soft occupancy as a randomised classifier (matches the grid)")
    seed: int = Field(0, description="seed of this component's random samples")


#: what the ``sdf_slices`` evaluator reports
SDF_SLICES_METRICS = {
    "sdf_slices": "slice PNGs written",
    "sdf_min": "scene units: the least weak-SDF value on the slices (inside)",
    "sdf_max": "scene units: the largest weak-SDF value on the slices (outside)",
}

#: what the ``certify_check`` evaluator reports
CERTIFY_CHECK_METRICS = {
    "certify_within_ci": higher("share of the points where the grid's smoothed occupancy lies in the Monte-Carlo "
                                "Clopper-Pearson interval (1 - alpha expected)"),
    "certify_abstain_rate": "share of the points where CERTIFY abstains: its lower bound on the likelier side's "
                            "probability is 1/2 or less",
    "certify_radius_abs_diff": lower("scene units: mean |grid radius - Monte-Carlo radius| where CERTIFY does not "
                                     "abstain"),
    "certify_n_points": "points checked",
}
