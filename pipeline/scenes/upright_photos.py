"""Photos as a viewer shows them, before structure from motion: turned upright by their EXIF orientation tag, and
cropped to one size when portrait and landscape shots are mixed.

Phones store a portrait shot as the sensor's landscape pixels plus an EXIF tag that says how to turn them. COLMAP
reads the pixels as stored and ignores the tag, on purpose (one camera for every shot), so a capture of such photos
comes out sideways: each camera's up is the photo's side, the scene's up (:func:`pipeline.scenes.colmap.scene_up`)
is found from the wrong axes, and renders, the viewer and the report show the scene on its side. Turning the photos
upright first keeps all of them in the orientation the photographer saw.

A phone that turns the pixels itself (or photos turned upright here) gives portrait shots of W×H among landscape
ones of H×W. They are one lens held two ways, but COLMAP takes another image size for another camera, and a split
is loaded at one size. Cropping each such photo to its centred square of side min(W, H) makes them one camera
again: the crop keeps the principal point at the centre (where SfM places it), and radial distortion does not
change under a quarter turn about it. The price is the sides of every such photo (a quarter of a 4:3 photo's
pixels).

Any other mix of sizes is taken as photos of several cameras (``mixed_sizes: cameras``, the default): the photos
of each size share one camera in structure from motion (:func:`pipeline.scenes.sfm.run_sfm`), and their
undistorted images are fitted to one size afterwards (:func:`pipeline.scenes.sfm.undistorted_fits`).
``mixed_sizes: error`` refuses them, naming the odd photos. Photos of one size whose EXIF focal lengths differ
(a phone's wide, main and telephoto lenses, or its digital zoom, by the 35 mm equivalent) are another camera each
too, and need no fitting beyond the few
pixels their undistortion may differ by.

HEIC/HEIF photos (an iPhone's default) are read with pillow-heif (the ``heic`` extra), which turns them as
their HEIF transforms say, and posed from JPEG copies named by their stem (``IMG_0001.HEIC`` is posed, split
and excluded as ``IMG_0001.jpg``), since COLMAP does not read them.

Copies are written only when something changes, as JPEG (quality 95, no chroma subsampling) or PNG as the
original, and keep the other EXIF tags, since COLMAP takes its first focal length from them. A cropped copy's
focal-length tags are scaled so the focal length in pixels they imply stays the same: the 35 mm equivalent by
the ratio of the diagonals (its definition), the lens's own focal length by the ratio of the longer sides (COLMAP
reads it with the sensor's width).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence

from pipeline.types import DataError

if TYPE_CHECKING:
    import numpy as np

#: EXIF tags: Orientation (IFD0), the Exif sub-IFD, FocalLength (mm) and FocalLengthIn35mmFilm in it
ORIENTATION, EXIF_IFD, FOCAL_LENGTH, FOCAL_35MM = 0x0112, 0x8769, 0x920A, 0xA405
#: EXIF tags of the Exif sub-IFD: ExposureTime (s), FNumber, ISOSpeedRatings (PhotographicSensitivity)
EXPOSURE_TIME, F_NUMBER, ISO_SPEED = 0x829A, 0x829D, 0x8827
#: JPEG quality of the copies (4:4:4: no chroma subsampling)
COPY_QUALITY = 95
#: photo suffixes COLMAP does not read, posed from JPEG copies (lower case)
CONVERTED = (".heic", ".heif")


@dataclass
class PhotoPlan:
    """What :func:`plan_photos` found for the photos ``names`` of a folder.

    sizes: name -> (width, height) as the copies will have them (upright when ``upright``, before any crop).
    turned: name -> EXIF orientation (2-8) of the photos it turns (or mirrors); they are turned upright in the
        copies.
    crops: (width, height) -> the centred square a photo of that size is cropped to, for the sizes that are held
        two ways (portrait and landscape shots of one camera).
    renamed: name -> the copy's name, for photos COLMAP does not read (HEIC: ``IMG_1.HEIC`` -> ``IMG_1.jpg``).
    lenses: name -> its lens by its EXIF focal-length tags (:func:`lens_of`), for the photos that have them: a
        phone's lenses (0.5x, 1x, 3x) and its digital zoom give photos of one size that are not one camera.
    assumed: the photos without focal-length tags (an edited export loses them) that were given the lens of the
        tagged photos of their posed size, where those all share one lens (:meth:`assume_lenses`).
    exposures: name -> (relative exposure, its EXIF settings in words) by :func:`exposure_of`, for the photos
        that have the tags. Not part of :meth:`facts`, which keys the SfM cache: a capture posed before exposures
        were read keeps its entry.
    """

    sizes: dict[str, tuple[int, int]]
    turned: dict[str, int] = field(default_factory=dict)
    crops: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    lenses: dict[str, str] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)
    exposures: dict[str, tuple[float, str]] = field(default_factory=dict)

    @property
    def needed(self) -> bool:
        """Whether copies must be made (some photo is turned, cropped or converted)."""
        return bool(self.turned or self.crops or self.renamed)

    def crop_of(self, name: str) -> Optional[tuple[int, int]]:
        """The (width, height) photo ``name`` is cropped to, centred, or None."""
        return self.crops.get(self.sizes[name])

    def posed_size(self, name: str) -> tuple[int, int]:
        """(width, height) of photo ``name`` as structure from motion sees it: upright, then cropped."""
        return self.crop_of(name) or self.sizes[name]

    def camera_of(self, name: str) -> tuple[int, int, Optional[str]]:
        """(width, height, lens or None) of photo ``name``'s camera: its posed size and :func:`lens_of`."""
        return (*self.posed_size(name), self.lenses.get(name))

    def assume_lenses(self) -> None:
        """Give each photo without a lens the lens of the tagged photos of its posed size, where those all share one
        (:attr:`assumed` names them): a photo that lost its EXIF in an edit is most likely of that lens, and one
        camera fewer constrains structure from motion better. Where the tagged photos of its size were taken
        with several lenses, it is left a camera of its own."""
        by_size: dict[tuple[int, int], set[str]] = {}
        for name, lens in self.lenses.items():
            by_size.setdefault(self.posed_size(name), set()).add(lens)
        for name in self.sizes:
            found = by_size.get(self.posed_size(name), set())
            if name not in self.lenses and len(found) == 1:
                self.lenses[name] = next(iter(found))
                self.assumed.append(name)

    def exposure_spread(self) -> Optional[tuple[float, str, str]]:
        """(brightest / darkest relative exposure, the darkest photo, the brightest) over the photos with
        exposure tags; None with fewer than two."""
        if len(self.exposures) < 2:
            return None
        dark = min(self.exposures, key=lambda n: self.exposures[n][0])
        bright = max(self.exposures, key=lambda n: self.exposures[n][0])
        return self.exposures[bright][0] / self.exposures[dark][0], dark, bright

    def cameras(self) -> list[list[str]]:
        """The photos grouped by :meth:`camera_of` (size and lens), in the order of their first photo: one camera
        each."""
        groups: dict[tuple, list[str]] = {}
        for name in self.sizes:
            groups.setdefault(self.camera_of(name), []).append(name)
        return list(groups.values())

    def size_count(self) -> int:
        """How many posed sizes the photos have (more than one: they are fitted to one after undistortion)."""
        return len({self.posed_size(n) for n in self.sizes})

    def posed_names(self, names: Sequence[str]) -> list[str]:
        """``names`` as structure from motion sees them: the copies' names."""
        return [self.renamed.get(n, n) for n in names]

    def facts(self) -> dict:
        """JSON facts for the run record, each only when it applies: ``{"turned": n, "crop": [w, h] (or a list of
        them), "converted": n, "cameras": [[w, h, lens or None, photos], ...] (photos of several sizes or
        lenses, a camera each), "lens_assumed": n (photos given their size's one lens, :meth:`assume_lenses`)}``."""
        crops = sorted({tuple(c) for c in self.crops.values()})
        groups = self.cameras()
        return {**({"turned": len(self.turned)} if self.turned else {}),
                **({"crop": list(crops[0]) if len(crops) == 1 else [list(c) for c in crops]} if crops else {}),
                **({"converted": len(self.renamed)} if self.renamed else {}),
                **({"cameras": [[*self.camera_of(g[0]), len(g)] for g in groups]} if len(groups) > 1 else {}),
                **({"lens_assumed": len(self.assumed)} if self.assumed else {})}


def _exif_number(value) -> Optional[float]:
    """An EXIF tag's value (a number or rational) as a positive finite float; None when it is missing or not one."""
    try:
        value = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if 0 < value < float("inf") else None


def lens_of(image) -> Optional[str]:
    """The lens an open PIL image was taken with, by its EXIF focal length (mm, to 0.1) and 35 mm equivalent:
    ``"6.9 mm (48 mm equiv.)"``, either alone, or None when it has neither. The equivalent tells a phone's
    digital zoom (a crop of one lens: the same focal length) apart."""
    sub = image.getexif().get_ifd(EXIF_IFD)
    mm, equiv = (_exif_number(sub.get(key)) for key in (FOCAL_LENGTH, FOCAL_35MM))
    mm, equiv = (None if v is None else round(v, 1) for v in (mm, equiv))
    parts = [f"{mm:g} mm" if mm else "", f"{equiv:g} mm equiv." if equiv else ""]
    return (f"{parts[0]} ({parts[1]})" if mm and equiv else parts[0] or parts[1]) or None


def exposure_of(image) -> Optional[tuple[float, str]]:
    """The exposure an open PIL image was taken at by its EXIF tags, relative to the light on the sensor: exposure
    time (s) x ISO / f-number^2 (pixel values of one surface scale with it, before the camera's tone curve), and
    the settings in words (``"1/60 s, f/1.8, ISO 100"``). Without an f-number (phones have one fixed aperture) or an
    ISO, those factors are left out; None without an exposure time."""
    sub = image.getexif().get_ifd(EXIF_IFD)
    iso = sub.get(ISO_SPEED)
    if isinstance(iso, (tuple, list)):  # ISO is sometimes a sequence
        iso = iso[0] if iso else None
    seconds, f, iso = _exif_number(sub.get(EXPOSURE_TIME)), _exif_number(sub.get(F_NUMBER)), _exif_number(iso)
    if seconds is None:
        return None
    words = [f"1/{1 / seconds:.0f} s" if seconds < 1 else f"{seconds:g} s"]
    words += [f"f/{f:g}"] if f else []
    words += [f"ISO {iso:g}"] if iso else []
    return seconds * (iso or 1.0) / (f or 1.0) ** 2, ", ".join(words)


def exif_orientation(image) -> int:
    """The EXIF orientation (1–8; 1 = as stored) of an open PIL image, 1 when it has none or a bad one."""
    value = image.getexif().get(ORIENTATION, 1)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def open_photo(path: Path):
    """``PIL.Image.open(path)``, with pillow-heif's opener for HEIC/HEIF files (DataError naming the extra when
    it is not installed)."""
    from PIL import Image

    if path.suffix.lower() in CONVERTED:
        try:
            import pillow_heif
        except ImportError:
            raise DataError(f"{path}: reading HEIC/HEIF photos needs pillow-heif, which is not installed; pip install "
                            f"'neural-level-sets[heic]' (or pillow-heif), or export the photos as JPEG") from None
        pillow_heif.register_heif_opener()
    return Image.open(path)


def _renamed(names: Sequence[str]) -> dict[str, str]:
    """name -> ``<stem>.jpg`` of the photos COLMAP does not read; DataError when a copy's name is taken."""
    renamed = {n: str(Path(n).with_suffix(".jpg")) for n in names if Path(n).suffix.lower() in CONVERTED}
    taken: dict[str, str] = {}
    for name in names:
        copy = renamed.get(name, name)
        if copy.lower() in taken:
            raise DataError(f"{name} and {taken[copy.lower()]} would both be posed as {copy} (HEIC photos are posed "
                            f"from JPEG copies named by their stem); rename or leave out one of them")
        taken[copy.lower()] = name
    return renamed


def plan_photos(folder: Path, names: Sequence[str], *, upright: bool = True,
                mixed_orientation: Literal["crop", "error"] = "crop",
                mixed_sizes: Literal["cameras", "error"] = "cameras") -> PhotoPlan:
    """Read the headers of the photos ``names`` in ``folder`` and decide their copies (see the module docstring).
    DataError when a size is held two ways and ``mixed_orientation`` is ``error``, or when the photos are of
    several sizes (after those crops) and ``mixed_sizes`` is ``error``."""
    sizes, turned, lenses, exposures, unreadable = {}, {}, {}, {}, []
    for name in names:
        try:
            with open_photo(folder / name) as im:
                w, h = im.size
                turn = exif_orientation(im) if upright else 1
                lens = lens_of(im)
                exposure = exposure_of(im)
        except (OSError, ValueError, SyntaxError) as exc:  # (PIL's UnidentifiedImageError is an OSError)
            unreadable.append(f"{name} ({type(exc).__name__}: {exc})" if len(unreadable) < 3 else name)
            continue
        if turn != 1:
            turned[name] = turn
        if lens is not None:
            lenses[name] = lens
        if exposure is not None:
            exposures[name] = exposure
        sizes[name] = (h, w) if turn in (5, 6, 7, 8) else (w, h)  # 5–8 swap the sides
    if unreadable:
        raise DataError(f"{folder}: {len(unreadable)} of the {len(names)} photos cannot be read as images (empty, "
                        f"damaged or not a photo): {'; '.join(unreadable[:8])}{' ...' if len(unreadable) > 8 else ''}; "
                        f"remove them from the folder or replace them")
    groups: dict[tuple[int, int], list[str]] = {}
    for name, size in sizes.items():
        groups.setdefault(size, []).append(name)
    two_ways = {(w, h): (min(w, h), min(w, h)) for w, h in groups if w != h and (h, w) in groups}
    if two_ways and mixed_orientation == "error":
        raise DataError(_sizes_error(folder, groups, "set mixed_orientation: crop to crop every such photo to its "
                                                     "centred square, or "))
    plan = PhotoPlan(sizes, turned, two_ways, _renamed(names), lenses, exposures=exposures)
    plan.assume_lenses()
    if plan.size_count() > 1 and mixed_sizes == "error":
        raise DataError(_sizes_error(folder, groups, "set mixed_sizes: cameras to pose each size with a camera of "
                                                     "its own, or "))
    return plan


def _sizes_error(folder: Path, groups: dict[tuple[int, int], list[str]], how: str) -> str:
    """The DataError text for photos of several sizes (upright): the commonest, the others by name, ``how`` to go
    on (an option to set, ending in "or "), then the ways that need no option."""
    common = max(groups, key=lambda k: len(groups[k]))
    odd = [f"{n} ({w}x{h})" for (w, h), ns in groups.items() if (w, h) != common for n in ns]
    return (f"{folder}: the photos are not all one size: {len(groups[common])} are {common[0]}x{common[1]} (WxH), "
            f"and {', '.join(odd[:6])}"
            f"{' ...' if len(odd) > 6 else ''} {'is' if len(odd) == 1 else 'are'} not; {how}crop or scale them to "
            f"one size, or leave them out")


def _scaled_focal_tags(exif, old: tuple[int, int], new: tuple[int, int]) -> None:
    """Scale ``exif``'s focal-length tags in place for a crop from size ``old`` to ``new`` (module docstring)."""
    sub = exif.get_ifd(EXIF_IFD)
    diagonal = ((old[0] ** 2 + old[1] ** 2) / (new[0] ** 2 + new[1] ** 2)) ** 0.5
    if isinstance(sub.get(FOCAL_35MM), (int, float)) and sub[FOCAL_35MM] > 0:
        sub[FOCAL_35MM] = max(1, min(65535, round(float(sub[FOCAL_35MM]) * diagonal)))  # a SHORT
    if isinstance(sub.get(FOCAL_LENGTH), (int, float)) and sub[FOCAL_LENGTH] > 0:
        sub[FOCAL_LENGTH] = float(sub[FOCAL_LENGTH]) * max(old) / max(new)


def _transposed(image, orientation: int):
    """The PIL ``image`` as a viewer shows pixels stored under EXIF ``orientation`` (1-8)."""
    from PIL import Image

    t = Image.Transpose
    how = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
           7: t.TRANSVERSE, 8: t.ROTATE_90}.get(orientation)
    return image.copy() if how is None else image.transpose(how)  # (a new image either way)


def _centre_crop(image, size: Optional[tuple[int, int]]):
    """The PIL ``image`` cropped to its centred ``size`` (W, H), or as it is (None, or that size already)."""
    if size is None or image.size == tuple(size):
        return image
    (w, h), (cw, ch) = image.size, size
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def shape_mask(plan: PhotoPlan, name: str, mask: "np.ndarray") -> "np.ndarray":
    """(H, W) uint8 ``mask`` of photo ``name`` as its copy is: turned and cropped as the photo. A mask is taken
    as drawn on the photo as a viewer shows it, unless only the stored pixels' size fits it (sides swapped), when
    it is turned as its photo is. DataError when neither size fits."""
    import numpy as np
    from PIL import Image

    w, h = plan.sizes[name]
    turn = plan.turned.get(name, 1)
    image = Image.fromarray(mask)
    if mask.shape != (h, w) and turn in (5, 6, 7, 8) and mask.shape == (w, h):
        image = _transposed(image, turn)
    if image.size != (w, h):
        raise DataError(f"the mask of {name} is {mask.shape[1]}x{mask.shape[0]} (WxH), but the photo is {w}x{h} as "
                        f"a viewer shows it; a mask must be its photo's size")
    return np.asarray(_centre_crop(image, plan.crop_of(name)))


def write_copies(folder: Path, names: Sequence[str], out: Path, plan: PhotoPlan, progress: bool = True) -> None:
    """Write the photos ``names`` of ``folder`` into ``out`` under their posed names (:meth:`PhotoPlan.posed_names`),
    turned upright (those in ``plan.turned``), cropped by ``plan.crops`` (centred) and converted to JPEG (those in
    ``plan.renamed``); EXIF kept, focal tags scaled by a crop."""
    from pipeline.progress import StepProgress

    out.mkdir(parents=True, exist_ok=True)
    label = ("cropping portrait and landscape photos" if plan.crops else "turning photos upright" if plan.turned
             else "converting photos to JPEG")
    with StepProgress(len(names), 0, label, enabled=progress) as bar:
        for k, name in enumerate(names):
            with open_photo(folder / name) as im:
                im.load()
                exif = im.getexif()
                image = _transposed(im, plan.turned.get(name, 1))
            exif.pop(ORIENTATION, None)  # (the pixels are as a viewer shows them now)
            crop = plan.crop_of(name)
            if crop and image.size != crop:
                _scaled_focal_tags(exif, image.size, crop)
                image = _centre_crop(image, crop)
            copy = plan.renamed.get(name, name)
            if Path(copy).suffix.lower() in (".jpg", ".jpeg"):
                image.convert("RGB").save(out / copy, quality=COPY_QUALITY, subsampling=0, exif=exif)
            else:
                image.save(out / copy, exif=exif)
            bar.advance(k + 1, name)


def check_model_sizes(model: Path, plan: PhotoPlan) -> None:
    """DataError when the cameras of the sparse ``model`` (kept by an earlier run) are not the photos' sizes as
    ``plan`` makes them: the model was made from the photos another way (as stored, before ``upright``)."""
    from pipeline.scenes.colmap import _pycolmap

    rec = _pycolmap(model).Reconstruction(model)
    original = {copy: name for name, copy in plan.renamed.items()}
    for im in rec.images.values():
        name = original.get(im.name, im.name)
        if name not in plan.sizes:  # (not one of these photos: undistortion names it)
            continue
        cam, want = rec.cameras[im.camera_id], plan.posed_size(name)
        if (int(cam.width), int(cam.height)) != tuple(want):
            raise DataError(f"{model}: the model's camera for {im.name} is {cam.width}x{cam.height}, but the photo "
                            f"is {want[0]}x{want[1]} as it is loaded now (turned upright by its EXIF orientation or "
                            f"cropped to one size); the model was made from the photos as stored: set "
                            f"upright: false (and mixed_orientation: error) to load it, or leave model out")
