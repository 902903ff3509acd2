"""The quarantine child (workers/quarantine.py starts it): one suspect task's body, run alone.

    python3 -m workers.alone FD   # request JSON on stdin; {"out"} or {"error"} written to FD

Its own module so the quarantine (imported by workers/tasks.py) does not import the tasks back.
"""

from __future__ import annotations

import logging
import os
import sys

import orjson

from workers.errors import failure_reason
from workers.runtime import Runtime
from workers.tasks import run_body


def main(fd: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="[quarantine %(process)d] %(name)s: %(message)s")
    req = orjson.loads(sys.stdin.buffer.read())
    try:
        got: dict[str, str] = {"out": run_body(str(req["task"]), list(req["args"]), str(req["job_id"]))}
    except Exception as e:
        got = {"error": failure_reason(e)}
    os.write(fd, orjson.dumps(got))
    os.close(fd)
    if Runtime._instance is not None:  # let its HTTP client and Redis clients close cleanly
        try:
            Runtime._instance.close()
        except Exception:  # exiting anyway; the outcome is written
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
