"""User-facing errors.

Anything a user can cause (a bad YAML key, a missing file, a malformed data row) is raised as a
:class:`DistatError` whose message is one line that names the culprit. The CLI prints it as
``distat: error: <message>`` and exits with status 2; nothing else in the package prints.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError


class DistatError(Exception):
    """An error caused by the user's input; its message is one self-contained line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(DistatError):
    """A configuration file or value is invalid."""


class DataError(DistatError):
    """A dataset is missing, unreadable or malformed."""


class ModelError(DistatError):
    """A backbone or checkpoint cannot be loaded."""


def first_line(exc: BaseException, max_len: int | None = None, *, typed: bool = False, whole: bool = False) -> str:
    """The first line of a library exception's message: what a one-line error shows of it.

    The one helper for this in the package. Its type name stands in for an empty message; ``typed`` puts
    the type name in front (``ValueError: bad value``). A first line ending in ":" only announces the lines
    after it (torch's "Error(s) in loading state_dict for X:"), so the next line is kept with it. ``whole``:
    every line, joined into one (nltk's LookupError opens with a line of asterisks and names the missing
    resource below it). ``max_len`` cuts the message, not the type name, to that many characters.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if whole:
        text = " ".join(" ".join(lines).split())
    else:
        text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if max_len is not None:
        text = text[:max_len]
    return f"{type(exc).__name__}: {text}" if typed else text


# --------------------------------------------------------------------------------------------------
# pydantic validation errors as one line (the one formatter of the package)


class KeyedError(ValueError):
    """Raised inside a pydantic validator for a problem *below* the location pydantic knows: ``key`` is
    appended to the error's path by :func:`first_problem` (a search space's ``params.adv_lr.step``, say)."""

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key = tuple(str(k) for k in key)
        self.message = message


def first_problem(err: ValidationError, root: type[BaseModel] | None = None,
                  hidden: Collection[str] = ()) -> tuple[tuple[str, ...], str]:
    """The first problem of a pydantic error as (the user's key path, message).

    With ``root`` (the model that was validated) the path is the one the user wrote: a discriminated
    union's tag, which pydantic puts in ``loc`` (``('method', 'pgd', 'mix_alpha')``), is left out and named
    in the message instead (``unknown key for method 'pgd'``), and an unknown key's message lists the keys
    allowed there, less the dotted paths in ``hidden`` (keys the caller sets itself).
    """
    first = err.errors()[0]
    path, tag, _ = _walk(root, tuple(first["loc"]))
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedError):
        return path + cause.key, cause.message
    if first["type"] == "extra_forbidden":
        _, _, parent = _walk(root, tuple(first["loc"])[:-1])
        message = "unknown key" + (f" for {tag}" if tag else "")
        if parent is not None:
            prefix = ".".join(path[:-1])
            allowed = [key for key in _keys(parent) if (f"{prefix}.{key}" if prefix else key) not in hidden]
            message += f" (allowed: {', '.join(allowed)})"
        return path, message
    return path, str(first["msg"]).removeprefix("Value error, ")


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] | None = None,
                            hidden: Collection[str] = ()) -> str:
    """A pydantic error as one line, ``source: key.path: message``, counting the further problems.

    ``source`` names the input (a file, ``search``...); ``root`` and ``hidden`` as for
    :func:`first_problem` (pass ``root`` whenever the model holds a discriminated union, so that the path
    is the user's).
    """
    path, message = first_problem(err, root, hidden)
    more = len(err.errors()) - 1
    extra = f" (and {more} more problem(s))" if more else ""
    return f"{source}: {'.'.join(path) or '<top level>'}: {message}{extra}"


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _walk(root: type[BaseModel] | None,
          loc: tuple[str | int, ...]) -> tuple[tuple[str, ...], str | None, type[BaseModel] | None]:
    """Follow ``loc`` through ``root``'s fields: (the user's path, the last union tag as ``"<field> '<tag>'"``,
    the model at the end of ``loc`` or None when it does not end at one of our models)."""
    path: list[str] = []
    tag: str | None = None
    model = root
    i = 0
    while i < len(loc):
        part = str(loc[i])
        path.append(part)
        i += 1
        if model is None:
            continue
        info = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        model = None
        if info is None:
            continue
        annotation = _strip_none(info.annotation)
        if _is_model(annotation):
            model = annotation
        elif get_origin(annotation) is dict and _is_model(get_args(annotation)[1]) and i < len(loc):
            path.append(str(loc[i]))  # the mapping's own key (a search parameter's name, say)
            model, i = get_args(annotation)[1], i + 1
        elif info.discriminator is not None and i < len(loc):
            members = _tagged_members(annotation, info.discriminator)
            if str(loc[i]) in members:  # the union's tag: not part of what the user wrote
                tag = f"{part} {str(loc[i])!r}"
                model, i = members[str(loc[i])], i + 1
    return tuple(path), tag, model


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _strip_none(annotation: Any) -> Any:
    """``Model | None`` → ``Model``; anything else unchanged."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _tagged_members(annotation: Any, discriminator: Any) -> dict[str, type[BaseModel]]:
    """Tag → member model of a union discriminated on a field (``Literal`` values) or by ``Tag`` markers."""
    out: dict[str, type[BaseModel]] = {}
    for member in get_args(annotation):
        tags = [m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)]
        member = get_args(member)[0] if tags else member
        if not _is_model(member):
            continue
        if not tags and isinstance(discriminator, str) and discriminator in member.model_fields:
            field = member.model_fields[discriminator].annotation
            tags = [str(v) for v in get_args(field)] if get_origin(field) is Literal else []
        for t in tags:
            out[t] = member
    return out
