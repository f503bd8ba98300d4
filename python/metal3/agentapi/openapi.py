"""The agent API's OpenAPI 3 document, served at ``GET /v1/openapi.json``.

docs/agent-protocol.md is the prose description; this is the machine-readable one. Both
describe `metal3.agentapi.app`: change them together.
"""

from __future__ import annotations

from functools import cache
from typing import Any

JsonObject = dict[str, Any]

_COMMANDS = ["inspect", "clean", "deploy", "custom_deploy", "wait", "power_off", "reboot_to_disk"]


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JsonObject) -> JsonObject:
    return {"anyOf": [schema, {"type": "null"}]}


def _json(schema: JsonObject, description: str) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> JsonObject:
    return _json(_ref("Error"), description)


_COMMON_ERRORS: JsonObject = {
    "400": _error("The request is malformed (the message says how)."),
    "413": _error("The body is larger than 4 MiB (or a result too large to record)."),
    "429": {
        "description": "Rate limit reached: retry after the number of seconds in Retry-After.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": _ref("Error")}},
    },
    "503": _error("The operator is starting or cannot reach its API server: retry."),
}
_AUTH_ERRORS: JsonObject = {
    "401": _error("Missing or malformed token, or the host holds none: look up again."),
    "403": _error("The token is not this host's."),
    "404": _error("No host has this uid."),
    "410": _error(
        "The token's agent session was ended by the operator (it powered the host off): stop; "
        "do not look up again."
    ),
}
_UID = {
    "name": "uid",
    "in": "path",
    "required": True,
    "description": "The host's uid, as lookup returned it.",
    "schema": {"type": "string"},
}

_SCHEMAS: JsonObject = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "LookupRequest": {
        "type": "object",
        "required": ["mac_addresses"],
        "properties": {
            "mac_addresses": {
                "type": "array",
                "minItems": 1,
                "maxItems": 256,
                "items": {"type": "string", "example": "52:54:00:12:34:56"},
            },
            "system_uuid": _nullable({"type": "string"}),
            "serial_number": _nullable({"type": "string"}),
        },
    },
    "HostIdentity": {
        "type": "object",
        "required": ["namespace", "name", "uid"],
        "properties": {
            "namespace": {"type": "string"},
            "name": {"type": "string"},
            "uid": {"type": "string"},
        },
    },
    "LookupResponse": {
        "type": "object",
        "required": ["host", "token", "poll_seconds"],
        "properties": {
            "host": _nullable(_ref("HostIdentity")),
            "token": _nullable(
                {
                    "type": "string",
                    "description": "Given on the first lookup only (while none is held); "
                    "the agent must keep it and send it as a Bearer token.",
                }
            ),
            "poll_seconds": {
                "type": "number",
                "description": "The wait to use when asking for a command.",
            },
            "discovery": {
                "type": "object",
                "description": "Only with discovery on, for MACs no host has (host and token "
                "are then null): a token good only for sending the inventory.",
                "required": ["token", "inventory_path", "expires_in"],
                "properties": {
                    "token": {"type": "string"},
                    "inventory_path": {"type": "string", "example": "/v1/discovery/inventory"},
                    "expires_in": {"type": "number", "description": "Seconds."},
                },
            },
        },
    },
    "DiscoveryInventory": {
        "type": "object",
        "required": ["inventory"],
        "properties": {
            "inventory": {
                "type": "object",
                "description": "The agent's inventory (ironic-python-agent's format).",
            }
        },
    },
    "DiscoveredHost": {
        "type": "object",
        "required": ["host", "created"],
        "properties": {
            "host": {
                "type": "object",
                "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}},
            },
            "created": {
                "type": "boolean",
                "description": "false: this system's host was already made (a repeat).",
            },
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "checksum": _nullable({"type": "string"}),
            "checksumType": _nullable({"type": "string"}),
            "format": _nullable({"type": "string"}),
        },
    },
    "Command": {
        "type": "object",
        "required": ["id", "command", "args"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": "^[a-z_]+-[0-9a-f]{24}$",
                "description": "Stable for the same work, across operator restarts.",
            },
            "command": {"type": "string", "enum": _COMMANDS},
            "args": {
                "type": "object",
                "description": (
                    "inspect, power_off, reboot_to_disk: {}. wait: {reason}. clean: {mode: "
                    "metadata, rootDeviceHints (null: every disk not in use)}. deploy: {image, "
                    "rootDeviceHints, configDrive: {userData (base64), networkData, metaData}, "
                    "host: {uuid, namespace, name}}. custom_deploy: {method, image, host}."
                ),
                "properties": {
                    "reason": {"type": "string"},
                    "mode": {"type": "string", "enum": ["metadata"]},
                    "rootDeviceHints": _nullable({"type": "object"}),
                    "image": _nullable(_ref("Image")),
                    "method": {"type": "string"},
                    "configDrive": {
                        "type": "object",
                        "properties": {
                            "userData": _nullable({"type": "string", "format": "byte"}),
                            "networkData": _nullable({"type": "object"}),
                            "metaData": _nullable({"type": "object"}),
                        },
                    },
                    "host": {
                        "type": "object",
                        "properties": {
                            "uuid": {"type": "string"},
                            "namespace": {"type": "string"},
                            "name": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
    "Result": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["succeeded", "failed"]},
            "result": _nullable(
                {
                    "type": "object",
                    "description": "inspect: the inventory; clean and deploy: what was done, "
                    "with timings.",
                }
            ),
            "error": _nullable({"type": "string"}),
        },
    },
    "Recorded": {
        "type": "object",
        "required": ["recorded"],
        "properties": {
            "recorded": {
                "type": "boolean",
                "description": "false: a result for this command id was already recorded.",
            }
        },
    },
    "Progress": {
        "type": "object",
        "properties": {
            "command_id": _nullable({"type": "string"}),
            "phase": _nullable({"type": "string"}),
            "bytes": _nullable({"type": "integer"}),
            "detail": _nullable({"type": "string"}),
        },
    },
}


@cache
def openapi_document() -> JsonObject:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "metal3 agent API",
            "version": "v1",
            "description": "What the agent on a host calls (it only ever dials out). See "
            "docs/agent-protocol.md.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"agentToken": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/lookup": {
                "post": {
                    "summary": "Find the host by its MAC addresses; the token on first lookup.",
                    "requestBody": _json(_ref("LookupRequest"), "The host's identifiers."),
                    "responses": {
                        "200": _json(_ref("LookupResponse"), "The host."),
                        "404": _error("No BareMetalHost has any of these MAC addresses."),
                        "409": _error(
                            "The MAC addresses belong to more than one host; or (discovery) "
                            "a host already describes this system by its serial or UUID."
                        ),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/discovery/inventory": {
                "post": {
                    "summary": "Discovery only: the inventory of a system no host describes; "
                    "the operator makes its BareMetalHost.",
                    "security": [{"agentToken": []}],
                    "requestBody": _json(_ref("DiscoveryInventory"), "The inventory."),
                    "responses": {
                        "201": _json(_ref("DiscoveredHost"), "The host was made."),
                        "200": _json(_ref("DiscoveredHost"), "Made already (a repeat)."),
                        "401": _error("Missing or malformed discovery token."),
                        "403": _error("Unknown, replaced or expired discovery token."),
                        "404": _error("Discovery is off."),
                        "409": _error("A host already describes this system."),
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/hosts/{uid}/command": {
                "get": {
                    "summary": "What to do now (long poll while the answer is wait).",
                    "security": [{"agentToken": []}],
                    "parameters": [
                        _UID,
                        {
                            "name": "wait",
                            "in": "query",
                            "description": "Seconds to wait for work (at most 60).",
                            "schema": {"type": "number", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Command"), "The command."),
                        **_AUTH_ERRORS,
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/hosts/{uid}/results/{command_id}": {
                "post": {
                    "summary": "Report a command's outcome (recorded once per command id).",
                    "security": [{"agentToken": []}],
                    "parameters": [
                        _UID,
                        {
                            "name": "command_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": _json(_ref("Result"), "The outcome."),
                    "responses": {
                        "200": _json(_ref("Recorded"), "Acknowledged."),
                        **_AUTH_ERRORS,
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/hosts/{uid}/progress": {
                "post": {
                    "summary": "Report progress of the running command (kept in memory only).",
                    "security": [{"agentToken": []}],
                    "parameters": [_UID],
                    "requestBody": _json(_ref("Progress"), "Where the command is."),
                    "responses": {
                        "204": {"description": "Noted."},
                        **_AUTH_ERRORS,
                        **_COMMON_ERRORS,
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {"200": {"description": "The OpenAPI document."}},
                }
            },
        },
    }
