from agent.plugin.cli import main

raise SystemExit(main())
