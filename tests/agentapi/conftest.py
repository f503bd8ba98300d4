"""The agent API's tests run against a real `metal3 apiserver` process (the project's CRDs
preloaded: the `apiserver`, `kubeconfig` and `namespace` fixtures of tests/conftest.py); the
agent API itself runs in-process, over TLS on 127.0.0.1."""
