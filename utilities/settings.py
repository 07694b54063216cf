"""How a part of the project declares its configuration keys: dataclass fields with a default, a one-line help,
the allowed values and numeric bounds, written once next to the code that reads them.

    @dataclass
    class ModelSettings:
        embed_dim: int = setting(512, "embedding dimension", at_least=1)
        pooling: str = setting("avgmax", "pooling of CNN feature maps", choices=lambda: tuple(POOLINGS))

`check_settings(ModelSettings, values)` checks the choices and bounds of those keys on any object that has them
(the whole configuration, or a namespace in a test) and raises `UserError` naming the first bad key. The
configuration package assembles the schema from these classes; the keys stay flat (``embed_dim``, not
``model.embed_dim``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from utilities.errors import UserError

Choices = Sequence[Any] | Callable[[], Sequence[Any]] | None


def setting(
    default: Any,
    help: str,
    choices: Choices = None,
    *,
    at_least: float | None = None,
    more_than: float | None = None,
    at_most: float | None = None,
    less_than: float | None = None,
    what: str = "",
    aliases: tuple[str, ...] = (),
    parse: Callable[[list[str]], list[Any]] | None = None,
    table: str = "",
) -> Any:
    """A configuration key as a dataclass field: default, one-line help, allowed values (a sequence, or a
    function returning a registry's names, read when needed), bounds (`what` names the kind of value in
    the error, e.g. "a fraction") and older names still accepted for it (`aliases`).

    `parse` (a list key): turns the values given for the key in a YAML file or on the command line, as
    strings, into the list's items (e.g. several spellings of one name). `table`: the key's description in
    the documentation's key table when its help is too long for it (its choices are then listed elsewhere)."""
    meta = {
        "aliases": tuple(aliases),
        "help": help,
        "choices": choices if callable(choices) or not choices else tuple(choices),
        "bounds": (at_least, more_than, at_most, less_than),
        "what": what,
        "parse": parse,
        "table": table,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_choices(field: dataclasses.Field) -> tuple[Any, ...] | None:
    """The allowed values of a key (None: any value of its type)."""
    choices = field.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def field_default(field: dataclasses.Field) -> Any:
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds_text(field: dataclasses.Field) -> str:
    """The bounds of a key in words ("at least 1", "in (0, 1)"), empty when it has none."""
    at_least, more_than, at_most, less_than = field.metadata.get("bounds", (None,) * 4)
    low = (
        (f"[{_number(at_least)}" if at_least is not None else f"({_number(more_than)}")
        if (at_least is not None or more_than is not None)
        else None
    )
    high = (
        (f"{_number(at_most)}]" if at_most is not None else f"{_number(less_than)})")
        if (at_most is not None or less_than is not None)
        else None
    )
    if low and high:
        return f"in {low}, {high}"
    if at_least is not None:
        return "not negative" if at_least == 0 else f"at least {_number(at_least)}"
    if more_than is not None:
        return "positive" if more_than == 0 else f"more than {_number(more_than)}"
    if at_most is not None:
        return f"at most {_number(at_most)}"
    if less_than is not None:
        return f"less than {_number(less_than)}"
    return ""


def _within(value: Any, field: dataclasses.Field) -> bool:
    at_least, more_than, at_most, less_than = field.metadata.get("bounds", (None,) * 4)
    return not (
        (at_least is not None and value < at_least)
        or (more_than is not None and value <= more_than)
        or (at_most is not None and value > at_most)
        or (less_than is not None and value >= less_than)
    )


def check_field(field: dataclasses.Field, value: Any) -> None:
    """`UserError` naming the key when `value` is not one of its choices or outside its bounds."""
    choices = field_choices(field)
    if choices and value not in choices:
        raise UserError(f"key '{field.name}' must be one of {', '.join(map(str, choices))}; got '{value}'")
    if not _within(value, field):
        bounds = bounds_text(field)
        if bounds == "not negative":
            raise UserError(f"key '{field.name}' must not be negative; got {value}")
        what = f"{field.metadata['what']} " if field.metadata.get("what") else ""
        raise UserError(f"key '{field.name}' must be {what}{bounds}; got {value}")


def check_settings(settings: type, values: Any) -> None:
    """Check every key that the dataclass `settings` declares, read from `values` (any object with them)."""
    for field in dataclasses.fields(settings):
        check_field(field, getattr(values, field.name))


def settings_of(settings: type, values: Any) -> Any:
    """An instance of the dataclass `settings` holding its keys' values read from `values`."""
    return settings(**{field.name: getattr(values, field.name) for field in dataclasses.fields(settings)})


def defaults_of(settings: type) -> dict[str, Any]:
    """Every key of the dataclass `settings` with its default."""
    return {field.name: field_default(field) for field in dataclasses.fields(settings)}
