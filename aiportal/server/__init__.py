"""The remote inference service (``aiportal serve``): FastAPI app, job store, workers, client.

See :mod:`aiportal.server.app` for the HTTP API, :mod:`aiportal.server.engine` for where jobs
run (embedded pool or Celery), :mod:`aiportal.server.client` for the client every face uses.
Importing this package is cheap: the web stack loads only with the modules that need it.
"""
