"""The operator's agent API: what agents on the hosts dial into (HTTPS, JSON, under ``/v1``).

An agent looks its host up by MAC address and gets a per-host token once; it then asks what to
do (long poll), and reports results, which are kept in a per-host record Secret so an operator
restart loses nothing. The protocol is described in docs/agent-protocol.md and served as an
OpenAPI document at ``GET /v1/openapi.json``.

Modules: `app` (the ASGI application), `hosts` (the hosts by MAC and uid, and their changes),
`commands` (what a host should do now, from its state), `records` (the per-host record),
`tokens`, `ratelimit`, `openapi` and `server` (uvicorn with TLS).
"""
