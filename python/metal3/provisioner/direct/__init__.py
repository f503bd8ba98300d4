"""The direct provisioner (`--provisioner direct`, the default): the operator drives each
host itself, through its BMC (`metal3.bmc`) and the metal3 agent it boots on the host (which
calls back to the operator's agent API, `metal3.agentapi`).

Modules: `settings` (boot media and timeouts, light to import), `provisioner` (the lifecycle
steps), `factory` (per-host sessions and background work), `calls` (BMC calls that never
hold a reconcile), `session` (per-host memory), `oob` (out-of-band inspection), `lab`
(`--lab DIR`: the settings a `metal3 lab` provides).
"""
