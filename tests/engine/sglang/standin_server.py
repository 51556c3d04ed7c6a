"""A stand-in for the GPU server, for the launcher's process-management tests only.

It is NOT SGLang and serves nothing SGLang does beyond GET /health (503 while
"loading", then 200) and GET /get_model_info. It accepts SGLang's command line
(reads --host/--port/--model-path/--served-model-name, ignores the rest) and
records it, so a test can see exactly what the launcher would run. Behaviour
is set by environment variables:
  STANDIN_RECORD       file to write {"argv": [...], "pid": ..., "child": pid} to
  STANDIN_LOAD_S       seconds /health answers 503 first (default 0.3)
  STANDIN_IGNORE_TERM  "1": ignore SIGTERM (so the launcher must SIGKILL)
  STANDIN_EXIT         "early:<code>" exit before healthy, "after:<seconds>:<code>" exit once healthy
On SIGTERM it appends "sigterm" to STANDIN_RECORD.marker and exits 0, leaving
its child process (a stand-in for SGLang's scheduler) behind for the launcher
to reap with the process group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--model-path", default="")
    p.add_argument("--served-model-name", default=None)
    args, _ = p.parse_known_args()
    record = os.environ["STANDIN_RECORD"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(record, "w") as f:
        json.dump({"argv": sys.argv[1:], "pid": os.getpid(), "child": child.pid}, f)
    mode = os.environ.get("STANDIN_EXIT", "")
    if mode.startswith("early:"):
        return int(mode.split(":")[1])
    if os.environ.get("STANDIN_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(*_):
            with open(record + ".marker", "a") as f:
                f.write("sigterm\n")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
    ready_at = time.monotonic() + float(os.environ.get("STANDIN_LOAD_S", "0.3"))
    model = args.served_model_name or args.model_path

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self._send(200 if time.monotonic() >= ready_at else 503, b"")
            elif self.path == "/get_model_info":
                self._send(200, json.dumps({"model_path": args.model_path, "served_model_name": model}).encode())
            else:
                self._send(404, b"")

        def _send(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if mode.startswith("after:"):
        _, seconds, code = mode.split(":")
        time.sleep(float(seconds))
        return int(code)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
