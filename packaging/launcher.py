"""Starts a module of vmesh-agent on this machine's python3: /usr/bin/vmesh-agent and /usr/bin/kubectl-vmesh
run `python3 -I -S /usr/lib/vmesh-agent/launcher.py MODULE ARGS...`.

-I ignores PYTHON* variables and the user's site directory; -S keeps the distribution's dist-packages off
sys.path. So the agent imports the standard library and the deb's own libraries (site-packages beside this
file, with compiled modules for each CPython the deb was built for) and nothing else the VM has installed.
"""

import os
import sys

MINIMUM = (3, 11)

if sys.version_info < MINIMUM:
    sys.exit(f"vmesh-agent needs Python {MINIMUM[0]}.{MINIMUM[1]} or newer; /usr/bin/python3 is "
             f"{sys.version.split()[0]}. Install the distribution's python3 of a supported release "
             "(/usr/share/doc/vmesh-agent/README.md, 'Supported distributions').")

import runpy  # noqa: E402
import site  # noqa: E402

site.addsitedir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "site-packages"))
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
