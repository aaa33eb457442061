"""Registered action types: how a journaled step is saved as JSON and rebuilt.

A journaled queue must be able to rebuild its steps in another process (the
one that recovers the run), so every step's type is registered under a
stable name and its state is plain data, serialised as JSON. Nothing is ever
unpickled from a journal.

- A class is saved with its ``to_state()`` method and rebuilt with its
  ``from_state(state)`` classmethod when it defines them; otherwise it must be
  a dataclass, saved as its fields and rebuilt by calling the class with them.
- A function step made by a :func:`~actionqueues.step` definition is saved as
  the arguments it was called with, and, once it ran, what it returned.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

from ._steps import FunctionStep, StepDefinition

__all__ = ["UnknownActionType", "register_action", "registered_name"]

_T = TypeVar("_T")

#: name -> a class or a StepDefinition
_BY_NAME: dict[str, object] = {}
#: class or StepDefinition -> name
_NAMES: dict[object, str] = {}


class UnknownActionType(LookupError):
    """A journal names an action type that no :func:`register_action` registered here."""


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > 200:
        raise ValueError(
            f"an action type name is a non-empty string without surrounding spaces "
            f"(at most 200 characters), e.g. 'signup.create_user'; got {name!r}"
        )
    return name


def register_action(name: str) -> Callable[[_T], _T]:
    """Class (or ``@step``) decorator: register an action type for journaled queues.

    The name is what the journal stores, so keep it stable across releases
    (renaming the class is fine; renaming the registration strands old runs).

    The class must either define ``to_state(self) -> dict`` and a classmethod
    ``from_state(cls, state: dict)``, or be a :func:`dataclasses.dataclass`
    (its fields are the state; ``init=False`` fields are restored after
    construction). State values must be JSON: ``str``, ``int``, ``float``,
    ``bool``, ``None``, lists and dicts with string keys.

    A :func:`~actionqueues.step` definition can be registered too (put
    ``@register_action(...)`` above ``@step``); its arguments and its result
    must then be JSON.

    Example:
        >>> from dataclasses import dataclass
        >>> from actionqueues import Action, register_action
        >>> @register_action("docs.create_user")
        ... @dataclass
        ... class CreateUser(Action):
        ...     email: str
        ...     user_id: int | None = None

    Raises:
        ValueError: the name is empty or already registered for something else.
        TypeError: the decorated object is neither such a class nor a step definition.
    """
    _check_name(name)

    def decorate(target: _T) -> _T:
        if isinstance(target, StepDefinition):
            pass
        elif isinstance(target, type):
            if not (
                callable(getattr(target, "execute", None))
                and callable(getattr(target, "rollback", None))
            ):
                raise TypeError(
                    f"@register_action({name!r}) decorates an action class (with execute() "
                    f"and rollback()) or a @step function; {target.__qualname__} has no "
                    f"execute()/rollback()"
                )
            has_own = callable(getattr(target, "to_state", None)) and callable(
                getattr(target, "from_state", None)
            )
            if not has_own and not dataclasses.is_dataclass(target):
                raise TypeError(
                    f"@register_action({name!r}): {target.__qualname__} must be a dataclass "
                    f"(put @register_action above @dataclass) or define to_state() and a "
                    f"from_state() classmethod, so that its state can be saved as JSON"
                )
        else:
            raise TypeError(
                f"@register_action({name!r}) decorates an action class or a @step function, "
                f"got {target!r}"
            )
        existing = _BY_NAME.get(name)
        if (
            existing is not None
            and existing is not target
            and _identity(existing) != _identity(target)
        ):
            raise ValueError(
                f"the action type name {name!r} is already registered for "
                f"{_identity(existing)}; each type needs its own name"
            )
        old = _NAMES.get(target)
        if old is not None and old != name:
            raise ValueError(f"{_identity(target)} is already registered as {old!r}")
        if existing is not None:
            _NAMES.pop(existing, None)  # the module was reloaded: the new object wins
        _BY_NAME[name] = target
        _NAMES[target] = name
        return target

    return decorate


def _identity(target: object) -> str:
    fn = getattr(target, "fn", target)
    return f"{getattr(fn, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def registered_name(action: object) -> str | None:
    """The registered type name of a step, or None if its type is not registered."""
    if isinstance(action, FunctionStep):
        bound = action.bound
        return None if bound is None else _NAMES.get(bound[0])
    return _NAMES.get(type(action))


def require_name(action: object, index: int) -> str:
    """The registered type name of a step, or a clear TypeError for a journaled queue."""
    name = registered_name(action)
    if name is not None:
        return name
    if isinstance(action, FunctionStep):
        raise TypeError(
            f"step {index} ({action!r}) cannot be journaled: a journaled queue rebuilds its "
            f"steps in another process, so a function step must come from a @step function "
            f"registered with @register_action('some.name'), not a lambda or add(fn, undo=)"
        )
    raise TypeError(
        f"step {index} ({action!r}) cannot be journaled: its type "
        f"{type(action).__qualname__} is not registered; decorate the class with "
        f"@register_action('some.stable.name') (and make it a dataclass, or give it "
        f"to_state()/from_state())"
    )


def _default(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_encoder(*, ensure_ascii: bool, allow_nan: bool) -> Callable[[object], str]:
    """A compact JSON encoder (``json.dumps(value, separators=(",", ":"), ...)``).

    json's C encoder, called directly: ``json.dumps`` and ``JSONEncoder.encode``
    go through ``iterencode`` and a new ``JSONEncoder`` or closures on every
    call, and a journaled step's state is encoded three times. Each call
    gets its own circular-reference markers, so a value that contains
    itself is a ValueError, as with ``json.dumps``. Where there is no C
    encoder: ``JSONEncoder.encode``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - an interpreter without json's C encoder
        encoder = json.JSONEncoder(
            allow_nan=allow_nan, separators=(",", ":"), ensure_ascii=ensure_ascii
        )
        return encoder.encode
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )

    def encode(value: object) -> str:
        # (markers, default, strings, indent, separators, sort_keys, skipkeys, allow_nan)
        chunks = make({}, _default, strings, None, ":", ",", False, False, allow_nan)
        return "".join(chunks(value, 0))

    return encode


#: Step states: UTF-8 text, no NaN (not JSON).
_encode = json_encoder(ensure_ascii=False, allow_nan=False)
# class -> its dataclass field names (dump_state runs twice per journaled step)
_FIELDS: dict[type, tuple[str, ...]] = {}


def _json(value: object, action: object, index: int) -> str:
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:  # the step's repr only now: it is not free
        raise TypeError(
            f"the state of step {index} ({action!r}) is not JSON data ({exc}); journaled "
            f"state must be JSON"
        ) from exc


def dump_state(action: object, index: int) -> str:
    """The JSON state of a step (its type must be registered)."""
    if isinstance(action, FunctionStep):
        _, args, kwargs = action.bound  # type: ignore[misc]
        state: object = {
            "args": list(args),
            "kwargs": kwargs,
            "done": action.done,
            "result": action.result,
        }
    else:
        to_state = getattr(action, "to_state", None)
        if callable(to_state) and callable(getattr(type(action), "from_state", None)):
            state = to_state()
            if not isinstance(state, dict):
                raise TypeError(
                    f"{type(action).__qualname__}.to_state() must return a dict, got {state!r}"
                )
        else:
            cls = type(action)
            names = _FIELDS.get(cls)
            if names is None:
                names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(action))  # type: ignore[arg-type]
            state = {name: getattr(action, name) for name in names}
    return _json(state, action, index)


def load_step(type_name: str, state_json: str) -> Any:
    """Rebuild a step from its registered type name and JSON state.

    Raises:
        UnknownActionType: nothing is registered under ``type_name``.
        ValueError: the state is not valid JSON, or the type refused it.
    """
    target = _BY_NAME.get(type_name)
    if target is None:
        raise UnknownActionType(
            f"unknown action type {type_name!r}: import the module that registers it "
            f"(@register_action({type_name!r})) in the recovering process"
        )
    try:
        state = json.loads(state_json)
    except ValueError as exc:
        raise ValueError(f"the state of a {type_name!r} step is not valid JSON: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"the state of a {type_name!r} step is not a JSON object: {state!r}")
    try:
        if isinstance(target, StepDefinition):
            args, kwargs = state["args"], state["kwargs"]
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("args must be a list and kwargs an object")
            step = target(*args, **kwargs)
            step.done = bool(state["done"])
            step.result = state["result"]
            return step
        assert isinstance(target, type)
        from_state = getattr(target, "from_state", None)
        if callable(from_state) and callable(getattr(target, "to_state", None)):
            return from_state(state)
        fields = {f.name: f for f in dataclasses.fields(target)}
        unknown = set(state) - set(fields)
        if unknown:
            raise TypeError(f"unexpected fields {sorted(unknown)}")
        action = target(**{k: v for k, v in state.items() if fields[k].init})
        for key, value in state.items():
            if not fields[key].init:
                object.__setattr__(action, key, value)
        return action
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"the journaled state of a {type_name!r} step was refused: {exc!r} "
            f"(state: {_clip(state_json)})"
        ) from exc


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
