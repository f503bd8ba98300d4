"""The HTTP face of the API server: an ASGI application routing Kubernetes REST paths to
`Core`, negotiating Table output, streaming watches and checking the bearer token."""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio
import orjson

from metal3.apiserver import discovery, openapi, openapi_pb, protobuf, table
from metal3.apiserver.core import JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, Core, WriteOptions
from metal3.apiserver.deletion import DeleteOptions
from metal3.apiserver.errors import ApiError, bad_request, method_not_allowed
from metal3.apiserver.registry import ResourceType
from metal3.apiserver.watch import Watches, WatchParams
from metal3.asgi import BodyTooLargeError, Receive, Scope, Send, read_body

MAX_BODY = 3 * 1024 * 1024
UNAUTHENTICATED = frozenset({"/healthz", "/livez", "/readyz"})
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true")


@dataclass(frozen=True)
class TableRequest:
    version: str  # meta.k8s.io version (v1 or v1beta1)
    include_object: str  # None, Metadata or Object


def _table_request(accept: str, query: dict[str, str]) -> TableRequest | None:
    """The Table version asked for in Accept (`application/json;as=Table;v=v1;g=meta.k8s.io`)."""
    offered: list[str] = []
    for item in accept.split(","):
        params = dict(part.strip().split("=", 1) for part in item.split(";")[1:] if "=" in part)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            offered.append(params.get("v", "v1"))
    if not offered:
        return None
    version = "v1" if "v1" in offered else offered[0]
    return TableRequest(version, query.get("includeObject", "Metadata") or "Metadata")


def _metadata_request(accept: str) -> str | None:
    """The meta.k8s.io version when Accept asks for PartialObjectMetadata(List), the form
    metadata-only clients (client-go's metadata informers) read."""
    for item in accept.split(","):
        params = dict(part.strip().split("=", 1) for part in item.split(";")[1:] if "=" in part)
        if params.get("g") == "meta.k8s.io" and params.get("as") in (
            "PartialObjectMetadata",
            "PartialObjectMetadataList",
        ):
            return params.get("v", "v1")
    return None


class ApiServer:
    """ASGI application; one instance per server process."""

    def __init__(
        self,
        core: Core,
        token: str | None,
        address: str,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        event_ttl: float = 3600.0,
    ) -> None:
        self.core = core
        self.watches = Watches(core)
        self._token = token.encode() if token else None
        self.address = address
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.event_ttl = event_ttl

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await self._read(scope, receive)
            if request.path not in UNAUTHENTICATED:
                self._authenticate(request)
            await self._dispatch(request, receive, send)
        except ApiError as error:
            await _respond(send, error.code, error.status())
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # every other failure is a 500 Status
            failure = ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
            await _respond(send, 500, failure.status())

    def close_watches(self) -> None:
        """End every open watch (as kube-apiserver does on shutdown; clients re-watch)."""
        self.watches.close_all()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Background work for the server's lifetime: expiring Events."""
        async with anyio.create_task_group() as group:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    group.start_soon(self._expire_events)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    group.cancel_scope.cancel()
                    break
        await send({"type": "lifespan.shutdown.complete"})

    async def _expire_events(self) -> None:
        interval = min(60.0, max(0.2, self.event_ttl / 4))
        while True:
            await anyio.sleep(interval)
            self.core.expire_events(self.event_ttl)

    async def _read(self, scope: Scope, receive: Receive) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await read_body(receive, MAX_BODY)
        except BodyTooLargeError:
            raise ApiError(413, "request entity too large", "RequestEntityTooLarge") from None
        query = {
            key: values[-1]
            for key, values in parse_qs(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            ).items()
        }
        path = scope.get("path") or "/"
        if len(path) > 1:
            path = path.rstrip("/")
        return Request(scope["method"], path, query, headers, body)

    def _authenticate(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self._token
        ):
            raise ApiError(401, "Unauthorized", "Unauthorized")

    # -- routing -----------------------------------------------------------------------------

    async def _dispatch(self, request: Request, receive: Receive, send: Send) -> None:
        path = request.path
        registry = self.core.registry
        if path in UNAUTHENTICATED:
            await _respond_raw(send, 200, b"ok", b"text/plain; charset=utf-8")
            return
        if path == "/version":
            await _respond(send, 200, discovery.SERVER_VERSION)
            return
        if path == "/api":
            await _respond(send, 200, discovery.api_versions(self.address))
            return
        if path == "/apis":
            await _respond(send, 200, discovery.api_group_list(registry))
            return
        if path == "/openapi/v2":
            document = openapi.openapi_v2(registry)
            if "protobuf" in request.headers.get("accept", ""):
                data = openapi_pb.encode_document(document)
                await _respond_raw(send, 200, data, b"application/octet-stream")
            else:
                await _respond(send, 200, document)
            return
        if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            documents = openapi.openapi_v3_documents(registry)
            if path == "/openapi/v3":
                await _respond(send, 200, openapi.openapi_v3_root(documents))
                return
            found_doc = documents.get(path[len("/openapi/v3/") :])
            if found_doc is None:
                raise ApiError(404, "the server could not find the requested resource")
            await _respond(send, 200, found_doc)
            return
        segments = [unquote(s) for s in path.split("/")[1:]]
        if segments[0] == "api" and len(segments) >= 2:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[0] == "apis" and len(segments) >= 2:
            group = segments[1]
            if len(segments) == 2:
                found = discovery.api_group(registry, group)
                if found is None:
                    raise ApiError(404, "the server could not find the requested resource")
                await _respond(send, 200, found)
                return
            version, rest = segments[2], segments[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if not rest:
            if request.method != "GET":
                raise ApiError(405, f"the server does not allow this method ({request.method})")
            listing = discovery.resource_list(registry, group, version)
            if listing is None:
                raise ApiError(404, "the server could not find the requested resource")
            await _respond(send, 200, listing)
            return
        watch = False
        if rest[0] == "watch":
            watch, rest = True, rest[1:]
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and (rt := registry.by_key(f"{group}/{rest[2]}")) is not None
            and rt.namespaced
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        rt = registry.lookup(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else ""
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "the server could not find the requested resource")
        if watch or (request.method == "GET" and request.flag("watch")):
            await self._watch(request, rt, version, namespace, name, receive, send)
            return
        if name is None:
            await self._collection(request, rt, version, namespace, send)
        else:
            await self._item(request, rt, version, namespace, name, subresource, send)

    # -- collections and items ---------------------------------------------------------------

    def _write_options(self, request: Request) -> WriteOptions:
        validation = request.query.get("fieldValidation", "") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise bad_request(
                f"fieldValidation must be one of Ignore, Warn or Strict, not {validation!r}"
            )
        dry_run = request.query.get("dryRun", "")
        if dry_run and dry_run != "All":
            raise bad_request(f"unsupported dryRun value {dry_run!r}")
        return WriteOptions(dry_run=dry_run == "All", field_validation=validation)

    def _body(self, request: Request) -> Any:
        if not request.body:
            raise bad_request("the request body is empty")
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type == protobuf.MEDIA_TYPE and request.method in ("POST", "PUT"):
            return protobuf.decode(request.body)
        if request.method in ("POST", "PUT") and content_type not in (
            "",
            "application/json",
            "*/*",
        ):
            raise ApiError(
                415,
                f'the body of the request was in an unknown format ("{content_type}") - '
                "accepted media types include: application/json",
                "UnsupportedMediaType",
            )
        try:
            return orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from exc

    async def _collection(
        self, request: Request, rt: ResourceType, version: str, namespace: str | None, send: Send
    ) -> None:
        core = self.core
        if rt.namespaced and namespace is None and request.method in ("POST", "DELETE"):
            # The all-namespaces path of a namespaced resource serves only list and watch.
            raise method_not_allowed(request.method)
        if request.method == "GET":
            limit_text = request.query.get("limit", "") or "0"
            try:
                limit = int(limit_text)
            except ValueError as exc:
                raise bad_request(f"invalid limit {limit_text!r}") from exc
            result = core.list_objects(
                rt,
                namespace,
                request.query.get("labelSelector", ""),
                request.query.get("fieldSelector", ""),
                max(limit, 0),
                request.query.get("continue", ""),
            )
            list_meta: dict[str, Any] = {"resourceVersion": result.resource_version}
            if result.continue_token:
                list_meta["continue"] = result.continue_token
            if result.remaining is not None:
                list_meta["remainingItemCount"] = result.remaining
            items = [core.output(rt, version, obj) for obj in result.items]
            wanted = _table_request(request.headers.get("accept", ""), request.query)
            metadata_version = _metadata_request(request.headers.get("accept", ""))
            if wanted is not None:
                body = table.table(
                    rt, version, items, wanted.version, wanted.include_object, list_meta
                )
            elif metadata_version is not None:
                body = {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": f"meta.k8s.io/{metadata_version}",
                    "metadata": list_meta,
                    "items": [table.partial_metadata(obj, metadata_version) for obj in items],
                }
            else:
                body = {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version(version),
                    "metadata": list_meta,
                    "items": items,
                }
            await _respond(send, 200, body)
        elif request.method == "POST":
            opts = self._write_options(request)
            created = core.create(rt, version, namespace, self._body(request), opts)
            await _respond(send, 201, core.output(rt, version, created), opts.warnings)
        elif request.method == "DELETE":
            options = self._delete_options(request)
            deleted = core.delete_collection(
                rt,
                namespace,
                request.query.get("labelSelector", ""),
                request.query.get("fieldSelector", ""),
                options,
            )
            await _respond(
                send,
                200,
                {
                    "kind": rt.list_kind,
                    "apiVersion": rt.api_version(version),
                    "metadata": {"resourceVersion": str(core.store.rv)},
                    "items": [core.output(rt, version, obj) for obj in deleted],
                },
            )
        else:
            raise method_not_allowed(request.method)

    def _delete_options(self, request: Request) -> DeleteOptions:
        options = DeleteOptions()
        if request.body:
            body = self._body(request)
            if not isinstance(body, dict):
                raise bad_request("DeleteOptions must be a JSON object")
            options.propagation_policy = body.get("propagationPolicy")
            if body.get("orphanDependents") is True and options.propagation_policy is None:
                options.propagation_policy = "Orphan"
            preconditions = body.get("preconditions") or {}
            options.precondition_uid = preconditions.get("uid")
            options.precondition_rv = preconditions.get("resourceVersion")
            options.dry_run = "All" in (body.get("dryRun") or [])
        if request.query.get("propagationPolicy"):
            options.propagation_policy = request.query["propagationPolicy"]
        if request.flag("orphanDependents") and options.propagation_policy is None:
            options.propagation_policy = "Orphan"
        if request.query.get("dryRun") == "All":
            options.dry_run = True
        return options

    async def _item(
        self,
        request: Request,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        subresource: str,
        send: Send,
    ) -> None:
        core = self.core
        if subresource and not (subresource == "status" and rt.status_subresource):
            raise ApiError(404, "the server could not find the requested resource")
        if request.method == "GET":
            obj = core.output(rt, version, core.get(rt, namespace, name))
            wanted = _table_request(request.headers.get("accept", ""), request.query)
            metadata_version = _metadata_request(request.headers.get("accept", ""))
            if wanted is None and metadata_version is not None and not subresource:
                await _respond(send, 200, table.partial_metadata(obj, metadata_version))
            elif wanted is not None:
                body = table.table(
                    rt,
                    version,
                    [obj],
                    wanted.version,
                    wanted.include_object,
                    {"resourceVersion": obj["metadata"]["resourceVersion"]},
                )
                await _respond(send, 200, body)
            else:
                await _respond(send, 200, obj)
        elif request.method == "PUT":
            opts = self._write_options(request)
            updated = core.update(
                rt, version, namespace, name, self._body(request), subresource, opts
            )
            await _respond(send, 200, core.output(rt, version, updated), opts.warnings)
        elif request.method == "PATCH":
            opts = self._write_options(request)
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type not in (MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH):
                accepted = f"{JSON_PATCH}, {MERGE_PATCH}" + (
                    f", {STRATEGIC_PATCH}" if rt.builtin else ""
                )
                raise ApiError(
                    415,
                    "the body of the request was in an unknown format - "
                    f"accepted media types include: {accepted}",
                    "UnsupportedMediaType",
                )
            patched = core.patch(
                rt, version, namespace, name, content_type, self._body(request), subresource, opts
            )
            await _respond(send, 200, core.output(rt, version, patched), opts.warnings)
        elif request.method == "DELETE":
            if subresource:
                raise method_not_allowed("DELETE")
            deleted = core.delete(rt, namespace, name, self._delete_options(request))
            await _respond(send, 200, core.output(rt, version, deleted))
        else:
            raise method_not_allowed(request.method)

    # -- watch -------------------------------------------------------------------------------

    async def _watch(
        self,
        request: Request,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        field_selector = request.query.get("fieldSelector", "")
        if name is not None:
            clause = f"metadata.name={name}"
            field_selector = f"{field_selector},{clause}" if field_selector else clause
        timeout_text = request.query.get("timeoutSeconds", "")
        try:
            timeout = float(timeout_text) if timeout_text else self.default_watch_timeout
        except ValueError as exc:
            raise bad_request(f"invalid timeoutSeconds {timeout_text!r}") from exc
        if not math.isfinite(timeout) or timeout < 0:
            raise bad_request(f"invalid timeoutSeconds {timeout_text!r}")
        params = WatchParams(
            rt=rt,
            version=version,
            namespace=namespace,
            label_selector=request.query.get("labelSelector", ""),
            field_selector=field_selector,
            resource_version=request.query.get("resourceVersion", ""),
            bookmarks=request.flag("allowWatchBookmarks"),
            send_initial_events=request.flag("sendInitialEvents"),
            timeout=timeout,
            bookmark_interval=self.bookmark_interval,
            table=None,
            metadata_only=_metadata_request(request.headers.get("accept", "")),
        )
        wanted = _table_request(request.headers.get("accept", ""), request.query)
        if wanted is not None:
            params.table = (wanted.version, wanted.include_object)
            params.metadata_only = None
        await self.watches.stream(params, receive, send)


async def _respond(send: Send, code: int, body: Any, warnings: list[str] | None = None) -> None:
    headers = list(_JSON)
    for warning in warnings or []:
        # RFC 7234 warn-text: a quoted-string, with backslash escapes for quote and backslash.
        text = warning.replace("\\", "\\\\").replace('"', '\\"')
        headers.append((b"warning", f'299 - "{text}"'.encode()))
    await _respond_raw(send, code, orjson.dumps(body), None, headers)


async def _respond_raw(
    send: Send,
    code: int,
    data: bytes,
    content_type: bytes | None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    all_headers = headers if headers is not None else [(b"content-type", content_type or b"")]
    all_headers = [*all_headers, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": all_headers})
    await send({"type": "http.response.body", "body": data})
