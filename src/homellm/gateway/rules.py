"""JSON shape rules that check a parsed request and describe themselves as JSON Schema.

A rule (:class:`Int`, :class:`Num`, :class:`Bool`, :class:`Str`, :class:`Array`, :class:`AnyOf`,
:class:`Obj`, :class:`Tagged`) checks one value and returns the first :class:`Violation` with the
path of the field (``messages[0].content``), or None; ``schema()`` gives the JSON Schema that
accepts exactly what the check accepts, so a published document cannot drift from the checks.
Pure and allocation-light: a valid value costs one dictionary lookup per field it carries.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
MISSING = "missing_required_parameter"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a request is refused: the field's path (``messages[0].content``), what, a code."""

    param: str
    message: str
    code: str


def _join(param: str, key: str) -> str:
    return f"{param}.{key}" if param else key


_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}


def _kind(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), type(value).__name__)


class Rule(ABC):
    """One JSON value's constraints: a check and the JSON Schema saying the same."""

    __slots__ = ("nullable",)

    def __init__(self, nullable: bool) -> None:
        self.nullable = nullable

    def check(self, value: Any, param: str) -> Violation | None:
        if value is None:
            return None if self.nullable else Violation(param, f"{param} must not be null",
                                                        INVALID_TYPE)
        return self._check(value, param)

    @abstractmethod
    def _check(self, value: Any, param: str) -> Violation | None:
        """The check of a non-null value."""

    @abstractmethod
    def _schema(self) -> dict[str, Any]:
        """The JSON Schema of a non-null value."""

    def accepts_type(self, value: Any) -> bool:
        """Whether ``value`` has this rule's JSON type (its bounds aside)."""
        return value is None if self.nullable and value is None else self._accepts_type(value)

    @abstractmethod
    def _accepts_type(self, value: Any) -> bool: ...

    def schema(self) -> dict[str, Any]:
        schema = self._schema()
        if not self.nullable:
            return schema
        if isinstance(schema.get("type"), str) and not ({"enum", "const"} & schema.keys()):
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}


def _number(value: float) -> str:
    return str(value) if type(value) is int else f"{value:g}"


def _bounds_message(param: str, low: float | None, high: float | None,
                    low_open: bool = False) -> str:
    if low is not None and high is not None:
        if low == high:
            return f"{param} must be {_number(low)}"
        left = "(" if low_open else "["
        return f"{param} must be in {left}{_number(low)}, {_number(high)}]"
    if low is not None:
        return f"{param} must be {'>' if low_open else '>='} {_number(low)}"
    assert high is not None
    return f"{param} must be <= {_number(high)}"


class Int(Rule):
    __slots__ = ("maximum", "minimum")

    def __init__(self, minimum: int | None = None, maximum: int | None = None,
                 nullable: bool = True) -> None:
        super().__init__(nullable)
        self.minimum, self.maximum = minimum, maximum

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is int or (type(value) is float and value.is_integer())

    def _check(self, value: Any, param: str) -> Violation | None:
        # bool is a subclass of int, and not an integer in JSON; 2.0 is one (JSON Schema says
        # so, and engines' int() takes it)
        if type(value) is not int and not (type(value) is float and value.is_integer()):
            return Violation(param, f"{param} must be an integer, not {_kind(value)}",
                             INVALID_TYPE)
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            return Violation(param, _bounds_message(param, self.minimum, self.maximum),
                             INVALID_VALUE)
        return None

    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


class Num(Rule):
    """A number in [minimum, maximum] (or (minimum, maximum]); with ``floor``, the values strictly
    between ``minimum`` and ``floor`` are refused too (``temperature``: 0 or at least 1e-5)."""

    __slots__ = ("exclusive_minimum", "floor", "maximum", "minimum", "why")

    def __init__(self, minimum: float, maximum: float, exclusive_minimum: bool = False,
                 nullable: bool = True, floor: float | None = None, why: str = "") -> None:
        super().__init__(nullable)
        self.minimum, self.maximum = minimum, maximum
        self.exclusive_minimum = exclusive_minimum
        self.floor, self.why = floor, why

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is float or type(value) is int

    def _check(self, value: Any, param: str) -> Violation | None:
        kind = type(value)
        if kind is not float and kind is not int:
            return Violation(param, f"{param} must be a number, not {_kind(value)}",
                             INVALID_TYPE)
        if kind is float and not math.isfinite(value):
            return Violation(param, f"{param} must be a finite number", INVALID_VALUE)
        low = self.minimum
        if value > self.maximum or value < low or (self.exclusive_minimum and value == low):
            message = _bounds_message(param, low, self.maximum, self.exclusive_minimum)
            return Violation(param, message + self.why, INVALID_VALUE)
        floor = self.floor
        if floor is not None and low < value < floor:
            return Violation(param, f"{param} must be {_number(low)} or at least "
                             f"{_number(floor)}{self.why}", INVALID_VALUE)
        return None

    def _schema(self) -> dict[str, Any]:
        if self.floor is not None:
            return {"anyOf": [{"type": "number", "const": self.minimum},
                              {"type": "number", "minimum": self.floor,
                               "maximum": self.maximum}]}
        schema: dict[str, Any] = {"type": "number", "maximum": self.maximum}
        schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        return schema


class Bool(Rule):
    __slots__ = ()

    def __init__(self, nullable: bool = True) -> None:
        super().__init__(nullable)

    def _accepts_type(self, value: Any) -> bool:
        return value is True or value is False

    def _check(self, value: Any, param: str) -> Violation | None:
        if value is True or value is False:
            return None
        return Violation(param, f"{param} must be a boolean, not {_kind(value)}", INVALID_TYPE)

    def _schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


def _is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON's ``"\\ud800"``): tokenizers fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


class Str(Rule):
    """A string; ``json``: one holding a JSON text (a tool call's ``arguments``)."""

    __slots__ = ("enum", "json", "min_length")

    def __init__(self, min_length: int = 0, enum: tuple[str, ...] = (),
                 nullable: bool = True, json: bool = False) -> None:
        super().__init__(nullable)
        self.min_length, self.enum, self.json = min_length, enum, json

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is str

    def _check(self, value: Any, param: str) -> Violation | None:
        if type(value) is not str:
            return Violation(param, f"{param} must be a string, not {_kind(value)}",
                             INVALID_TYPE)
        if not value.isascii() and not _is_unicode(value):
            return Violation(param, f"{param} is not valid Unicode (it holds a lone UTF-16 "
                             "surrogate such as \\ud800)", INVALID_VALUE)
        if self.json and not _is_json(value):
            return Violation(param, f"{param} must be a JSON text", INVALID_VALUE)
        if self.enum and value not in self.enum:
            allowed = ", ".join(repr(e) for e in self.enum)
            return Violation(param, f"{param} must be one of {allowed}, not {value!r:.60}",
                             INVALID_VALUE)
        if len(value) < self.min_length:
            return Violation(param, f"{param} must not be empty", INVALID_VALUE)
        return None

    def _schema(self) -> dict[str, Any]:
        if len(self.enum) == 1:
            return {"type": "string", "const": self.enum[0]}
        schema: dict[str, Any] = {"type": "string"}
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.json:
            schema["contentMediaType"] = "application/json"
        return schema


class Array(Rule):
    __slots__ = ("items", "max_items", "min_items")

    def __init__(self, items: Rule, min_items: int = 0, max_items: int | None = None,
                 nullable: bool = True) -> None:
        super().__init__(nullable)
        self.items, self.min_items, self.max_items = items, min_items, max_items

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is list

    def _check(self, value: Any, param: str) -> Violation | None:
        if type(value) is not list:
            return Violation(param, f"{param} must be an array, not {_kind(value)}",
                             INVALID_TYPE)
        if len(value) < self.min_items:
            what = "must not be empty" if self.min_items == 1 else \
                f"must have at least {self.min_items} items"
            return Violation(param, f"{param} {what}", INVALID_VALUE)
        if self.max_items is not None and len(value) > self.max_items:
            return Violation(param, f"{param} must have at most {self.max_items} items",
                             INVALID_VALUE)
        check = self.items.check
        for index, item in enumerate(value):
            violation = check(item, f"{param}[{index}]")
            if violation is not None:
                return violation
        return None

    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.items.schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema


class AnyOf(Rule):
    """One of several rules of different JSON types (``stop``: a string or a list of them)."""

    __slots__ = ("description", "rules")

    def __init__(self, description: str, *rules: Rule, nullable: bool = True) -> None:
        super().__init__(nullable)
        self.description, self.rules = description, rules

    def _accepts_type(self, value: Any) -> bool:
        return any(rule.accepts_type(value) for rule in self.rules)

    def _check(self, value: Any, param: str) -> Violation | None:
        best: Violation | None = None
        for rule in self.rules:
            if rule.accepts_type(value):  # its type picks the alternative: report its reason
                violation = rule.check(value, param)
                if violation is None:
                    return None
                if best is None or (len(violation.param), violation.param) > (
                        len(best.param), best.param):
                    best = violation  # the alternative that got furthest into the value
        return best or Violation(param, f"{param} must be {self.description}, "
                                  f"not {_kind(value)}", INVALID_TYPE)

    def _schema(self) -> dict[str, Any]:
        return {"anyOf": [rule.schema() for rule in self.rules]}


class Obj(Rule):
    """A JSON object: named fields with rules (others allowed, unchecked) and required ones.

    ``one_of_required``: at least one of these fields must be present and not null (an
    assistant message carries ``content`` or ``tool_calls``).
    """

    __slots__ = ("fields", "one_of_required", "required")

    def __init__(self, fields: Mapping[str, Rule], required: tuple[str, ...] = (),
                 one_of_required: tuple[str, ...] = (), nullable: bool = False) -> None:
        super().__init__(nullable)
        self.fields = dict(fields)
        self.required, self.one_of_required = required, one_of_required

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is dict

    def _check(self, value: Any, param: str) -> Violation | None:
        if type(value) is not dict:
            return Violation(param or "body", f"{param or 'the body'} must be an object, "
                             f"not {_kind(value)}", INVALID_TYPE)
        for name in self.required:
            if name not in value:
                where = _join(param, name)
                return Violation(where, f"{where} is required", MISSING)
        if self.one_of_required and all(value.get(n) is None for n in self.one_of_required):
            names = " or ".join(_join(param, n) for n in self.one_of_required)
            return Violation(_join(param, self.one_of_required[0]), f"{names} is required",
                             MISSING)
        fields = self.fields
        for name, item in value.items():
            rule = fields.get(name)
            if rule is not None:
                violation = rule.check(item, _join(param, name))
                if violation is not None:
                    return violation
        return None

    def _schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object", "properties": {n: r.schema() for n, r in self.fields.items()}}
        if self.required:
            schema["required"] = list(self.required)
        if self.one_of_required:
            schema["anyOf"] = [{"required": [n], "properties": {n: {"not": {"type": "null"}}}}
                               for n in self.one_of_required]
        return schema


class Tagged(Rule):
    """An object whose ``tag`` field (a string) picks its rules: messages by role, content
    parts by type."""

    __slots__ = ("tag", "variants")

    def __init__(self, tag: str, variants: Mapping[str, Obj]) -> None:
        super().__init__(nullable=False)
        self.tag, self.variants = tag, dict(variants)

    def _accepts_type(self, value: Any) -> bool:
        return type(value) is dict

    def _check(self, value: Any, param: str) -> Violation | None:
        if type(value) is not dict:
            return Violation(param, f"{param} must be an object, not {_kind(value)}",
                             INVALID_TYPE)
        where = _join(param, self.tag)
        tag = value.get(self.tag)
        if tag is None:
            return Violation(where, f"{where} is required", MISSING)
        variant = self.variants.get(tag) if type(tag) is str else None
        if variant is None:
            allowed = ", ".join(repr(v) for v in self.variants)
            shown = repr(tag) if type(tag) is str else _kind(tag)
            return Violation(where, f"{where} must be one of {allowed}, not {shown:.60}",
                             INVALID_VALUE)
        return variant.check(value, param)

    def _schema(self) -> dict[str, Any]:
        variants = []
        for name, rule in self.variants.items():
            schema = rule.schema()
            schema["properties"] = {self.tag: {"type": "string", "const": name},
                                    **schema["properties"]}
            schema["required"] = [self.tag, *schema.get("required", [])]
            variants.append(schema)
        return {"oneOf": variants}
