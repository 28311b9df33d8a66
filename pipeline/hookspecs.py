"""Every hook an nls plugin can implement. One hook per extension point.

A plugin is any module or object with functions decorated by :data:`hookimpl`::

    from pipeline.hookspecs import hookimpl

    @hookimpl
    def nls_register_fields(register):
        register("my_field", "my_plugin.field:build", config=MyFieldConfig,
                 produces={"sdf", "rgb"})

Every ``nls_register_<stage>`` hook receives a ``register`` callable with the
signature ``register(name, factory, *, config=ComponentConfig, produces=(),
consumes=(), description="")``:

* ``name`` is the ``type:`` a scene file selects the component by;
* ``factory`` is a callable or a lazy ``"module:attr"`` string, called as
  ``factory(options, ctx)`` with the validated config and a build context
  (:class:`pipeline.build.BuildContext`);
* ``config`` is a pydantic model (subclass of ``ComponentConfig``) whose field
  descriptions are shown by ``nls plugins --all``;
* ``produces`` / ``consumes`` name quantities (``sdf``, ``occupancy``, ``density``,
  ``rgb``, ...). ``consumes`` is a list of alternatives: a string or a set of
  strings that must all be available. The pipeline refuses a scene whose chain
  does not fit before any training starts.

Results of register hooks are collected from every plugin; the order in which
pluggy calls plugins never matters. Two plugins registering the same name for one
stage is an error naming both.
"""

from __future__ import annotations

import pluggy

PROJECT = "nls"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nls_register_scene_sources(register):
    """Register scene sources: things that turn a ``scene:`` block into :class:`pipeline.types.SceneData`.

    The factory returns a callable ``load() -> SceneData`` or the ``SceneData`` itself.
    ``produces`` says what the scene offers: ``images``, ``points``, ``gt_mesh``. For posed images
    of a mesh, ``pipeline.scenes.mesh_render.render_mesh_views`` renders them into a Blender-layout
    folder that ``pipeline.scenes.blender.load_blender`` reads back as ``SceneData``.

    Example::

        @hookimpl
        def nls_register_scene_sources(register):
            register("blender", "plugins.scenes.sources:build_blender", config=BlenderConfig,
                     produces={"images", "gt_mesh"})
    """


@hookspec
def nls_register_fields(register):
    """Register geometry fields: ``torch.nn.Module`` mapping points ``(N,3)`` to named outputs.

    The built module's ``forward(x (N,3), d (N,3) | None) -> dict[str, Tensor]`` returns
    the quantities it declares in ``produces`` (``sdf (N,)``, ``occupancy (N,)``,
    ``density (N,)``, ``rgb (N,3)``). These shapes are checked on every call: another type or
    shape is an error naming the component (so is an exception it raises). Optional: an int
    ``cpu_query_chunk``, the points per call when a grid is sampled on CPU
    (:func:`pipeline.mesh.query_chunk`; MLP fields are faster with small calls).

    Example::

        @hookimpl
        def nls_register_fields(register):
            register("dense_grid", "plugins.ngp.fields:build_dense_grid",
                     config=DenseGridConfig, produces={"density", "rgb", "voxels"})
    """


@hookspec
def nls_register_certifiers(register):
    """Register occupancy→SDF certifiers: turn a field's ``occupancy`` into an ``sdf``.

    The built object is a module (or a plain function) ``certify(outputs: dict) -> dict`` that
    adds ``sdf`` (and may replace ``occupancy``). Declare ``consumes={"occupancy"}``,
    ``produces={"sdf"}``. One with the attribute ``wants_query = True`` is called
    ``certify(outputs, x=points (N,3), field=the field module)``, for certifiers that look at the
    field around the points (rs_sdf smooths its voxel grid).

    Example::

        @hookimpl
        def nls_register_certifiers(register):
            register("randomized_smoothing", "plugins.rs_sdf.certifier:build_randomized_smoothing",
                     consumes=["occupancy"], produces={"sdf"})
    """


@hookspec
def nls_register_density_maps(register):
    """Register density maps: monotone maps from ``sdf`` or ``occupancy`` to volume ``density``.

    The built module (or plain function) is called ``map(outputs: dict) -> dict`` and adds
    ``density (N,)``.

    Example::

        @hookimpl
        def nls_register_density_maps(register):
            register("laplace", "plugins.ngp.density:build_laplace",
                     consumes=["sdf"], produces={"density"})
    """


@hookspec
def nls_register_renderers(register):
    """Register renderers: turn the field chain into images along camera rays.

    The built object (an ``nn.Module`` if it holds state to checkpoint) has:

    * ``render_rays(origins (R,3), dirs (R,3), query, *, training: bool, background: (R,3) | None)
      -> dict`` returning at least ``rgb (R,3)``, ``opacity (R,1)``, ``depth (R,1)``, where
      ``query(x (S,3), d (S,3) | None) -> dict`` evaluates the whole field chain; ``background``
      is given when the run trains on random backgrounds;
    * ``render_image(cameras, i, query, *, chunk, supersample=1) -> dict`` of ``(H,W,C)`` images
      with the same keys (``supersample`` is passed only when ``eval.supersample > 1``: average
      s x s sub-pixel rays). ``pipeline.rendering.render_image`` does this in chunks and reports each to
      the evaluation's progress bar; a renderer with a loop of its own may call
      ``pipeline.progress.report_pixels(done, total)`` after each chunk to do the same.

    Optional: ``update(step, query, *, every, warmup)``, called before every training step (e.g. to
    refresh an occupancy grid); a ``num_samples`` entry in ``render_rays``' result (samples taken,
    logged as ``samples_per_ray``); the samples themselves, ``weights``, ``t_starts`` and ``t_ends``
    as padded (R,S) rows or packed (K,) with ``ray_indices`` (K,) (``pipeline.rendering.packed_samples``
    reads either), for losses on each ray's weights such as ``depth`` with ``kind: ds_nerf``; and
    ``cfg.random_background`` (True: training composites the images over random colours and passes
    them as ``background``).

    Example::

        @hookimpl
        def nls_register_renderers(register):
            register("volume", "plugins.ngp.renderer:build_volume",
                     consumes=[{"density", "rgb", "images"}], produces={"render", "depth"})
    """


@hookspec
def nls_register_mesh_extractors(register):
    """Register mesh extractors: produce a ``trimesh.Trimesh`` from the trained field.

    The built object has ``extract(chain, *, bbox, resolution, level, device) -> trimesh.Trimesh``
    (bbox, resolution and level may be None: the extractor's own option then applies). Setting
    ``mesh.metadata["quantity"]`` and ``mesh.metadata["level"]`` lets ``nls export`` say which
    level set it wrote.

    Example::

        @hookimpl
        def nls_register_mesh_extractors(register):
            register("marching_cubes", "plugins.ngp.extract:build_marching_cubes",
                     consumes=["sdf", "density", "occupancy"], produces={"mesh"})
    """


@hookspec
def nls_register_losses(register):
    """Register loss terms added to the training objective.

    The built module (or plain function) is called ``loss(batch: dict, out: dict, model) -> Tensor``
    (a scalar, already weighted). ``batch`` holds ``step`` and, for posed-image scenes, the ray
    batch ``origins (R,3)``, ``dirs (R,3)``, ``rgb (R,3)`` (the target colours) and ``alpha (R,1)``
    (or None), with ``image_index (R,)`` and, where the images have depth maps, ``depth (R,1)`` (the measured
    distance along each ray, 0 for none); scenes with a training dataset give a collated mini-batch of its items instead, and
    point-cloud scenes only ``step``. ``out`` is the renderer's result for the rays (empty without
    rays); ``model`` is the :class:`pipeline.system.System` (``model.chain(x, d)`` queries the field).

    Example::

        @hookimpl
        def nls_register_losses(register):
            register("eikonal", "plugins.ngp.losses:build_eikonal",
                     config=EikonalConfig, consumes=["sdf"])
    """


@hookspec
def nls_register_evaluators(register):
    """Register evaluators: compute metrics after training.

    As for every stage, the factory is called ``factory(options, ctx)``; the object it returns
    is called ``evaluate(ctx: EvalContext) -> dict[str, float]`` (a plain function will do).
    :class:`pipeline.evaluate.EvalContext` gives ``ctx.cfg`` (the scene config),
    ``ctx.scene.gt_mesh`` (the path of the ground-truth mesh, or ``None``; read it with
    ``pipeline.scenes.mesh_render.load_mesh``), ``ctx.scene.splits``,
    ``ctx.system`` (the trained model), ``ctx.files_dir`` (the folder for an evaluator's own files: the
    run folder while training evaluates, ``<stem>_renders/`` beside ``nls eval``'s JSON, so a re-evaluation
    never writes over what training saved; ``ctx.renders_root`` likewise for images), ``ctx.run.path``,
    ``ctx.device``, ``ctx.mesh()`` (the extracted mesh) and ``ctx.renders()`` (``[(pred, gt)]``
    float ``(H,W,3)`` images of the eval split); the last two are computed once and shared by
    all evaluators. ``ctx.masks()`` gives each render's ``(H, W)`` bool pixels that count, or None
    (scenes with ignore masks: score over them, e.g. ``pipeline.metrics.psnr(pred, gt, mask)``). ``consumes`` names what it needs: ``images`` or ``mesh`` are checked with
    the rest of the chain, so a scene that cannot provide them is refused before training;
    so is ``gt_mesh``: a scene source that never offers it is refused the same way, and one that
    declares it but has none for this scene makes the evaluator skip, with a printed reason.
    ``metrics`` ({name: note}) says what each metric measures and in what unit; a run records the
    notes beside its values (summary.json, eval.json), and ``nls eval``, ``nls compare``, ``nls report``
    and ``nls plugins NAME`` show them. A name ending in ``@`` covers the metrics it starts, with
    ``{at}`` in its note standing for the rest of the name (``fscore@`` for ``fscore@0.01``). A value
    ``{"note": ..., "better": "higher" or "lower"}`` also says which way is better: ``nls compare`` marks
    the best run by it (without it, by the metric's name: psnr, iou ... higher; chamfer, loss ... lower).

    Example::

        @hookimpl
        def nls_register_evaluators(register):
            register("chamfer", "plugins.ngp.evaluate:build_geometry_metrics",
                     consumes=[{"mesh", "gt_mesh"}],
                     metrics={"chamfer_l1": "×10³ in the GT's frame: ...",
                              "fscore@": "F-score at distance {at}; 0..1",
                              "my_error": {"note": "mean error, mm", "better": "lower"}})
    """


@hookspec
def nls_add_commands(subparsers):
    """Add CLI subcommands to ``nls``.

    ``subparsers`` is the ``argparse`` sub-parser action; set ``func`` on your parser
    with ``set_defaults(func=...)``; it is called with the parsed namespace and must
    return an exit code. Keep imports inside the function: ``nls --help`` must stay cheap.

    Example::

        @hookimpl
        def nls_add_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(func=lambda args: print("hello") or 0)
    """


@hookspec(firstresult=True)
def nls_scene_type_for_path(path):
    """Name the scene-source type that can read ``path`` (a directory or file), or ``None``.

    The first plugin that recognises the path wins; used when a scene file gives only
    ``scene: {path: ...}`` without ``type:``.

    Example::

        @hookimpl
        def nls_scene_type_for_path(path):
            if (path / "transforms_train.json").exists():
                return "blender"
    """


#: Register hooks by stage, in pipeline order (used by the host and the docs test).
REGISTER_HOOKS: dict[str, str] = {
    "scene": "nls_register_scene_sources",
    "field": "nls_register_fields",
    "certifier": "nls_register_certifiers",
    "density": "nls_register_density_maps",
    "renderer": "nls_register_renderers",
    "extractor": "nls_register_mesh_extractors",
    "loss": "nls_register_losses",
    "evaluator": "nls_register_evaluators",
}
