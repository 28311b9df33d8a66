"""Config classes of the ``sample_network`` plugin (pydantic only, no torch: ``nls plugins`` lists them)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from pipeline.components import ComponentConfig

InitMeasure = Literal["uniform", "gaussian", "current", "mixed"]


class MLPSDFConfig(ComponentConfig):
    """MLP field F: R³ → R^l with the geometric initialisation of Atzmon & Lipman (SAL, CVPR 2020):
    at step 0, F(x) ≈ ‖x‖ − init_radius (an SDF of a sphere). ``sdf`` is output 0; a small colour
    head gives ``rgb`` when view directions are passed (so the field also fits image scenes)."""

    hidden: int = Field(256, ge=4, description="hidden width")
    layers: int = Field(4, ge=1, le=16, description="hidden layers")
    out_dim: int = Field(1, ge=1, le=8, description="outputs l (1: surface SDF, 2: a curve as F1=F2=0)")
    activation: Literal["softplus", "relu"] = Field("softplus", description="hidden activation")
    softplus_beta: float = Field(100.0, gt=0, description="softplus sharpness (IGR/SAL use 100)")
    init_radius: float = Field(0.4, gt=0, description="radius of the sphere the geometric init starts from")
    skip_in: list[int] = Field([], description="hidden layers that re-read the input (DeepSDF skip), e.g. [4]")


class ReconConfig(ComponentConfig):
    """Surface reconstruction from a raw point cloud X (Atzmon et al. 2019, Eq. 13):
    Σ_{t∈T} ( mean_{p∈S_t} |d(p(θ),X) − |t||^p )^{1/p} + λ/N Σ_j |F(x_j)|, with level-set samples
    p(θ) from generalized-Newton projection (Eq. 4/5) wrapped in sample networks (Eq. 9) and
    d(·,X) from a KD-tree. No normals, no ground-truth distances."""

    weight: float = Field(1.0, ge=0, description="weight of the whole term")
    levels: list[float] = Field([0.0], min_length=1, description="T: the level sets controlled")
    p: float = Field(1.0, ge=1, description="exponent p of the level-set term")
    lam: float = Field(1.0, ge=0, description="λ: weight of the data term mean|F(x_j)|")
    n_samples: int = Field(1024, ge=8, description="level-set samples per level per step")
    batch_points: int = Field(2048, ge=1, description="input points x_j per step for the λ term")
    init: InitMeasure = Field("mixed", description="initial measure: uniform in the box, gaussian around "
                              "input points, the current samples (warm start), or mixed (current + fresh "
                              "gaussian/uniform)")
    sigma: float = Field(0.03, gt=0, description="std of the gaussian measure around input points")
    uniform_fraction: float = Field(0.1, ge=0, le=1, description="share of fresh samples drawn uniformly")
    refresh: float = Field(0.25, ge=0, le=1, description="mixed: share of the pool redrawn fresh each step")
    newton_iters: int = Field(10, ge=1, le=100, description="maximum Newton iterations (converged points stop "
                              "early, so warm-started samples cost ~1 iteration)")
    newton_tol: float = Field(1e-4, gt=0, description="|F − t| below which a sample has converged")
    max_step: Optional[float] = Field(0.25, gt=0, description="clip each Newton step to this length (None: off)")
    track: bool = Field(True, description="warm-started samples are not re-projected: each step moves them by "
                        "one Newton step computed from the loss's own forward pass onto level t (only the "
                        "general samples sit on their own levels; false: full Newton projection every step)")
    general_samples: int = Field(1024, ge=0, description="samples of arbitrary level sets per step: gaussian "
                                 "points around the input, each on its own level set t = F(p; θ₀) (no "
                                 "projection); Eq. 13 over a continuum of levels, as the authors' code does. 0: off")
    general_sigmas: list[float] = Field([0.01, 0.1], min_length=1, description="stds of the general samples "
                                        "(an equal share per std)")
    general_weight: float = Field(1.0, ge=0, description="weight of the general-level term")
    quantity: Literal["sdf"] = Field("sdf", description="field output whose level sets are controlled")


class UDFRegressionConfig(ComponentConfig):
    """Naive baseline: regress |F(x)| to the unsigned distance d(x,X) at random points
    (uniform in the box + gaussian around the input), mean | |F(x)| − d(x,X) |."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")
    n_points: int = Field(4096, ge=8, description="random query points per step")
    sigma: float = Field(0.03, gt=0, description="std of the near-surface gaussian")
    uniform_fraction: float = Field(0.2, ge=0, le=1, description="share of uniform points")
    quantity: Literal["sdf"] = Field("sdf", description="field output regressed to the unsigned distance")


class CurveConfig(ComponentConfig):
    """Curve reconstruction (§4): F: R³ → R², T = {0}; the curve is {F1 = F2 = 0}. Same loss as
    ``level_set_recon`` with Moore–Penrose projections (l = 2)."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")
    p: float = Field(1.0, ge=1)
    lam: float = Field(1.0, ge=0)
    n_samples: int = Field(1024, ge=8)
    batch_points: int = Field(1024, ge=1)
    sigma: float = Field(0.03, gt=0)
    newton_iters: int = Field(10, ge=1)
    newton_tol: float = Field(1e-4, gt=0)


class ScanConfig(ComponentConfig):
    """A mesh or point-cloud file turned into a raw scan: area-uniform samples (meshes) or the file's
    points (.ply/.xyz/.pts/.npy), optionally noisy, subsampled and cropped to a partial view. The
    normalised mesh is kept as ground truth; no normals are given to the method."""

    path: str = Field(..., description="mesh (.obj/.off/.stl/.glb) or point cloud (.ply/.xyz/.pts/.npy)")
    extent: float = Field(1.0, gt=0, description="largest side of the normalised input")
    n_points: int = Field(30000, ge=100, description="surface samples drawn from a mesh")
    subsample: Optional[int] = Field(None, ge=10, description="keep a random subset of this many points")
    noise: float = Field(0.0, ge=0, description="gaussian noise std, as a fraction of `extent`")
    crop: Literal["none", "plane", "view"] = Field("none", description="partial scan: drop points beyond a "
                                                   "plane, or points not facing a view direction")
    crop_keep: float = Field(0.7, gt=0, le=1, description="plane crop: fraction of the extent kept along crop_dir")
    crop_dir: list[float] = Field([0.0, 0.0, 1.0], min_length=3, max_length=3,
                                  description="plane crop normal / view direction")
    box_margin: float = Field(0.1, ge=0, description="scene box = normalised bounds + this margin per side")
    seed: int = Field(0, description="seed of this component's random samples")


class MarginConfig(ComponentConfig):
    """Classifier margin head (§3.1/§3.2) on the occupancy classifier of a 3D field: labels
    inside/outside from the scene's ground-truth mesh (winding numbers), the decision boundary
    is the surface. The registered name picks the head; all share one code path
    (:func:`plugins.sample_network.margins.classifier_loss`)."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")
    n_points: int = Field(2048, ge=8, description="labelled points per step (half near the surface)")
    sigma: float = Field(0.03, gt=0, description="std of near-surface points")
    sdf_scale: float = Field(50.0, gt=0, description="logit = −sdf_scale·sdf (inside positive)")
    lam: float = Field(0.1, ge=0, description="λ of Eq. 11 / the robust term / TRADES β")
    alpha: float = Field(-1.0, description="Eq. 11 exponent α (−1 in §5.1; −2 with L2 is the soft SVM)")
    norm: Literal["linf", "l2"] = Field("linf", description="distance used by Eq. 11")
    eps_train: float = Field(0.02, gt=0, description="ε_train of Eq. 12 / PGD radius (world units here)")
    lam_wrong: float = Field(1.0, ge=0, description="Eq. 12 λ_j for misclassified points")
    ce_weight: float = Field(1.0, ge=0, description="cross-entropy weight added to robust_margin (Eq. 12)")
    pgd_steps: int = Field(10, ge=1, description="PGD / false-position bracketing steps")
