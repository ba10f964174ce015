"""`medpt serve`: check the port, then hand over to the server (serve.server). See the package docstring."""

from __future__ import annotations

import errno
import socket
from typing import Any

from medpt.errors import MedptError


def run_serve(config: Any) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MedptError(
            f"medpt serve needs fastapi and uvicorn ({e.name} is missing): pip install 'medpt[serve]'"
        ) from None
    check_port(config.serve.host, config.serve.port)
    from medpt.serve.server import serve

    return serve(config)


def check_port(host: str, port: int) -> None:
    """Bind host:port for a moment, as uvicorn will (asyncio's create_server: every address the host resolves to,
    SO_REUSEADDR, IPv6 sockets IPv6-only), before the model loads: a busy port, an unknown host or an address of
    another machine is a one-line error now, not minutes later in uvicorn's words (exit 3). Port 0 is always free."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MedptError(f"--host {host}: no such host ({e.strerror}); 127.0.0.1 serves this machine only") from None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:  # an address family this machine lacks (IPv6): asyncio skips it too
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise MedptError(_bind_error(host, port, e)) from None


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is in use (another medpt serve or another server): stop it, or pass --port "
                "with a free port (--port 0 picks one)")  # fmt: skip
    if e.errno == errno.EACCES:
        return f"port {port} on {host}: permission denied (ports below 1024 need privileges); pass --port 1024 or above"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine; 127.0.0.1 serves this machine only"
    return f"cannot listen on port {port} of {host}: {e.strerror}"
