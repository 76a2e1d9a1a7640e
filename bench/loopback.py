"""The loopback image server the download benchmarks fetch from (download_bench.py, e2e_bench.py, e2e_parts.py):
each answer after `latency` seconds (standing in for the network), then the body and `Connection: close`."""
from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def image_server(bodies: bytes | list[bytes], latency: float) -> ThreadingHTTPServer:
    """A server on a free 127.0.0.1 port, not yet serving. `bodies`: one body for every path, or a list where
    `/img/N.jpg` gets the N-th (404 for anything else)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            time.sleep(latency)
            if isinstance(bodies, bytes):
                body = bodies
            else:
                try:
                    body = bodies[int(self.path.rsplit("/", 1)[1].split(".")[0])]
                except (ValueError, IndexError):
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # listen backlog: the default 5 drops SYNs under concurrency (1 s retransmits)
        daemon_threads = True

    return Server(("127.0.0.1", 0), Handler)
