"""The agent ramdisk: a kernel and initramfs (and a BIOS-bootable ISO) that boot a machine into
`metal3 agent run`, built from Debian packages and this project's own wheel.

The initramfs is two concatenated zstd cpio archives, each cached by the digest of its inputs
(`cache`): the Debian root with the kernel's storage and network drivers (`debian`), which
changes only with the package list, and the agent layer (`payload`: the wheel, its runtime
dependencies and the init), which changes with the source. `build` puts them together.
"""
