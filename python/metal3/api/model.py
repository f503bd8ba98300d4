"""Typed API objects that parse from and serialise to the Kubernetes JSON form without loss.

Every resource type is a dataclass deriving from :class:`Model`. Each field is declared with
:func:`prop`, which records its JSON name and the schema facts the CRD carries (enum, pattern,
default, bounds). The same declarations drive three things, so they cannot drift apart:

* :meth:`Model.from_json` / :meth:`Model.to_json`: conversion to and from JSON-compatible data,
* :func:`metal3.api.crd.openapi_schema`: the structural OpenAPI schema written into ``crds/``,
* the field-by-field agreement test between the two.

Absent fields are ``None`` (never a made-up default), and fields the type does not know are kept
in :attr:`Model.extra` and written back, so ``to_json(from_json(x)) == x`` for any valid ``x``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin

import orjson

JsonObject = dict[str, Any]
"""A JSON object whose content the API does not constrain (kept verbatim)."""


class ModelError(ValueError):
    """Data that does not have the shape of the declared type; says where (a JSON path)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class FieldSchema:
    """Schema facts for one field, as the CRD's OpenAPI schema states them."""

    json_name: str
    description: str
    required: bool = False
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    format: str | None = None
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    nullable: bool = False
    # A literal schema used instead of the one derived from the type (e.g. `metadata: object`).
    schema_override: Mapping[str, Any] | None = None


def prop(
    json_name: str,
    description: str,
    *,
    required: bool = False,
    enum: Iterable[str] | None = None,
    pattern: str | None = None,
    format: str | None = None,
    default: Any = None,
    minimum: int | None = None,
    maximum: int | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    nullable: bool = False,
    schema_override: Mapping[str, Any] | None = None,
) -> Any:
    """Declare a model field. Its Python value is ``None`` when the JSON omits it."""
    facts = FieldSchema(
        json_name=json_name,
        description=description,
        required=required,
        enum=None if enum is None else tuple(str(e) for e in enum),  # StrEnum -> plain str
        pattern=pattern,
        format=format,
        default=default,
        minimum=minimum,
        maximum=maximum,
        min_items=min_items,
        max_items=max_items,
        min_length=min_length,
        max_length=max_length,
        nullable=nullable,
        schema_override=schema_override,
    )
    return field(default=None, metadata={"schema": facts})


# A loader turns JSON data into the Python value and checks its type. It gets the parent's path
# and its own key, and joins them only when it needs the path (an error, or descending), which
# keeps the common case (valid data) free of string building.
_Load = Callable[[Any, str, "str | int"], Any]


def _at(parent: str, key: str | int) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}"


_Dump = Callable[[Any], Any]


@dataclass(frozen=True)
class _Field:
    attr: str
    schema: FieldSchema
    hint: Any
    load: _Load
    dump: _Dump
    scalar: tuple[type, ...]  # JSON types taken as they are (checked inline), or ()


M = TypeVar("M", bound="Model")


@dataclass(kw_only=True)
class Model:
    """Base of every API type: typed fields plus the unknown ones, kept in ``extra``."""

    extra: JsonObject = field(default_factory=dict, repr=False, compare=True)

    # Per-class plan, built on first use from the type hints.
    _plan: ClassVar[tuple[_Field, ...] | None] = None
    _by_json: ClassVar[dict[str, _Field] | None] = None
    _unset: ClassVar[dict[str, None]] = {}

    @classmethod
    def fields(cls) -> tuple[_Field, ...]:
        """The declared fields in declaration order (not ``extra``)."""
        plan = cls.__dict__.get("_plan")
        if plan is None:
            hints = typing.get_type_hints(cls)
            built: list[_Field] = []
            for f in dataclasses.fields(cls):
                facts = f.metadata.get("schema")
                if facts is None:
                    continue
                hint = hints[f.name]
                scalar = _SCALARS.get(unwrap_optional(hint), ())
                built.append(_Field(f.name, facts, hint, _loader(hint), _dumper(hint), scalar))
            plan = tuple(built)
            cls._plan = plan
            cls._by_json = {f.schema.json_name: f for f in plan}
            cls._unset = dict.fromkeys((f.attr for f in plan), None)
        return plan

    @classmethod
    def from_json(cls, data: Any, path: str = "") -> Self:
        """Build from JSON-compatible data (as parsed by orjson or PyYAML)."""
        if not isinstance(data, dict):
            raise ModelError(path, f"expected an object, got {json_type_name(data)}")
        by_json = cls.__dict__.get("_by_json")
        if by_json is None:
            cls.fields()
            by_json = cls.__dict__["_by_json"]
        values: dict[str, Any] = cls.__dict__["_unset"].copy()
        extra: JsonObject = {}
        for key, raw in data.items():
            f = by_json.get(key)
            if f is None:
                extra[key] = raw
            elif raw is None:
                continue
            elif type(raw) in f.scalar:
                values[f.attr] = raw
            else:
                values[f.attr] = f.load(raw, path, key)
        # Every field is set here, so the generated __init__ (and its checks) can be skipped.
        instance = object.__new__(cls)
        values["extra"] = extra
        instance.__dict__.update(values)
        return instance

    def to_json(self) -> JsonObject:
        """JSON-compatible data: declared fields that are set, then the unknown ones."""
        out: JsonObject = {}
        for f in self.fields():
            value = getattr(self, f.attr)
            if value is not None:
                out[f.schema.json_name] = f.dump(value)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def loads(cls, raw: bytes | str) -> Self:
        """Parse JSON text with orjson."""
        return cls.from_json(orjson.loads(raw))

    def dumps(self) -> bytes:
        """Serialise to JSON bytes with orjson."""
        return orjson.dumps(self.to_json())

    def copy(self) -> Self:
        """A deep copy (through the JSON form, so nested models are not shared)."""
        return type(self).from_json(self.to_json())


def _dump_any(value: Any) -> Any:
    """Untyped data: copy containers (so output never aliases the model), convert models."""
    if isinstance(value, Model):
        return value.to_json()
    if isinstance(value, list):
        return [_dump_any(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump_any(v) for k, v in value.items()}
    return value


def _identity(value: Any) -> Any:
    return value


def _dumper(hint: Any) -> _Dump:
    """How to write a field of type ``hint``; planned once per field, like its loader."""
    hint = unwrap_optional(hint)
    origin = get_origin(hint)
    if hint in (str, bool, int, float):
        return _identity
    if isinstance(hint, type) and issubclass(hint, Model):
        return lambda value: value.to_json()
    if origin is list:
        (item_hint,) = get_args(hint)
        dump_item = _dumper(item_hint)
        if dump_item is _identity:
            return list
        return lambda value: [dump_item(v) for v in value]
    if origin is dict:
        _, value_hint = get_args(hint)
        dump_value = _dumper(value_hint)
        if dump_value is _identity:
            return dict
        return lambda value: {k: dump_value(v) for k, v in value.items()}
    return _dump_any


def json_type_name(value: Any) -> str:
    """The JSON Schema type name of a parsed JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


_SCALARS: dict[Any, tuple[type, ...]] = {
    str: (str,),
    bool: (bool,),
    int: (int,),
    float: (int, float),  # ints stay ints, so a round trip writes back the same text
}
_EXPECTED = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _loader(hint: Any) -> _Load:
    hint = unwrap_optional(hint)
    origin = get_origin(hint)
    if hint is Any:
        return lambda raw, path, key: raw
    if hint in _SCALARS:
        accepted, expected = _SCALARS[hint], _EXPECTED[hint]

        def load_scalar(raw: Any, path: str, key: str | int) -> Any:
            if type(raw) not in accepted:
                raise ModelError(_at(path, key), f"expected {expected}, got {json_type_name(raw)}")
            return raw

        return load_scalar
    if origin is list:
        (item_hint,) = get_args(hint)
        load_item = _loader(item_hint)
        item_scalar = _SCALARS.get(unwrap_optional(item_hint), ())

        def load_list(raw: Any, path: str, key: str | int) -> list[Any]:
            if not isinstance(raw, list):
                raise ModelError(_at(path, key), f"expected an array, got {json_type_name(raw)}")
            if item_scalar and all(type(v) in item_scalar for v in raw):
                return list(raw)
            here = _at(path, key)
            return [load_item(v, here, i) for i, v in enumerate(raw)]

        return load_list
    if origin is dict:
        _, value_hint = get_args(hint)
        load_value = _loader(value_hint)

        def load_map(raw: Any, path: str, key: str | int) -> dict[str, Any]:
            if not isinstance(raw, dict):
                raise ModelError(_at(path, key), f"expected an object, got {json_type_name(raw)}")
            here = _at(path, key)
            return {k: load_value(v, here, k) for k, v in raw.items()}

        return load_map
    if isinstance(hint, type) and issubclass(hint, Model):
        model = hint
        return lambda raw, path, key: model.from_json(raw, _at(path, key))
    raise TypeError(f"unsupported field type {hint!r}")
