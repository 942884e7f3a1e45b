"""The operations console: server-rendered pages (Jinja2) with a little vanilla JavaScript, served under
``/console`` by the API itself. See :mod:`service.console.routes`."""

from service.console.routes import router, static_files

__all__ = ["router", "static_files"]
