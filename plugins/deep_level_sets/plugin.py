"""Hook implementations of the built-in plugin ``deep_level_sets`` (components are added as they are built)."""

from __future__ import annotations

from pipeline.hookspecs import hookimpl  # noqa: F401
