"""nls core: stages, plugin host, config, runs and CLI. No method-specific code lives here."""

__version__ = "0.1.0"
