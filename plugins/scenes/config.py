"""Config classes of the built-in scene sources (no torch import)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from pipeline.components import ComponentConfig
from pipeline.scenes import AUTO_MAX_SIDE


class _PoseNoise(ComponentConfig):
    """Simulated pose error of the training cameras and focal-length error of all cameras, applied when the scene
    is loaded (for trying ``train.refine_poses`` and ``train.refine_focal`` where the true cameras are known)."""

    pose_noise_deg: float = Field(0.0, ge=0, le=30, description="simulate poses from structure-from-motion: each "
                                  "training camera is turned about its centre by up to this many degrees (a random "
                                  "axis and angle; the cameras' common rigid motion is then removed) while its image stays as it is; test "
                                  "views keep their poses. For trying train.refine_poses; 0 (the default) leaves them exact")
    pose_noise_shift: float = Field(0.0, ge=0, description="simulated pose error, too: each training camera is moved "
                                    "by up to this much along each axis (world units, uniform; with the common motion "
                                    "removed, which adds a little), with or without pose_noise_deg; 0 (the default) leaves the centres exact")
    focal_noise: Union[float, list[float]] = Field(
        0.0, description="simulate a focal length that is off: every camera's fx and fy, in every split (one "
        "calibration error for all), are multiplied by 1 + focal_noise while the images stay as they are; a list "
        "(e.g. [0.05, -0.03]) simulates that many cameras with an error each, the images of every split taken by "
        "them in turn. For trying train.refine_focal (and train.focal_per_camera); 0 (the default) leaves them exact")

    @field_validator("focal_noise", mode="before")
    @classmethod
    def _focal_noise_in_range(cls, value):
        """A number in [-0.5, 0.5] or a list of 1 to 64 of them, as given (one message for any other value)."""
        errors = value if isinstance(value, list) else [value]
        try:
            ok = 0 < len(errors) <= 64 and all(not isinstance(e, bool) and -0.5 <= float(e) <= 0.5 for e in errors)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError("give a number in [-0.5, 0.5], or a list of 1 to 64 of them (one per simulated camera)")
        return value


class _Views(_PoseNoise):
    n_train: int = Field(40, ge=1, description="training views")
    n_test: int = Field(8, ge=1, description="test views (a ring, distinct from training views)")
    image_size: int = Field(96, ge=8, le=2048, description="rendered image width = height, pixels")
    camera_angle_x: float = Field(0.69, gt=0, lt=3.1, description="horizontal field of view, radians")
    radius: float = Field(2.0, gt=0, description="camera distance from the origin")
    background: Literal["white", "black"] = Field("white", description="background colour")
    seed: int = Field(0, description="camera placement seed")
    supersample: int = Field(2, ge=1, le=4, description="rays per pixel side (anti-aliasing)")
    exposure_jitter: float = Field(0.0, ge=0, le=1, description="simulate photos whose exposure and white balance "
                                   "change from shot to shot: each training image's object colour is scaled by "
                                   "per-channel gains exp(u), u uniform in +-exposure_jitter (centred over the images, "
                                   "clipped to [0, 1]); test views keep the renderer's camera. For trying "
                                   "train.exposure; 0 (the default) leaves the images as rendered")


class ProceduralConfig(_Views):
    """An analytic shape rendered by the project itself; the ground-truth mesh is saved beside it."""

    shape: Literal["csg", "sphere", "torus", "box"] = Field("csg", description="analytic shape")
    gt_resolution: int = Field(256, ge=32, le=1024, description="marching-cubes resolution of the GT mesh")


class MeshSceneConfig(_Views):
    """Any mesh file rendered into posed RGBA images, normalised to a box of side ``extent``."""

    path: str = Field(..., description="mesh file (.obj/.off/.ply/...), ${NLS_DATA} is the data root")
    extent: float = Field(1.0, gt=0, description="largest side of the normalised mesh")


def _ordered_box(cls, box: Optional[list[float]]) -> Optional[list[float]]:
    """``box`` as given when each min lies below its max (the scene-box check of the folder sources)."""
    if box is not None and not all(box[i] < box[i + 3] for i in range(3)):
        raise ValueError("the box is [xmin, ymin, zmin, xmax, ymax, zmax]: each min below its max")
    return box


def _off_unquoted(cls, value):
    """``value`` as given, or ``off`` for false: YAML reads an unquoted ``off`` as false."""
    return "off" if value is False else value


def _downscale_value(cls, value):
    """``downscale`` as given when it is a whole number >= 1 (``2``, ``"2"``, ``2.0``) or ``auto``."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and value >= 1:
        return int(value)
    raise ValueError(f"give a whole number >= 1 (1: the images as they are) or auto, not {value!r}")


class BlenderConfig(_PoseNoise):
    """NeRF-synthetic (transforms_{train,val,test}.json) or instant-ngp (transforms.json) folder."""

    path: str = Field(..., description="scene folder; ${NLS_DATA} expands to the data root")
    background: Literal["white", "black"] = Field("white", description="colour composited behind transparent pixels")
    downscale: Union[Literal["auto"], int] = Field(
        1, description=f"integer area-downscale factor, or auto: the least that brings the longer side within "
                       f"{AUTO_MAX_SIDE} px")
    max_images: Optional[int] = Field(None, ge=1, description="first N images per split")
    splits: list[str] = Field(["train", "test"], description="splits to load")
    aabb: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="override the scene box xmin..zmax")
    pose_noise_seed: int = Field(0, description="seed of the simulated pose error (pose_noise_deg, pose_noise_shift)")
    undistort: bool = Field(True, description="a transforms.json with lens distortion (k1, k2, p1, p2, ...; "
                            "OPENCV_FISHEYE) is undistorted once, frame by frame, by COLMAP's undistortion into "
                            "pinhole images, cached under NLS_CACHE (needs pycolmap); false: read as pinhole "
                            "cameras, with a warning")
    mask_use: Literal["ignore", "object", "off"] = Field(
        "ignore", description="what the frames' mask_path (nerfstudio's key) are: ignore (nerfstudio's meaning: "
                              "black pixels are neither trained on nor scored), object (each image composited on "
                              "the background by its mask) or off (unused)")
    depths: bool = Field(True, description="read the frames' depth_file_path (nerfstudio's: a depth sensor's "
                         "z-depth per frame, .npy or 16-bit PNG, times depth_unit_scale_factor, default 0.001) for "
                         "the depth loss and the depth evaluator; false: unused")

    _ordered_box = field_validator("aabb")(classmethod(_ordered_box))
    _downscale_value = field_validator("downscale", mode="before")(classmethod(_downscale_value))

    _off_unquoted = field_validator("mask_use", mode="before")(classmethod(_off_unquoted))


#: what the ``masks`` option of the capture sources says
MASKS_HELP = ("folder under path of masks, one per image (named as the image, as it with .png added, or as its stem "
              "with .png): object masks (white = object; each image is composited on the background by its mask) "
              "or, with mask_use: ignore, the pixels that count (black = left out of training and scoring)")
#: what the ``mask_use`` option of the capture sources says
MASK_USE_HELP = ("what the masks mark: the object (the field models it alone, as NeRF-synthetic scenes show it) or, "
                 "ignore, the pixels that count, black where something moved or does not belong to the scene "
                 "(people, the photographer's shadow): those pixels are neither trained on nor scored")


class _HeldOutViews(ComponentConfig):
    """What a folder of posed images is loaded with when its own format has no splits: the LLFF hold-out rule,
    the image size and the box."""

    path: str = Field(..., description="the data's folder")  # first in listings; each source says what it holds
    background: Literal["white", "black"] = Field("white", description="colour composited behind transparent pixels")
    downscale: Union[Literal["auto"], int] = Field(
        "auto", description=f"integer area-downscale factor; auto: the least that brings the longer side within "
                            f"{AUTO_MAX_SIDE} px (1 for smaller images)")
    max_images: Optional[int] = Field(None, ge=1, description="first N images per split")
    splits: list[Literal["train", "test"]] = Field(["train", "test"], description="splits to load")
    test_every: int = Field(8, ge=0, description="every Nth image by name is test (LLFF rule); 0: all train")
    aabb: Optional[list[float]] = Field(None, min_length=6, max_length=6,
                                        description="override the scene box xmin..zmax, in the normalised frame")
    gt_mesh: Optional[str] = Field(None, description="a ground-truth mesh in the input's coordinates (a scan "
                                   "registered to the capture, a BlendedMVS scene's mesh), under path unless absolute: "
                                   "moved into the run's frame for the chamfer and depth evaluators")

    _ordered_box = field_validator("aabb")(classmethod(_ordered_box))
    _downscale_value = field_validator("downscale", mode="before")(classmethod(_downscale_value))

    @field_validator("test_every")
    @classmethod
    def _not_one(cls, every: int) -> int:
        if every == 1:
            raise ValueError("1 would hold out every image, leaving none to train on; give 0 (no test split) or >= 2")
        return every


class _CaptureOptions(_HeldOutViews):
    """What a COLMAP capture is loaded with, whoever made its model: splits, images and the normalisation."""

    center: Optional[list[float]] = Field(None, min_length=3, max_length=3,
                                          description="COLMAP point that becomes the origin (default: the box centre)")
    scale: Optional[float] = Field(None, gt=0, description="scene units per COLMAP unit (default: box to [-1, 1])")
    orientation: Literal["vertical", "up", "none"] = Field(
        "vertical", description="up = the direction most perpendicular to the cameras' x axes (vertical), their "
                                "mean up (up), or COLMAP's +Z (none)")
    up: Optional[list[float]] = Field(None, min_length=3, max_length=3,
                                      description="the up direction in COLMAP coordinates, instead of orientation")
    exclude: list[str] = Field([], description="images left out by name (a blurred or misplaced one), as if "
                               "unregistered")
    mask_use: Literal["object", "ignore"] = Field("object", description=MASK_USE_HELP)
    sparse_depth: bool = Field(False, description="a sparse depth map per image from the model's keypoints (the "
                               "z-depth of the 3D point each one observes, at its pixel), as DS-NeRF supervises "
                               "depth: for the depth loss (with train.depth_rays)")

    def capture_options(self) -> dict:
        """These options as keyword arguments of :func:`pipeline.scenes.colmap.load_colmap`."""
        return {"splits": tuple(self.splits), "test_every": self.test_every, "downscale": self.downscale,
                "max_images": self.max_images, "aabb": self.aabb, "center": self.center, "scale": self.scale,
                "orientation": self.orientation, "up": self.up, "exclude": tuple(self.exclude),
                "mask_use": self.mask_use, "sparse_depth": self.sparse_depth}


class NeusConfig(_HeldOutViews):
    """IDR / NeuS / VolSDF folder (DTU, BlendedMVS as NeuS publishes them): image/, mask/ and cameras_sphere.npz
    or cameras.npz (world_mat_i, scale_mat_i). Loaded in the normalised frame, the object inside the unit sphere
    and the box the cube [-1, 1]^3 about it; nls export --frame input gives the scan's world coordinates. Held-out
    views: every test_every-th image, or the folders test/ and val/ of the same layout when there are such."""

    path: str = Field(..., description="scene folder; ${NLS_DATA} expands to the data root")
    downscale: Union[Literal["auto"], int] = Field(
        1, description=f"integer area-downscale factor (DTU's images are 1600x1200: 2 or 4 for a CPU), or auto: "
                       f"the least that brings the longer side within {AUTO_MAX_SIDE} px")
    splits: list[Literal["train", "val", "test"]] = Field(
        ["train", "test"], description="splits to load (val: only from a val/ split folder, as nls export --dataset "
                                       "--dataset-format neus writes it)")
    cameras: Optional[str] = Field(None, description="camera archive under path (default: cameras_sphere.npz, else "
                                   "cameras.npz)")
    images: Optional[str] = Field(None, description="image folder under path (default: image/, else images/); the "
                                  "images sorted by name are the cameras' 0, 1, ...")
    masks: Optional[str] = Field(None, description="mask folder under path, paired with the images by sorted order "
                                 "(default: mask/, else masks/, when there is one)")
    orientation: Literal["vertical", "up", "none"] = Field(
        "vertical", description="the normalised frame is turned so this up direction of the cameras is +Z (as the "
                                "colmap source finds it: vertical or up), or kept as it is (none)")
    mask_use: Literal["object", "ignore", "off"] = Field(
        "object", description="what the masks are: object (each image composited on the background by its mask: "
                              "the object alone, as NeuS trains with masks), ignore (black pixels neither trained on "
                              "nor scored: PSNR inside the mask, as IDR reports it) or off (unused)")
    points: Optional[str] = Field(None, description="a point file in world coordinates under path, whose points in "
                                  "the box are the scene's (nls view, point_fit); default: sparse_pc.ply, "
                                  "sparse_points_interest.ply or sparse_points.ply there, when there is one")

    _off_unquoted = field_validator("mask_use", mode="before")(classmethod(_off_unquoted))

    def load_options(self) -> dict:
        """These options as keyword arguments of :func:`pipeline.scenes.neus.load_neus`, less the folder and
        the background."""
        return {"cameras": self.cameras, "images": self.images, "masks": self.masks, "mask_use": self.mask_use,
                "splits": tuple(self.splits), "test_every": self.test_every, "orientation": self.orientation,
                "downscale": self.downscale, "max_images": self.max_images, "aabb": self.aabb, "points": self.points}


class ColmapConfig(_CaptureOptions):
    """COLMAP capture: images/ and a sparse model (sparse/0 or sparse, .bin or .txt), read with pycolmap (pip
    install 'neural-level-sets[colmap]'). The scene is turned +Z up (found from the cameras), centred and scaled
    so the robust box of the sparse points is the cube [-1, 1]^3; every 8th image by name is held out as test.
    For bounded, object-centric captures: content far outside the box is not modelled."""

    path: str = Field(..., description="capture folder; ${NLS_DATA} expands to the data root")
    images: str = Field("images", description="image folder under path (images_2, images_4: downscaled copies)")
    sparse: Optional[str] = Field(None, description="model folder under path (default: sparse/0, else sparse)")
    masks: Optional[str] = Field(None, description=MASKS_HELP)
    depths: Optional[str] = Field(None, description="folder under path of depth maps, one per image, in the model's "
                                  "units: COLMAP's multi-view stereo (NAME.geometric.bin, of the dense workspace's "
                                  "undistorted images: path: CAPTURE/dense, depths: stereo/depth_maps), .npy or "
                                  "16-bit PNG; for the depth loss and the sensor_depth evaluator")
    undistort: bool = Field(True, description="a model with lens distortion (OPENCV, SIMPLE_RADIAL, ... with a "
                            "non-zero parameter, or a fisheye model) is undistorted once by COLMAP into pinhole "
                            "images, cached under NLS_CACHE, with its masks; false: its cameras are read as their "
                            "pinhole part (fisheye ones refused), with a warning")


class PhotosConfig(_CaptureOptions):
    """Photos without poses (.jpg/.jpeg/.png/.heic, in the folder or in its images/): structure from motion with
    pycolmap (SIFT, matching, incremental mapping, undistortion; pip install 'neural-level-sets[colmap]') makes
    the capture once, cached by the photos' contents, which then loads as the colmap source loads one."""

    path: str = Field(..., description="folder of photos, or a folder holding them in images/; ${NLS_DATA} ok")
    camera_model: Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] = Field(
        "SIMPLE_RADIAL", description="camera model the mapper estimates (distortion is undistorted away after)")
    single_camera: bool = Field(True, description="one camera shared by the photos of each size and lens (by "
                                "their EXIF focal length); false: a camera for every photo")
    matcher: Literal["exhaustive", "sequential", "keyframes"] = Field(
        "exhaustive", description="match every pair (any order of photos), neighbours by name (photos in the order "
                                  "taken), or keyframes: neighbours and every pair of every keyframe_every-th")
    keyframe_every: int = Field(10, ge=2, description="keyframes matching: every pair of every this-many-th photo "
                                "by name is matched too, which joins loops and returns")
    max_image_size: int = Field(1600, ge=64, description="photos are scaled down to this side for SIFT")
    upright: bool = Field(True, description="turn photos by their EXIF orientation tag first, as a photo viewer "
                          "shows them (phones store portrait shots sideways with the tag; COLMAP ignores it)")
    mixed_orientation: Literal["crop", "error"] = Field(
        "crop", description="portrait and landscape shots of one size held two ways: crop every photo to its "
                            "centred square (one camera again, the sides lost), or refuse them")
    mixed_sizes: Literal["cameras", "error"] = Field(
        "cameras", description="photos of several sizes (several cameras): the photos of each size share a camera "
                               "in SfM, and the undistorted photos are fitted to one size (the smallest width and "
                               "height: scaled down, the rest cropped, centred), or refuse them")
    masks: Optional[str] = Field(None, description=MASKS_HELP + "; undistorted with the photos")
    model: Optional[str] = Field(None, description="a sparse model SfM made for these photos with these options "
                                 "(cameras, images, points3D): when they are not cached, it is undistorted instead of "
                                 "running SfM again. A run keeps its model (kept/model) and loads with it")


#: ``matcher: auto`` of a video matches every pair of frames up to this many frames, and keyframes beyond
AUTO_EXHAUSTIVE = 200


class VideoConfig(PhotosConfig):
    """A video file (.mp4/.mov/.m4v/.avi/.mkv/.webm) walked around the object: the video is cut into ``frames``
    stretches of equal motion, the sharpest frame of each is kept (imageio-ffmpeg: pip install
    'neural-level-sets[video]'),
    and the frames are posed by structure from motion as photos are. Frames and poses are cached by the video's
    contents and these options."""

    path: str = Field(..., description="video file; ${NLS_DATA} ok")
    frames: int = Field(100, ge=3, le=5000, description="frames taken: one from each of this many equal stretches "
                        "of the video (more for a long walk around a large scene; SfM time grows with them)")
    spacing: Literal["motion", "time"] = Field(
        "motion", description="stretches of equal motion (the picture's change from frame to frame: a pause gives "
                              "one frame, a fast sweep several) or of equal time")
    sharpest: bool = Field(True, description="take the sharpest frame of each stretch (the variance of its "
                           "Laplacian), not the first: motion blur costs SfM matches and the field detail")
    max_frame_size: int = Field(1920, ge=64, description="frames are scaled down so their longer side is at "
                                "most this many pixels")
    start: float = Field(0.0, ge=0, description="seconds of the video left out at its start")
    end: Optional[float] = Field(None, gt=0, description="the second the part used ends at (None: the video's end)")
    masks: Optional[str] = Field(None, description="object masks of the video's frames (white = object), beside the "
                                 "video or an absolute path: a mask video, frame for frame with the video, or a folder "
                                 "of mask images named by frame number (00000.png: from 0, as SAM 2 numbers them; "
                                 "from 1 when no mask is numbered 0, as ffmpeg does); each frame taken is composited "
                                 "on the background by its mask")
    matcher: Literal["auto", "exhaustive", "sequential", "keyframes"] = Field(
        "auto", description="every pair (exhaustive: n²/2 pairs), neighbours in time and every pair of every "
                            "keyframe_every-th frame (keyframes: n·10 + (n/10)²/2, for long videos; on lego a third "
                            "of the matching time, slightly worse poses), or neighbours only (sequential: one weak "
                            "link splits the model; on lego's test path it kept 50 of 100); auto: exhaustive up to "
                            f"{AUTO_EXHAUSTIVE} frames, keyframes beyond")

    @model_validator(mode="after")
    def _start_before_end(self) -> "VideoConfig":
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g} s) must come after start ({self.start:g} s)")
        return self


class GeometryConfig(ComponentConfig):
    """A mesh or point cloud used directly as geometry (no images): for SDF/occupancy fitting methods.

    The input is normalised (bounding box centred, largest side ``extent``) and saved as the
    ground truth; ``points``/``normals`` come from the file (point cloud) or from area-uniform
    samples of the mesh.
    """

    path: str = Field(..., description="mesh (.obj/.off/.ply/...) or point cloud (.ply/.xyz/.npy); ${NLS_DATA} ok")
    extent: float = Field(1.0, gt=0, description="largest side of the normalised input")
    n_points: int = Field(30000, ge=100, description="surface samples taken from a mesh input")
    box_margin: float = Field(0.1, ge=0, description="scene box = normalised bounds + this margin per side")
    seed: int = Field(0, description="seed of this component's random samples")
