"""``tunelab serve``: what tunelab trains, behind the API its users' clients already speak.

* :mod:`tunelab.serve.registry` -- runs loaded once; runs over the same base share it (AdapterSet);
  the request's ``model`` picks the run (or the base).
* :mod:`tunelab.serve.scheduler` -- one queue, dynamic batching, mixed-adapter batches where the
  methods allow, bounded queue (429).
* :mod:`tunelab.serve.engine` -- batched generation with the KV cache; per-row stop conditions,
  sampling, seeds and streams.
* :mod:`tunelab.serve.app` -- the FastAPI app: OpenAI-compatible endpoints, errors, auth, limits,
  metrics, the playground page.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from tunelab.errors import UserError


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(runs: Sequence[str], *, base: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, limits: dict | None = None, log: Callable[[str], None] = print) -> None:
    """Load the runs, then serve them until interrupted (``tunelab serve``)."""
    import uvicorn

    from tunelab.serve.app import create_app
    from tunelab.serve.registry import load_models, parse_model_args
    from tunelab.serve.schemas import ServeLimits

    if not runs and base is None:
        raise UserError("serve: give at least one run directory (or --base MODEL)")
    settings = ServeLimits(**(limits or {}))
    models = load_models(parse_model_args(runs), base, log=log)
    if not is_loopback(host) and api_key is None:
        log(f"serve: warning: listening on {host} without --api-key: anyone who can reach this port can use it")
    app = create_app(models, api_key=api_key, limits=settings)
    log(f"serving {', '.join(models)} on http://{host}:{port} (playground: http://{host}:{port}/)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
