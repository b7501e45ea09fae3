"""A real OpenAI-compatible chat endpoint on 127.0.0.1 for tests: POST /v1/chat/completions with
replies a test scripts (the LLM judge's and the synthesize teacher's tests)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """`reply_fn(body)` returns the reply's text, raw bytes (a malformed body), or an int: that
    HTTP status with an empty body (429/5xx are transient to the clients, other codes fatal)."""

    def __init__(self, reply_fn):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                raw = reply_fn(body)
                if isinstance(raw, int):
                    self.send_response(raw)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = raw if isinstance(raw, bytes) else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": raw}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # a client's concurrent requests wait in the backlog, not reset

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
