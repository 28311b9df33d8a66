"""Hook implementations of the built-in plugin ``rs_sdf`` (components are added as they are built)."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl  # noqa: F401
