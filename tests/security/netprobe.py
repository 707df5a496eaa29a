"""Reachability probes for the namespace tests, run as a program inside a namespace.

    netprobe.py listen ADDR,... PORT...   TCP and UDP echo ("pong") on each ADDR:PORT; prints
                                          "ready" once bound, serves until killed
    netprobe.py probe SECONDS TARGET...   TARGET is tcp:ADDR:PORT or udp:ADDR:PORT; prints a
                                          JSON object {TARGET: true when it answered "pong"}

Probes run in parallel, each waits at most SECONDS: a dropped packet is a timeout. Listeners
bind each address (not 0.0.0.0) so that a UDP answer leaves from the address it was sent to,
which is what connection tracking (NAT) on the way back expects.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

ANSWER = b"pong"


def _serve_tcp(addr: str, port: int) -> None:
    server = socket.create_server((addr, port))
    threading.Thread(target=_accept, args=(server,), daemon=True).start()


def _accept(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(ANSWER)


def _serve_udp(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    threading.Thread(target=_echo, args=(sock,), daemon=True).start()


def _echo(sock: socket.socket) -> None:
    while True:
        _, peer = sock.recvfrom(512)
        sock.sendto(ANSWER, peer)


def listen(addrs: list[str], ports: list[int]) -> None:
    for addr in addrs:
        for port in ports:
            _serve_tcp(addr, port)
            _serve_udp(addr, port)
    print("ready", flush=True)
    threading.Event().wait()


def probe_one(target: str, timeout: float) -> bool:
    proto, addr, port = target.split(":")
    try:
        if proto == "tcp":
            with socket.create_connection((addr, int(port)), timeout=timeout) as conn:
                return conn.recv(16) == ANSWER
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(b"ping", (addr, int(port)))
            return sock.recvfrom(16)[0] == ANSWER
    except OSError:
        return False


def probe(timeout: float, targets: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = pool.map(lambda t: probe_one(t, timeout), targets)
        print(json.dumps(dict(zip(targets, results, strict=True))))


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(sys.argv[2].split(","), [int(p) for p in sys.argv[3:]])
    else:
        probe(float(sys.argv[2]), sys.argv[3:])
