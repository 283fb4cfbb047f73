"""The quicker ``__init__`` of frozen slotted dataclasses builds the very same objects."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from overlaysim.core import events
from overlaysim.core.slotinit import slot_init


def _plain(cls: type) -> type:
    """The same class as the dataclass decorator alone would make it."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    ns = {"__post_init__": cls.__post_init__} if hasattr(cls, "__post_init__") else {}
    return dataclasses.make_dataclass(cls.__name__, fields, namespace=ns, frozen=True, slots=True)


@pytest.mark.parametrize("cls", [events.Send, events.MemberEvent, events.EntryEvent])
def test_hot_events_keep_the_dataclass_signature_and_stay_frozen(cls: type) -> None:
    plain = _plain(cls)
    assert inspect.signature(cls.__init__) == inspect.signature(plain.__init__)
    values = {
        "dst": "h2", "msg": None, "kind": events.EntryEventKind.CREATE, "node": "h1",
        "incarnation": 3, "network": "web", "table": "endpoints", "key": "c1",
        "owner": "h1", "value": {"ip": "10.0.0.2"},
    }  # fmt: skip
    args = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    got, want = cls(**args), plain(**args)
    assert dataclasses.astuple(got) == dataclasses.astuple(want)
    assert repr(got) == repr(want).replace(plain.__qualname__, cls.__qualname__)
    assert got == cls(**args)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(got, name, None)


def test_defaults_keywords_derived_fields_and_post_init() -> None:
    seen = []

    @slot_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Rec:
        a: int
        b: str = "x"
        derived: int = dataclasses.field(init=False, default=7)
        c: float = dataclasses.field(default=1.5, kw_only=True)

        def __post_init__(self) -> None:
            seen.append((self.a, self.b, self.derived, self.c))

    params = inspect.signature(Rec.__init__).parameters.values()
    assert [(p.name, p.default, p.kind.name) for p in params] == [
        ("self", inspect.Parameter.empty, "POSITIONAL_OR_KEYWORD"),
        ("a", inspect.Parameter.empty, "POSITIONAL_OR_KEYWORD"),
        ("b", "x", "POSITIONAL_OR_KEYWORD"),
        ("c", 1.5, "KEYWORD_ONLY"),
    ]
    Rec(1)
    Rec(2, "y", c=2.5)
    assert seen == [(1, "x", 7, 1.5), (2, "y", 7, 2.5)]
    with pytest.raises(TypeError):
        Rec()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Rec(1, "y", 2.5)  # type: ignore[misc]


def test_refuses_what_it_cannot_make_the_same() -> None:
    with pytest.raises(TypeError, match="frozen dataclasses with slots"):

        @slot_init
        @dataclasses.dataclass(slots=True)
        class Mutable:
            a: int

    with pytest.raises(TypeError, match="default_factory"):

        @slot_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Factory:
            a: list = dataclasses.field(default_factory=list)
