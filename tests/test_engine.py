"""The engine's process handling without vLLM: it dies with the service, and what is left of a
crashed engine (orphans in its process group) is ended before a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from bentos.model.engine import end_group, group_members, spawn_group

PARENT = """
import threading, time
from bentos.model.engine import spawn_group
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()  # threaded, as the service is
child = spawn_group(["sleep", "600"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_engine_leads_its_own_group_and_dies_with_the_service():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        deadline = time.monotonic() + 10
        while child.name() != "sleep":  # the wrapper has exec'd the command
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert os.getpgid(child.pid) == child.pid
        parent.kill()  # SIGKILL: the service gets no chance to stop it
        parent.wait()
        child.wait(10)  # raises if it outlives its parent
    finally:
        parent.kill()
        if child.is_running():
            child.kill()


def test_end_group_ends_the_orphans_a_dead_leader_leaves():
    """As when vLLM's API server is killed: its engine core and workers live on in its group."""
    leader = spawn_group(["sh", "-c", "sleep 600 & sleep 600 & wait"])
    deadline = time.monotonic() + 10
    while len(group_members(leader.pid)) < 3:
        assert time.monotonic() < deadline, group_members(leader.pid)
        time.sleep(0.02)
    leader.kill()
    leader.wait()
    assert len(group_members(leader.pid)) == 2  # the orphans run on
    assert end_group(leader.pid) == [] and group_members(leader.pid) == []
