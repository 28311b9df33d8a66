"""Commands that look at finished runs: ``nls report`` (an HTML page), ``nls compare`` (a table over runs)
and ``nls view`` (the 3D viewer in a browser)."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.evaluation import refuse_run_record
from pipeline.types import NLSError


def cmd_report(args) -> int:
    """Run ``nls report``: write a run's HTML report; exit code 0."""
    from pipeline.report import build_report

    if args.output:
        refuse_run_record(Path(args.output), Path(args.run_dir), "report.html", also=("eval.json",))
        suffix = Path(args.output).suffix
        if suffix.lower() not in (".html", ".htm"):  # it was written as HTML whatever the name (x.pdf)
            raise NLSError(f"-o {args.output}: nls report writes an HTML page, so give a file ending in .html "
                           f"or .htm (got {suffix or 'no extension'!s}), e.g. "
                           f"{Path(args.output).with_suffix('.html') if suffix else args.output + '.html'}; "
                           f"a browser's print dialog makes a PDF of it")
    out = build_report(Path(args.run_dir), Path(args.output) if args.output else None, host=args.host,
                       use_model=not args.no_model, progress=not args.quiet)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser)")
    return 0


def cmd_compare(args) -> int:
    """Run ``nls compare``: compare runs in the chosen format; exit code 0."""
    from pipeline.compare import run_compare

    if args.output:
        for run_dir in args.run_dirs:
            refuse_run_record(Path(args.output), Path(run_dir), None, also=("eval.json",))
    return run_compare([Path(p) for p in args.run_dirs], args.format, Path(args.output) if args.output else None)


def cmd_view(args) -> int:
    """Run ``nls view``: serve the viewer until it is stopped; exit code 0."""
    from pipeline.viewer import serve

    return serve(Path(args.run_dir), host=args.host, port=args.port, resolution=args.resolution,
                 seconds=args.seconds)
