"""Built-in plugin ``scenes``: scene sources."""
