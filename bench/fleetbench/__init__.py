"""bench/fleet's modules (bench/fleet is the entry script; its docstring says what the bench does).

Where things are, in the order a run meets them:

  args.py        the command line                 parent.py     main(): test bed, runs, table, exit status
  testbed.py     control plane, network           identities.py the VMs' ServiceAccounts and tokens, the
                 namespace, listener, namespaces                 admission policies (a mixin of Testbed)
  fleet.py       the worker processes             run.py        one fleet through its phases
  spawn.py       phase 1                          steady.py     phase 2 (with the bench's Lease watch)
  outage.py      phase 3                          reap.py       phase 4
  budget.py      the budget phase                 stop.py       the stop and what it left
  figures.py     what the phases measured         rows.py       the table's rows; table.py prints them
  admin.py       the admin's HTTPS client         snapshot.py   the fleet's objects at one moment
  metrics.py     the apiserver's /metrics         processes.py  sh(), connections
  constants.py   names, defaults, targets         vms.py        VM names, addresses, the agent config
  errors.py      _log, SetupError, NotCorrect     paths.py      bench/fleet and the workers' interpreter
  worker.py      `bench/fleet --worker SPEC`      listener.py   `bench/fleet --listener`

The worker and the listener run inside the namespace with PYTHONPATH set to the agent tree under test (maybe
an older checkout). They import only the standard library, bench/_common.py and, from here, constants.py and
vms.py: never tests/ (tests/testbed/ is the parent's alone), nor a module that imports it. The entry script
puts bench/ first on sys.path, so `fleetbench` is this checkout's whichever tree PYTHONPATH names.
"""
