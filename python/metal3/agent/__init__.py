"""The agent: the program that runs on a host (in its ramdisk) to inspect, clean and deploy it.

It plays the role ironic-python-agent plays for Ironic and only ever dials out to the operator.
Keep its imports light: it must run in a small ramdisk.
"""
