"""Operator tests run against a real `metal3 apiserver` process (the project's CRDs preloaded: the
fixtures of tests/conftest.py), with the operator itself in-process so a test can stop and
restart it at any point."""
