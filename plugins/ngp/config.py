"""Config classes of the ngp backend's components, and the notes of its evaluators' metrics (no torch import:
listed by `nls plugins`)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.metric_notes import GROUND_TRUTH, chamfer_notes


class DenseGridConfig(ComponentConfig):
    """Feature voxel grid through grid_sample plus a tiny colour MLP (DVGO-style); fast on CPU."""

    resolution: int = Field(96, ge=8, le=512, description="voxels per side of the scene box")
    features: int = Field(8, ge=1, le=64, description="colour feature channels per voxel")
    hidden: int = Field(64, ge=8, description="colour MLP width")
    sh_degree: int = Field(3, ge=1, le=4, description="view-direction SH degree")
    density_bias: float = Field(-7.0, description="softplus shift; -7 starts nearly empty (alpha ~1e-3 per voxel)")
    grid_lr_scale: float = Field(30.0, gt=0, description="learning-rate multiplier of the voxel grids")
    mlp_lr_scale: float = Field(0.1, gt=0, description="learning-rate multiplier of the colour MLP "
                                "(DVGO: grids 1e-1, MLP 1e-3; a fast MLP saturates its sigmoid early)")


class HashGridConfig(ComponentConfig):
    """Instant-NGP field: multiresolution hash encoding, density MLP and SH colour MLP."""

    n_levels: int = Field(16, ge=1, le=32, description="hash-grid levels L")
    n_features_per_level: int = Field(2, ge=1, le=8, description="features per level F")
    log2_hashmap_size: int = Field(19, ge=10, le=24, description="log2 of the table size T")
    base_resolution: int = Field(16, ge=2, description="coarsest resolution N_min")
    max_resolution: int = Field(2048, ge=2, description="finest resolution N_max")
    hidden: int = Field(64, ge=8, description="MLP width")
    geo_features: int = Field(15, ge=1, description="features passed from the density to the colour MLP")
    sh_degree: int = Field(4, ge=1, le=4, description="view-direction SH degree")
    backend: Literal["auto", "torch", "cpu_kernel", "tcnn"] = Field(
        "auto", description="encoding implementation; auto picks the fastest available")


class VolumeRendererConfig(ComponentConfig):
    """nerfacc volume rendering with occupancy-grid skipping (CUDA kernels or the pure-torch CPU path)."""

    samples_per_ray: int = Field(192, ge=8, description="samples across the scene-box diagonal; sets the step size")
    grid_resolution: int = Field(64, ge=8, le=256, description="occupancy-grid resolution")
    cull_after: int = Field(64, ge=0, description="training steps before the occupancy grid starts skipping "
                            "samples (the untrained field is uniform, so an earlier grid would skip everything)")
    occ_threshold: float = Field(0.01, ge=0, description="opacity below which grid cells are skipped")
    alpha_threshold: float = Field(0.0, ge=0, description="skip samples with alpha below this (CUDA path)")
    stratified: bool = Field(True, description="jitter samples during training")
    random_background: bool = Field(False, description="train on random backgrounds (needs alpha); helps empty space")


class LaplaceDensityConfig(ComponentConfig):
    """VolSDF density: sigma = (1/beta) * Psi_beta(-sdf), Psi the Laplace CDF."""

    beta: float = Field(0.01, gt=0, description="Laplace scale beta (world units)")
    learnable: bool = Field(True, description="learn log(beta)")


class OccupancyDensityConfig(ComponentConfig):
    """sigma = scale * occupancy, for fields that give occupancy in [0,1]."""

    scale: float = Field(200.0, gt=0, description="density of fully occupied space (1/world units)")


class MarchingCubesConfig(ComponentConfig):
    """Marching cubes (scikit-image) on an SDF level, a density threshold or the occupancy 0.5 level."""

    resolution: int = Field(256, ge=16, le=1024, description="grid samples per side")
    quantity: Literal["auto", "sdf", "occupancy", "density"] = Field(
        "auto", description="which field output to contour; auto prefers sdf, then occupancy, then density")
    level: Optional[float] = Field(None, description="iso-level; default 0 (sdf), 0.5 (occupancy), 10 (density)")
    bbox: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="xmin ymin zmin xmax ymax zmax; default the scene box")
    fill_interior: bool = Field(True, description="for density/occupancy: fill enclosed cavities so only the "
                                "outer surface is meshed (interiors are unobserved by images)")
    close: bool = Field(False, description="cap the surface with the box's faces where the inside region reaches "
                        "the box, so the mesh is closed (shapes that fill their box, e.g. R2N2); off leaves it open")
    min_component: float = Field(0.0, ge=0, lt=1, description="drop connected components with fewer than this "
                                 "fraction of the faces (post-processing against radiance-field floaters; 0 keeps all)")
    lipschitz: Optional[float] = Field(None, gt=0, description="a bound on the field's gradient norm (an SDF: 1; "
                                       "a trained MLP SDF: ~2): evaluate only a narrow band around the level at full "
                                       "resolution (checked on a coarse grid); None evaluates every grid point")
    calibrate: Literal["off", "silhouettes"] = Field(
        "off", description="silhouettes: mesh at the candidate level (calibrate_levels) whose silhouettes agree "
        "best with the training images' alpha (ray-cast, 4x4 rays per silhouette pixel; needs alpha); off: `level`")
    calibrate_levels: Optional[list[float]] = Field(
        None, min_length=2, description="candidate levels of `calibrate`; default: sdf, level +- 2 grid voxels in "
        "quarter-voxel steps; occupancy 0.2..0.8; density level x 2^(k/2), k = -6..6")


class UdfMarchingCubesConfig(ComponentConfig):
    """Single-sheet mesh of an unsigned field (open surfaces): per-cube pseudo-signs from gradient flips,
    then marching cubes (after MeshUDF, Guillard et al. 2022); see pipeline.udf_mesh."""

    resolution: int = Field(256, ge=16, le=1024, description="grid samples per side")
    quantity: Literal["sdf", "occupancy", "density"] = Field(
        "sdf", description="field output treated as the unsigned distance (its minimum sheet is meshed)")
    offset: Union[float, Literal["min"]] = Field(
        "min", description="the field's value on the surface, subtracted before meshing; 'min' takes the "
        "grid minimum (0 for a true UDF; about -margin for an unsigned hKR field)")
    threshold: float = Field(1.5, gt=0, description="mesh the cubes whose corners are all within this many "
                             "voxel diagonals of the surface")
    trim: float = Field(0.5, ge=0, description="drop faces whose centroid is farther than this many voxels "
                        "from the surface (the pseudo-sign flip overshoots open borders); 0 keeps all")
    bbox: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="xmin ymin zmin xmax ymax zmax; default the scene box")
    min_component: float = Field(0.0, ge=0, lt=1, description="drop connected components with fewer than this "
                                 "fraction of the faces (0 keeps all)")


class PhotometricConfig(ComponentConfig):
    """Photometric loss between rendered and true pixel colours."""

    kind: Literal["mse", "huber", "l1"] = Field("mse", description="per-pixel penalty")
    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")


class DepthLossConfig(ComponentConfig):
    """Depth supervision: the rendered expected depth of each training ray against the depth the scene measured
    there (a depth sensor's maps: nerfstudio's depth_file_path), over the rays that have one."""

    kind: Literal["l1", "relative", "ds_nerf"] = Field(
        "l1", description="per-ray penalty: |rendered - measured| in scene units, or that over the measured depth "
        "(the same weight for near and far content), or ds_nerf: DS-NeRF's loss on the ray's weights, which pulls "
        "its termination distribution to a Gaussian of width sigma about the measured depth")
    weight: float = Field(0.01, ge=0, description="weight of this term in the training loss (on csg, 0.01 gave "
                          "better test PSNR than 0.1, which pins the depth closer: README, Depth maps)")
    sigma: float = Field(0.01, gt=0, le=1, description="ds_nerf only: the standard deviation of a measured depth, "
                         "as a fraction of it (0.01: 1 %)")
    uncertainty: bool = Field(True, description="where the depths are structure from motion's keypoints "
                              "(scene.sparse_depth), weigh each by its 3D point's reprojection error against the "
                              "mean (DS-NeRF's uncertainty): ds_nerf's sigma grows with it, l1 and relative "
                              "divide by it")


class EikonalConfig(ComponentConfig):
    """Eikonal regulariser (||grad sdf|| - 1)^2 on random points in the box (Gropp et al. 2020, Eq. 2)."""

    weight: float = Field(0.1, ge=0, description="weight of this term in the training loss")
    n_points: int = Field(4096, ge=1, description="random points per step")


class PointNormalsConfig(ComponentConfig):
    """Normals at the input points (IGR, Gropp et al. 2020, the τ term of ℓ_X in Eq. 3): mean ‖∇sdf(x_i) − n_i‖
    over a batch of the scene's points, so the field's gradient there, an SDF's surface normal, follows the given
    normals. For point clouds with normals (a .ply with nx/ny/nz; .xyz/.pts/.npy with 6 numbers a point)."""

    weight: float = Field(1.0, ge=0, description="τ, the weight of this term (IGR uses 1)")
    batch_points: int = Field(2048, ge=1, description="input points (with their normals) per step")
    oriented: bool = Field(True, description="the normals point outwards; false: either way (normals estimated "
                           "without an orientation), and the nearer of n and −n counts")
    if_missing: Literal["error", "skip"] = Field(
        "error", description="a scene whose points have no normals: refuse it (error), or train without this term "
                             "and say so once (skip: the default scene of a point file, whose normals are optional)")


class TVConfig(ComponentConfig):
    """Total variation of a dense grid field's voxels (smooths empty space, DVGO Eq. 8 style)."""

    weight: float = Field(1e-4, ge=0, description="weight of this term in the training loss")
    density_only: bool = Field(False, description="penalise only the density grid")
    block: int = Field(32, ge=2, description="side of the random sub-volume penalised each step")


class PSNRConfig(ComponentConfig):
    """PSNR and SSIM of test renders against the ground-truth images."""

    ssim: bool = Field(True, description="also compute SSIM (Gaussian-window, as in NeRF papers)")
    color_correct: Literal["none", "gain", "affine"] = Field(
        "none", description="also report psnr_cc (and ssim_cc): each render first brought to its image by the "
        "least-squares colour transform of this kind (gain: per channel; affine: 3x3 and offset), for test photos "
        "whose exposure or white balance is their own (train.exposure learns the training photos')")
    object: bool = Field(False, description="also report psnr_object (and ssim_object): over the pixels on the "
                         "object only (the ground truth's alpha at least 0.5: RGBA images, object masks), as IDR and "
                         "VolSDF score DTU; the background's pixels, easy to get right, are left out")


#: what the ``psnr`` evaluator reports
PSNR_METRICS = {
    "psnr": "dB: the eval split's renders against its images, mean over the images (over the pixels their ignore "
            "masks keep, if any)",
    "ssim": "structural similarity (Gaussian window) of the same pairs, mean; 0..1",
    "psnr_cc": "dB: as psnr, each render first through the least-squares colour transform to its image (color_correct)",
    "ssim_cc": "as ssim, on the colour-corrected renders",
    "psnr_object": "dB: as psnr, over the pixels on the object only (the ground truth's alpha >= 0.5; object: true)",
    "ssim_object": "as ssim, over the pixels on the object only",
    "n_images": "images scored",
    "n_images_masked_out": "images not scored: their ignore masks keep none of their pixels",
}


class DepthConfig(ComponentConfig):
    """The rendered depth of the eval split's views against the ground-truth mesh's (the distance along each
    pixel-centre ray to its first hit), on the pixels the mesh covers: mean absolute and relative error, for the
    expected depth and, when the renderer gives it, the median depth."""

    save_images: int = Field(3, ge=0, description="the first this many views are written to renders/depth_<split>/ "
                             "as rendered depth | ground-truth depth | |error| (the median depth where the renderer "
                             "gives it; the error's colours span 0 to 5 % of the view's median ground-truth depth)")


#: what the ``depth`` evaluator reports
DEPTH_METRICS = {
    "depth_l1": "run units: mean |rendered expected depth - the ground-truth mesh's| over the pixels the mesh "
                "covers (a pixel the field leaves empty counts with depth 0)",
    "depth_abs_rel": "mean |rendered expected depth - ground truth| / ground truth over the same pixels",
    "depth_median_l1": "run units: depth_l1 of the median depth (where half the ray's opacity is reached)",
    "depth_median_abs_rel": "depth_abs_rel of the median depth",
    "depth_pixels": "pixels scored (covered by the ground-truth mesh), over all views",
}

#: what the ``sensor_depth`` evaluator is (it takes the ``depth`` evaluator's options)
SENSOR_DEPTH_DOC = ("The rendered depth of the eval split's views against the split's own depth maps (a depth sensor's: "
                    "nerfstudio's depth_file_path), as distances along the pixel-centre rays, on the pixels that have "
                    "one: mean absolute and relative error, for the expected and the median depth.")
#: what the ``sensor_depth`` evaluator reports
SENSOR_DEPTH_METRICS = {
    "sensor_depth_l1": "run units: mean |rendered expected depth - the eval split's depth maps'| (as distances along "
                       "the pixel-centre rays) over the pixels that have one (an empty one counts with depth 0)",
    "sensor_depth_abs_rel": "mean |rendered expected depth - measured| / measured over the same pixels",
    "sensor_depth_median_l1": "run units: sensor_depth_l1 of the median depth",
    "sensor_depth_median_abs_rel": "sensor_depth_abs_rel of the median depth",
    "sensor_depth_pixels": "pixels scored (with a measured depth), over all views",
}


class MeshPSNRConfig(ComponentConfig):
    """How the exported mesh looks: the run's mesh coloured as `nls export --colors` (or `--texture`) colours it,
    drawn unlit from the eval split's cameras (2 x 2 rays a pixel by default) and scored against its images. Beside the
    field's own PSNR it says how much of the look an exported asset keeps."""

    colors: Literal["vertex", "texture"] = Field("vertex", description="vertex: vertex colours, as `nls export "
                                                 "--colors`; texture: a baked texture of texture_size, as `--texture` "
                                                 "(needs the export extra; xatlas takes about a minute per 100k faces, "
                                                 "so give faces too)")
    texture_size: int = Field(1024, ge=64, le=8192, description="side of the baked texture in texels")
    color_from: Literal["views", "normal"] = Field("views", description="views: each point's colour is the mean of "
                                                   "the field's along the rays of the training cameras that see it, "
                                                   "as `nls export` bakes by default; normal: seen along the inward "
                                                   "normal (`--color-from normal`)")
    faces: Optional[int] = Field(None, ge=4, description="simplify the mesh to about this many faces first, as "
                                 "`nls export --faces` does (needs the export extra); default: as extracted")
    supersample: int = Field(2, ge=1, le=4, description="rays per pixel side, averaged: a pixel of a photo (or of a "
                             "rendered scene's anti-aliased image) is the mean over its area, and one ray through its "
                             "centre draws the mesh's edges aliased against it; 1 draws one ray per pixel")
    ssim: bool = Field(True, description="also compute SSIM")
    save_images: int = Field(3, ge=0, description="the first this many views are written to renders/mesh_<split>/ "
                                                  "as mesh render | ground truth")


#: what the ``mesh_psnr`` evaluator reports
MESH_PSNR_METRICS = {
    "mesh_psnr": "dB: the coloured mesh drawn unlit from the eval split's cameras against its images, mean over the "
                 "images",
    "mesh_ssim": "structural similarity of the same pairs, mean; 0..1",
    "mesh_faces": "faces of the mesh drawn (after faces: simplification)",
    "mesh_texture_size": "side of its baked texture in texels (0: vertex colours)",
}


class TrainViewsConfig(ComponentConfig):
    """How well the trained field explains each training view: its PSNR, rendered at a reduced size against the
    area-averaged image. A view far under the others is named: one structure from motion misplaced, or one that
    differs from the rest (something moved, another exposure, blur)."""

    downscale: int = Field(4, ge=1, le=16, description="each view is rendered at 1/downscale of its size (the "
                           "image averaged over blocks alike): the cost is that of one full view per downscale² views")
    below_db: float = Field(5.0, gt=0, description="a view whose PSNR is this many dB under the views' median is "
                            "named (train_views_below) and warned about")


#: what the ``train_views`` evaluator reports
TRAIN_VIEWS_METRICS = {
    "train_view_psnr_median": "dB: median PSNR of the training views, each rendered at 1/downscale of its size",
    "train_view_psnr_min": "dB: the worst training view's PSNR (train_view_worst names it)",
    "train_views": "training views scored",
}


class PointFitConfig(ComponentConfig):
    """How well the mesh fits the scene's input point cloud, for point-cloud scenes without ground truth:
    the chamfer protocol with the input points as the reference (``fit_*``), and each input point's exact
    distance to the mesh surface (``fit_residual_*``)."""

    residual: bool = Field(True, description="also report fit_residual_l1 / fit_residual_p95: exact distances "
                           "from the input points to the mesh surface (libigl; no sampling floor)")
    max_points: int = Field(100000, ge=100, description="input points the residual is taken over (a seeded "
                            "subset of larger clouds)")


#: what the ``point_fit`` evaluator reports
POINT_FIT_METRICS = {
    **chamfer_notes("fit_", frame="the points' frame (their box centred, largest side 1)", ref="points",
                    ref_samples="input points"),
    "fit_residual_l1": "×10³: mean exact distance from the input points to the mesh surface",
    "fit_residual_p95": "×10³: 95th percentile of those distances",
    "n_points": "input points",
}


class DTUConfig(ComponentConfig):
    """DTU's point-cloud evaluation of the mesh (accuracy, completeness and their mean, in mm; the protocol of
    the DTU MVS benchmark's Python port, which IDR, NeuS and VolSDF report): the mesh, moved into the scan's world
    frame by the scene's input frame, against the structured-light scan inside the scanner's observation mask."""

    root: Optional[str] = Field(None, description="DTU's evaluation folder: the one holding Points/stl/ and "
                                "ObsMask/ (the 'SampleSet/MVS Data' of the DTU release); default: $NLS_DTU")
    scan: Optional[int] = Field(None, ge=1, description="the scan's number; default: from the scene folder's name "
                                "(scan24, dtu_scan24, scan_024)")
    points: Optional[str] = Field(None, description="the scan's points (default ROOT/Points/stl/stl<scan:03d>"
                                  "_total.ply)")
    obs_mask: Optional[str] = Field(None, description="its observation mask (default ROOT/ObsMask/ObsMask<scan>"
                                    "_10.mat: ObsMask, BB, Res)")
    plane: Optional[str] = Field(None, description="its table plane (default ROOT/ObsMask/Plane<scan>.mat: P)")
    density: float = Field(0.2, gt=0, description="sampling density of the mesh and thinning radius (mm)")
    max_dist: float = Field(20.0, gt=0, description="distances from this on are outliers, left out of the means "
                            "(mm)")
    patch: float = Field(60.0, ge=0, description="completeness counts mesh samples up to this far outside the "
                         "mask's box (mm)")
    visual_hull: Optional[float] = Field(None, ge=0, description="first cut the mesh to the visual hull of the "
                                         "training views' masks grown by this many pixels, as IDR / NeuS "
                                         "evaluations do (as nls export --visual-hull); default: no cut")
    seed: int = Field(0, description="seed of the thinning order")


#: what the ``dtu`` evaluator reports
DTU_METRICS = {
    "dtu_accuracy": {"note": "mm: mean distance from the mesh's samples in the observed region to the scan (those "
                             "< max_dist)", "better": "lower"},
    "dtu_completeness": {"note": "mm: mean distance from the scan points above the table to the mesh's samples "
                                 "(those < max_dist)", "better": "lower"},
    "dtu_overall": {"note": "mm: the mean of dtu_accuracy and dtu_completeness (the Chamfer figure DTU papers "
                            "report)", "better": "lower"},
    "dtu_accuracy_outliers": {"note": "fraction of the observed samples at max_dist or more from the scan",
                              "better": "lower"},
    "dtu_completeness_outliers": {"note": "fraction of the scan points at max_dist or more from the mesh",
                                  "better": "lower"},
    "dtu_samples": "the mesh's samples after thinning, within the patch of the mask's box",
    "dtu_observed": "those in the observed region",
    "dtu_scan_points": "scan points above the table",
    "dtu_hull_dropped_faces": "faces the visual hull cut took out",
}


class ChamferConfig(ComponentConfig):
    """Chamfer-L1/L2, normal consistency and F-score against the scene's ground-truth mesh."""

    floor: bool = Field(True, description="also report the floor (two samplings of the GT)")
    surface: bool = Field(True, description="also report chamfer_l1_surface / chamfer_l2_surface: the same samples "
                          "with exact distances to the other mesh's surface (no sampling floor; not the protocol)")


#: what the ``chamfer`` evaluator reports
CHAMFER_METRICS = {
    **chamfer_notes(**GROUND_TRUTH),
    "chamfer_l1_floor": "×10³: the GT against a second sampling of itself: the least chamfer_l1 at this sample count",
    "chamfer_l1_surface": "×10³: chamfer_l1 with exact distances to the other surface (no sampling floor)",
    "chamfer_l2_surface": "×10³: chamfer_l2 with exact distances to the other surface",
    "n_samples": "points sampled on each mesh",
    "n_rec": "samples on the mesh",
    "n_gt": "samples on the GT",
    "scale": "the factor from the run's frame to the GT's frame",
    "mesh_level": "iso-level of the mesh that was scored",
}
