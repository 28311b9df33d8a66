"""Every nls method is a plugin; the built-ins live here."""
