import sys

if sys.argv[1:2] == ["stop-kind"]:  # the unit's ExecStop: every stop waits for it, so no aiohttp import
    from agent.cli.stop_command import main as stop_kind

    raise SystemExit(stop_kind(sys.argv[2:]))

from agent.cli.main import main

raise SystemExit(main())
