"""A value that validates against a JSON schema, derived deterministically from a prompt.

Structured-output replies and forced tool calls must parse and validate in the pipeline
exactly as real ones would, and tests must be able to tell which input produced which
output. So strings are slices of the prompt, and every choice (enum member, number,
boolean) is a hash of (seed, prompt, JSON path): same request, same value.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import uuid
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 32  # a recursive schema that never bottoms out is an error, not a hang
FULL_DEPTH = 4  # below this depth optional properties are left out, so recursion ends
EPOCH_DAY = dt.date(2020, 1, 1)


class SchemaError(ValueError):
    """The schema cannot be satisfied or resolved (the API would reject it)."""


def stable_int(*parts: object) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    joined = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.sha256(joined).digest()[:8], "big")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Both schemas at once, as far as generation needs: properties and required unite."""
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        raise SchemaError(f"only local $ref values are supported, got {ref!r}")
    target: Any = root
    for token in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or token not in target:
            raise SchemaError(f"$ref {ref!r} does not resolve")
        target = target[token]
    if target is True:
        return {}
    if not isinstance(target, dict):
        raise SchemaError(f"$ref {ref!r} does not point to a schema")
    return target


class _Generator:
    def __init__(self, root: dict[str, Any], prompt: str, seed: int, salt: str) -> None:
        self.root = root
        self.prompt = prompt
        self.seed = seed
        self.salt = salt
        self._hashed: Any = None  # see pick

    @functools.cached_property
    def words(self) -> list[str]:
        """The prompt's words, for strings: split only when a string is made."""
        return self.prompt.split() or ["emulated"]

    def pick(self, path: str) -> int:
        """stable_int(seed, salt, prompt, path), from a sha256 fed once per value with
        what every pick's input starts with: the prompt is hashed once, not once per
        enum, number or string in the value."""
        if self._hashed is None:
            self._hashed = hashlib.sha256(
                f"{self.seed}\x1f{self.salt}\x1f{self.prompt}\x1f".encode()
            )
        hashed = self._hashed.copy()
        hashed.update(path.encode())
        return int.from_bytes(hashed.digest()[:8], "big")

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise SchemaError(f"schema recursion deeper than {MAX_DEPTH} at {path}")
        if schema is True or schema == {}:
            return self.string({}, path)
        if not isinstance(schema, dict):
            raise SchemaError(f"{path}: unsatisfiable schema {schema!r}")
        if "$ref" in schema:
            rest = {key: value for key, value in schema.items() if key != "$ref"}
            return self.value(_merge(_resolve(schema["$ref"], self.root), rest), path, depth + 1)
        if "allOf" in schema:
            merged = {key: value for key, value in schema.items() if key != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, part if isinstance(part, dict) else {})
            return self.value(merged, path, depth + 1)
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, schema[key][0]), path, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][self.pick(path) % len(schema["enum"])]
        kind = self.kind(schema)
        if kind == "object":
            return self.object(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind in ("integer", "number"):
            return self.number(schema, path, kind == "integer")
        if kind == "boolean":
            return self.pick(path) % 2 == 0
        if kind == "null":
            return None
        return self.string(schema, path)

    @staticmethod
    def kind(schema: dict[str, Any]) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            return next((t for t in declared if t != "null"), "null")
        if isinstance(declared, str):
            return declared
        if {"properties", "required", "additionalProperties"} & schema.keys():
            return "object"
        if {"items", "prefixItems", "minItems"} & schema.keys():
            return "array"
        if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & schema.keys():
            return "number"
        return "string"

    def object(self, schema: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        extra = schema.get("additionalProperties", True)
        extra_schema = extra if isinstance(extra, dict) else {}
        names = [n for n in properties if depth < FULL_DEPTH or n in required]
        names += [n for n in required if n not in properties]
        result = {
            name: self.value(properties.get(name, extra_schema), f"{path}.{name}", depth + 1)
            for name in names
        }
        counter = 0
        while len(result) < schema.get("minProperties", 0) and extra is not False:
            counter += 1
            name = f"extra_{counter}"
            result.setdefault(name, self.value(extra_schema, f"{path}.{name}", depth + 1))
        return result

    def array(self, schema: dict[str, Any], path: str, depth: int) -> list[Any]:
        prefix: list[Any] = schema.get("prefixItems") or []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        wanted = 2 if depth < FULL_DEPTH else 0  # deep down, as short as allowed
        count = max(low, min(wanted, high if high is not None else wanted), len(prefix))
        if items is False:
            count = len(prefix)
        result: list[Any] = []
        seen: set[str] = set()
        for attempt in range(count * 8):
            if len(result) == count:
                break
            index = len(result)
            item_schema = prefix[index] if index < len(prefix) else items
            item = self.value(item_schema, f"{path}[{index}]#{attempt}", depth + 1)
            key = repr(item)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            result.append(item)
        return result

    def number(self, schema: dict[str, Any], path: str, integer: bool) -> int | float:
        low, high, x_low, x_high, first, last = _number_range(schema)
        step = schema.get("multipleOf")
        if step:
            start, stop = math.ceil(first / step), math.floor(last / step)
            if start <= stop:
                value = (start + self.pick(path) % (stop - start + 1)) * step
                return int(value) if integer else value
        if first <= last:
            value = first + self.pick(path) % (last - first + 1)
            return value if integer else float(value)
        if integer:
            raise SchemaError(f"{path}: no integer satisfies the bounds")
        bounds = (
            [b for b in (low, x_low) if b is not None],
            [b for b in (high, x_high) if b is not None],
        )
        return (max(bounds[0]) + min(bounds[1])) / 2

    def string(self, schema: dict[str, Any], path: str) -> str:
        digest = self.pick(path)
        kind = schema.get("format")
        if kind == "date":
            text = (EPOCH_DAY + dt.timedelta(days=digest % 3650)).isoformat()
        elif kind == "date-time":
            moment = dt.datetime(2020, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                seconds=digest % (3650 * 86400)
            )
            text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind == "time":
            text = f"{digest % 24:02d}:{digest // 24 % 60:02d}:{digest // 1440 % 60:02d}Z"
        elif kind == "uuid":
            text = str(uuid.UUID(int=digest << 64 | digest, version=4))
        elif kind == "email":
            text = f"{self.slug(digest)}@example.com"
        elif kind in ("uri", "url"):
            text = f"https://example.com/{self.slug(digest)}"
        else:
            start = digest % max(1, len(self.words) - 5)
            text = " ".join(self.words[start : start + 6])
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(text) < low:
            text = (text + " ") * (low // (len(text) + 1) + 1)
        return text[:high] if high is not None else text

    def slug(self, digest: int) -> str:
        word = "".join(ch for ch in self.words[digest % len(self.words)].lower() if ch.isalnum())
        return word or "emulated"


def _number_range(schema: dict[str, Any]) -> tuple[Any, ...]:
    """A number schema's bounds as given (low, high, exclusive low, exclusive high), then
    the first and last integers they allow (first > last when none is)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    x_low, x_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if x_low is True:  # draft-04: a boolean that makes `minimum` exclusive
        x_low, low = low, None
    if x_high is True:
        x_high, high = high, None
    x_low = None if isinstance(x_low, bool) else x_low
    x_high = None if isinstance(x_high, bool) else x_high
    lows = [math.ceil(low)] if low is not None else []
    lows += [math.floor(x_low) + 1] if x_low is not None else []
    highs = [math.floor(high)] if high is not None else []
    highs += [math.ceil(x_high) - 1] if x_high is not None else []
    first = max(lows) if lows else (min(highs) - 100 if highs else 0)
    last = min(highs) if highs else first + 100
    return low, high, x_low, x_high, first, last


Plan = Callable[[_Generator], Any]
SCALARS = (str, int, float, bool, type(None))
_COMPOSITE = ("$ref", "allOf", "anyOf", "oneOf", "const")
_PLANS: dict[str, Plan | None] = {}
MAX_PLANS = 1024  # distinct schemas remembered; more and the memo starts over


def schema_key(schema: Any) -> str:
    """An exact memo key for a schema: repr, not JSON text or ==, which take 1, 1.0 and
    True (or a key 1 and a key "1") for the same, though values made from them differ."""
    return repr(schema)


Leaf = tuple[str, Any, int]  # ("enum", members, count) or ("integer" | "number", first, span)


def leaf(schema: Any) -> Leaf | None:
    """What `_Generator.value` does for an enum or a number schema with bounds that allow
    an integer, its choices made once: the pick (an int) indexes `members`, or is added
    to `first` modulo `span`; None for every other schema."""
    if not isinstance(schema, dict) or not schema or any(key in schema for key in _COMPOSITE):
        return None
    if "enum" in schema:
        members = schema["enum"]
        if (
            type(members) is not list
            or not members
            or not all(type(member) in SCALARS for member in members)
        ):
            return None
        return "enum", members, len(members)
    kind = _Generator.kind(schema)
    if kind not in ("integer", "number") or schema.get("multipleOf"):
        return None
    first, last = _number_range(schema)[4:]
    if not first <= last:
        return None
    return kind, first, last - first + 1


def _leaf_plan(schema: Any, path: str) -> Callable[[_Generator], Any] | None:
    found = leaf(schema)
    if found is None:
        return None
    kind, start, span = found
    if kind == "enum":
        return lambda generator: start[generator.pick(path) % span]
    if kind == "integer":
        return lambda generator: start + generator.pick(path) % span
    return lambda generator: float(start + generator.pick(path) % span)


def flat_leaves(schema: Any) -> list[tuple[str, Leaf]] | None:
    """An object of enums and numbers (the usual structured output), as its properties'
    names and leaves in order: `_Generator.value(schema, "$", 0)` is {name: the leaf's
    value at "$.name"}. None for any other schema."""
    if not isinstance(schema, dict) or any(key in schema for key in _COMPOSITE):
        return None
    if "enum" in schema or "minProperties" in schema or _Generator.kind(schema) != "object":
        return None
    properties = schema.get("properties") or {}
    if type(properties) is not dict or any(
        name not in properties for name in schema.get("required") or []
    ):
        return None
    leaves = [(name, leaf(child)) for name, child in properties.items()]
    if not all(found is not None for _, found in leaves):
        return None
    return leaves  # type: ignore[return-value]


def _flat_plan(schema: Any) -> Plan | None:
    """`_Generator.value(schema, "$", 0)` as a function of the generator, for the schemas
    flat_leaves takes: what depends only on the schema is worked out once per distinct
    schema. None for any other schema."""
    if flat_leaves(schema) is None:
        return None
    properties = schema.get("properties") or {}
    leaves = [(name, _leaf_plan(child, f"$.{name}")) for name, child in properties.items()]
    return lambda generator: {name: make(generator) for name, make in leaves}  # type: ignore[misc]


def _plan(schema: dict[str, Any], key: str) -> Plan | None:
    """The memo's plan for the schema whose schema_key is `key` (made on first sight).
    Held in a local, not read back: another thread may start the memo over meanwhile."""
    if key in _PLANS:
        return _PLANS.get(key)
    try:
        plan = _flat_plan(schema)
    except Exception:  # whatever planning trips on, the generator meets and reports
        plan = None
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def value_for_schema(
    schema: dict[str, Any], *, prompt: str, seed: int, salt: str = "", key: str | None = None
) -> Any:
    """A value valid against `schema` (local `$ref`s resolve against it), chosen by hash
    of (seed, prompt, salt, path). Raises SchemaError for schemas it cannot satisfy.
    `key` is `schema_key(schema)` when the caller has it: each distinct schema's plan is
    made once and kept (see _flat_plan)."""
    generator = _Generator(schema, prompt, seed, salt)
    plan = _plan(schema, schema_key(schema) if key is None else key)
    return plan(generator) if plan is not None else generator.value(schema, "$", 0)
