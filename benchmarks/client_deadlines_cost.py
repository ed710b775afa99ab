"""What do the client read deadlines (homellm.gateway.connections) cost per request?

Two uvicorn servers in this process, each on its own uvloop thread, serving the same trivial
ASGI app (reads the body, answers ``ok``): one with uvicorn's own httptools protocol, one with
``GuardedHttpProtocol`` at the default ``gateway.clients`` settings. A client sends keep-alive
POSTs with a small JSON body, one at a time, in interleaved rounds (the order flips each round).
The figure is the server thread's CPU time per request (its own CPU clock, so other load on the
machine inflates it less than wall time would); the difference of the medians and the paired
per-round differences are printed.

    python benchmarks/client_deadlines_cost.py [--rounds 12] [--requests 3000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from typing import Any

import uvicorn
import uvloop

from homellm.config import ClientsConfig
from homellm.gateway.connections import ClientGuard

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY))


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(http: Any) -> tuple[int, int]:
    """Start a server on a loopback port; (port, the CPU clock id of its thread)."""
    loop = uvloop.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, http=http, lifespan="off", log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(server.serve(sockets=[sock]),), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    assert thread.ident is not None
    return sock.getsockname()[1], time.pthread_getcpuclockid(thread.ident)


def server_cpu_us_per_request(port: int, clock: int, requests: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.clock_gettime(clock)
        for _ in range(requests):
            sock.sendall(REQUEST)
            data = sock.recv(4096)
            while not data.endswith(b"ok"):
                data += sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 200"), data
        return (time.clock_gettime(clock) - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    settings = ClientsConfig()
    servers = {"uvicorn": serve("httptools"),
               "guarded": serve(ClientGuard(lambda: settings).protocol)}
    figures: dict[str, list[float]] = {name: [] for name in servers}
    for index in range(args.rounds):
        order = list(servers) if index % 2 else list(servers)[::-1]
        for name in order:
            figures[name].append(server_cpu_us_per_request(*servers[name], args.requests))
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values):.1f} µs server CPU per request "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    paired = sorted(g - u for g, u in zip(figures["guarded"], figures["uvicorn"], strict=True))
    added = statistics.median(figures["guarded"]) - statistics.median(figures["uvicorn"])
    print(f"guarded - uvicorn: {added:+.1f} µs (per-round differences "
          f"{', '.join(f'{d:+.1f}' for d in paired)})")


if __name__ == "__main__":
    main()
