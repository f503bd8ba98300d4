"""The boot server: network boot of the agent ramdisk for the hosts the provisioner names.

dnsmasq answers DHCP (IPv4) and TFTP on the provisioning interface only; an HTTP server on the
provisioning address serves the ramdisk's kernel and initramfs and each host's iPXE script.
Only MACs registered through `BootServer.allow` (a directory of one file per MAC, so the
operator and the boot server can be separate processes) get an address and a boot; others get
nothing, or as configured an address only or the agent's boot for discovery. Router
solicitations are answered so iPXE does not wait for IPv6 (`ra.py`).
"""
