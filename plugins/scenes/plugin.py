"""Built-in plugin ``scenes``: procedural shapes, mesh-rendered scenes, Blender-format folders, IDR / NeuS
folders, COLMAP captures, and photos without poses or a video (structure from motion)."""

from __future__ import annotations

from pathlib import Path

from pipeline.hookspecs import hookimpl
from plugins.scenes import config as C

M = "plugins.scenes.sources"
MESH_SUFFIXES = {".obj", ".off", ".ply", ".stl", ".glb"}


@hookimpl
def nls_register_scene_sources(register):
    register("procedural", f"{M}:build_procedural", config=C.ProceduralConfig,
             produces={"images", "gt_mesh"}, description=C.ProceduralConfig.__doc__)
    register("mesh", f"{M}:build_mesh_scene", config=C.MeshSceneConfig,
             produces={"images", "gt_mesh"}, description=C.MeshSceneConfig.__doc__)
    register("geometry", f"{M}:build_geometry", config=C.GeometryConfig,
             produces={"points", "gt_mesh"}, description=C.GeometryConfig.__doc__)
    register("blender", f"{M}:build_blender", config=C.BlenderConfig,  # (gt_mesh: the folder's gt_mesh.ply, if any)
             produces={"images", "gt_mesh"}, description=C.BlenderConfig.__doc__)
    register("neus", f"{M}:build_neus", config=C.NeusConfig,  # (gt_mesh: scene.gt_mesh; points: a point file)
             produces={"images", "points", "gt_mesh"}, description=C.NeusConfig.__doc__)
    register("colmap", f"{M}:build_colmap", config=C.ColmapConfig,
             produces={"images", "points", "gt_mesh"}, description=C.ColmapConfig.__doc__)
    register("photos", f"{M}:build_photos", config=C.PhotosConfig,
             produces={"images", "points", "gt_mesh"}, description=C.PhotosConfig.__doc__)
    register("video", f"{M}:build_video", config=C.VideoConfig,
             produces={"images", "points", "gt_mesh"}, description=C.VideoConfig.__doc__)


@hookimpl
def nls_scene_type_for_path(path: Path):
    if path.is_dir() and ((path / "transforms_train.json").exists() or (path / "transforms.json").exists()):
        return "blender"
    if path.is_dir() and any((path / sparse / f"cameras{ext}").is_file()
                             for sparse in ("sparse/0", "sparse") for ext in (".bin", ".txt")):
        return "colmap"
    from pipeline.scenes.neus import is_neus_folder

    if is_neus_folder(path):
        return "neus"
    from pipeline.scenes.sfm import MIN_PHOTOS, photo_names
    from pipeline.scenes.video_frames import VIDEO_SUFFIXES
    from plugins.scenes.point_files import is_point_cloud_file
    from plugins.scenes.sources import photo_folder

    if path.is_dir() and len(photo_names(photo_folder(path))) >= MIN_PHOTOS:  # photos without a model
        return "photos"
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if is_point_cloud_file(path):  # before meshes: a .ply may hold points only
        return "geometry"
    if path.suffix.lower() in MESH_SUFFIXES:
        return "mesh"
    return None
