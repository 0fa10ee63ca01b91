"""Serving a devnet stand-in over HTTP on the loopback interface: the one way devnet's servers
(market, SMS, result gateway, workerpool control, Telegram) start listening.

Must never: listen on an address that is not a loopback one (DESIGN.md: servers bind to 127.0.0.1 only), or
leave a half-started runner behind when the port cannot be bound.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web


async def serve_loopback(
    app: web.Application, port: int = 0, *, host: str = "127.0.0.1", **runner_options: Any
) -> tuple[web.AppRunner, str]:
    """Serve `app` on host:port (port 0: any free one); return the runner (its `cleanup()` stops the server)
    and the base URL `http://host:port` actually bound. ValueError for a host that is not a loopback address."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"a devnet stand-in listens on a loopback address only, not {host!r}")
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"
