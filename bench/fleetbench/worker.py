"""Inside the bench's network namespace (`bench/fleet --worker SPEC`): one worker's agents, imported from the
tree the parent put first on PYTHONPATH (spec["tree"]). Its own imports: the standard library, _common and the
fleetbench modules that need nothing else (constants, vms), all from the parent's checkout, beside the entry
script, whichever tree PYTHONPATH names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import string
import sys
import time
from pathlib import Path
from typing import Any

from _common import raise_nofile

from .constants import WORKER_LIFETIME_S
from .vms import vm_address, vm_name


async def run_agents(spec: dict[str, Any]) -> int:
    # Imported here, in the worker only: from spec["tree"], which the parent put first on PYTHONPATH.
    import agent  # noqa: PLC0415
    try:
        from agent.daemon.agent import Agent  # noqa: PLC0415
    except ImportError:  # a checkout from before the daemon/ room (issue 22), for --baseline-tree
        from agent.agent import Agent  # type: ignore[no-redef]  # noqa: PLC0415
    from agent.config import parse_settings  # noqa: PLC0415
    from agent.logs import configure, get_logger  # noqa: PLC0415

    configure(format="json", level=spec["log_level"], stream=sys.stderr)
    template = string.Template(spec["template"])
    agents: dict[str, Any] = {}
    for index in range(spec["first"], spec["first"] + spec["count"]):
        settings = parse_settings(template.substitute(index=index, address=vm_address(index)))
        agents[vm_name(index)] = Agent(settings, log=get_logger(vm=vm_name(index)))

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    begin = time.monotonic()
    results = await asyncio.gather(*(a.start() for a in agents.values()), return_exceptions=True)
    failed = {name: repr(r) for name, r in zip(agents, results, strict=True) if isinstance(r, BaseException)}
    emit("started", seconds=round(time.monotonic() - begin, 3), failed=failed, pid=os.getpid(),
         agent_file=agent.__file__, version=getattr(agent, "__version__", ""))

    async def watch_failures() -> None:
        reported: set[str] = set()
        while True:
            await asyncio.sleep(1)
            for name, a in agents.items():
                if a.should_exit.is_set() and name not in reported:
                    reported.add(name)
                    emit("failed", vm=name, why=a.failure or "stopped by itself")

    watcher = asyncio.create_task(watch_failures())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), WORKER_LIFETIME_S)
    watcher.cancel()
    begin = time.monotonic()
    await asyncio.gather(*(a.stop() for a in agents.values()), return_exceptions=True)
    emit("stopped", seconds=round(time.monotonic() - begin, 3))
    return 0


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    raise_nofile(1024 + 32 * spec["count"])
    return asyncio.run(run_agents(spec))
