"""Extension points: their types (the protocols a hook satisfies, with their typed inputs) and the
one place they are resolved from import paths (`resolve`)."""

from streamrl.hooks.resolve import ResolveError, resolve

__all__ = ["ResolveError", "resolve"]
