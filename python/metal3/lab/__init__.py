"""The lab: emulated hosts that behave like servers (`metal3 lab up | down | status`).

Each host has a BMC on 127.0.0.1 (Redfish through sushy-tools emulators of up to 16 hosts
each, or one of our IPMI simulators), disks (sparse files on loop devices), NICs with stable
MACs in its own network namespace on a bridge inside the lab's namespace, and a hardware
profile. Powering a
host on with network or virtual-media boot starts the agent for it; booting from disk checks
what the agent wrote. An image server, the agent API relay and the manifests complete it.

Modules, one job each: `config` (what was asked, the host plans), `profiles`, `network`,
`disks`, `sysroot` (the inventory tree the agent reads), `bmcs`, `images` (image server,
agent ISO), `relay`, `agents`, `osboot`, `hosts` (power and boot behaviour), `manifests`,
`state` (lab.json), `layout` (the data directory), `resources` (journal and teardown),
`supervisor` (the process that runs it all), `control` (up, down, status), `status` (text).

`--vms N` makes hosts that are TCG virtual machines instead: `libvirtd` (the lab's own
libvirtd and virtlogd, in the lab namespace), `vms` (domains, disks, consoles), `vmbmcs`
(sushy-tools' libvirt driver and virtualbmc's `vbmcd`), `vmlab` (all of it, for the supervisor).
"""
