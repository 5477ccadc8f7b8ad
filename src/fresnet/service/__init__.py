"""``fresnet serve``: the HTTP API (FastAPI) and the web page over face galleries (docs/service.md).

Nothing in the library imports this package; the command line imports it only for ``fresnet serve``.
"""
