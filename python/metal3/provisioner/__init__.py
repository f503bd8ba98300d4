"""Provisioners: what the operator drives to inspect, provision and deprovision hosts.

`PROVISIONERS` lives here, apart from the implementations, so the command line can offer the
names without importing them.
"""

PROVISIONERS: tuple[str, ...] = ("direct", "fixture")
"""The names `--provisioner` accepts, the default first (see `metal3.operator.make_provisioners`):
`direct` drives the hosts' BMCs and the metal3 agent (`metal3.provisioner.direct`); `fixture`
simulates hardware in memory (`metal3.provisioner.fixture`)."""
