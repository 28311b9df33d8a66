"""``nls render``: render a split of a run with its trained field, and a turntable video."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.run_loading import open_run


def cmd_render(args) -> int:
    """Run ``nls render``: render a split of a run (and a turntable with ``--spiral``); exit code 0."""
    from pipeline.evaluate import EvalContext, check_can_render

    from pipeline.runs import check_writable

    ld = open_run(args)
    check_can_render(ld.scene, ld.system, args.split)  # before any folder is made
    out_root = Path(args.output) if args.output else ld.run.renders_dir
    check_writable(out_root / args.split)
    given = {"supersample": args.supersample, "max_images": args.max_images, "every": args.every}
    ld.cfg.eval = ld.cfg.eval.model_copy(update={k: v for k, v in given.items() if v is not None})
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, split=args.split,
                      out_dir=out_root / args.split, save_depth=args.depth, progress=not args.quiet)
    pairs = ctx.renders()
    raw = " and depth/opacity .npy arrays" if args.depth else ""
    print(f"wrote {len(pairs)} {args.split} renders (prediction | ground truth | depth){raw} to {out_root / args.split}")
    if args.spiral:
        from pipeline.video import render_turntable

        path = render_turntable(ld, args.spiral, out_root, progress=not args.quiet,
                                supersample=ld.cfg.eval.supersample)
        print(f"wrote turntable video: {path}")
    return 0
