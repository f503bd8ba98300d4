"""The direct provisioner's tests run against a real `metal3 apiserver` process (the fixtures of
tests/conftest.py), real BMC emulators (sushy-tools, our IPMI simulator), loop devices and an
image server on 127.0.0.1; the operator runs in-process (or as a process, to be killed) and the
test plays the hosts."""
