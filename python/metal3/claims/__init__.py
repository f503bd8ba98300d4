"""Hosts for workloads: a consumer (HostClaim, Metal3Machine) binds an available
BareMetalHost chosen by label selector, which provisions it, and releases it when it goes."""
