"""A Modal serving container, run locally for the test session (tests/conftest.py): the serving
class's enter hooks through `.local()` (Server.boot: `bentoml serve .` with the container's
settings from this process's environment). Prints one `READY {...}` line once the stack has said
it is ready; stops the stack, as the exit hook does, when standard input closes."""

import json
import sys
import threading

from bentos.tools import launch
from modal_apps import serve

server = serve.Server()
server.api.local()
stack = server.stack
threading.Thread(target=stack.proc.wait, daemon=True).start()  # reap the server when it exits, as a container's init does
print("READY " + json.dumps({"pid": stack.proc.pid, "url": stack.url, "log": str(stack.log_path), "ready_s": stack.ready_s}), flush=True)
sys.stdin.read()
launch.stop(stack)
