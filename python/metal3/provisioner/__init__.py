"""Provisioners: what the operator drives to inspect, provision and deprovision hosts.

`PROVISIONERS` lives here, apart from the implementations, so the command line can offer the
names without importing them.
"""

PROVISIONERS: tuple[str, ...] = ("fixture",)
"""The names `--provisioner` accepts (see `metal3.operator.make_provisioners`)."""
