"""Discovery of unknown hosts: a machine nobody registered boots the agent and appears as a
BareMetalHost (off by default: `--discovery`).

An agent whose lookup matches no host gets a discovery-only token (`admissions`), good for one
call: sending its inventory. The operator then creates a BareMetalHost for it (`service`) in
the discovery namespace, named after the system serial or the boot MAC (`naming`), with
`status.hardware`, a HardwareData, labels from the inventory (`labels`), its boot MAC and the
BMC address the agent saw, no credentials and `operationalStatus: discovered`. At most one
host per physical system (same system UUID, serial or a shared MAC), and at most a configured
number of new systems per minute: lookups past it get 429 with Retry-After.
"""
