"""The stand-in "internet" web server, run as a program inside the outside namespace.

    outside_server.py ADDR PORT LOG

Answers every GET with ``outside says hello <path>`` and appends one JSON line
``{"path": ..., "client": ...}`` per request to LOG (flushed before answering, so the log
holds every request that was answered). Prints "ready" once bound; serves until killed.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading


def handler_for(log_path: str) -> type[http.server.BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock, open(log_path, "a") as log:
                log.write(json.dumps({"path": self.path, "client": self.client_address[0]}))
                log.write("\n")
            body = f"outside says hello {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str]) -> None:
    addr, port, log_path = argv
    server = http.server.ThreadingHTTPServer((addr, int(port)), handler_for(log_path))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
