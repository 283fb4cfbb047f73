"""A quicker ``__init__`` for the frozen, slotted dataclasses made on the hot path.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__(self, name, value)``, a generic call that looks the slot up by
name every time: about a microsecond for six fields, and the simulator makes one event
per (entry, node) pair (hundreds of millions at 10,000 nodes). :func:`slot_init` gives
the class an ``__init__`` that stores each field straight into its slot (the slot's
own setter, bound once), with the same parameters, defaults and ``__post_init__`` call.
Nothing else changes: assigning an attribute afterwards still raises
``FrozenInstanceError``, and equality, hashing and ``repr`` are the dataclass's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["slot_init"]

T = TypeVar("T")


def slot_init(cls: type[T]) -> type[T]:
    """Class decorator (outermost, above ``@dataclass(frozen=True, slots=True)``)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: slot_init is for frozen dataclasses with slots")
    env: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: default_factory is not supported")
        env[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if not f.init:
            if f.default is not dataclasses.MISSING:
                env[f"_default_{f.name}"] = f.default
                body.append(f"    _set_{f.name}(self, _default_{f.name})")
            continue
        param = f.name
        if f.default is not dataclasses.MISSING:
            env[f"_default_{f.name}"] = f.default
            param += f"=_default_{f.name}"
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _set_{f.name}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    args = ["self", *positional]
    if keyword:
        args += ["*", *keyword]
    src = f"def __init__({', '.join(args)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(src, env)  # noqa: S102 - generated from the class's own field names
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[misc]
    return cls
