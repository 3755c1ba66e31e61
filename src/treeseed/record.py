"""Field-wise ``repr`` and ``==`` for the plain classes on a fetch's way.

What ``@dataclass`` would add, without importing :mod:`dataclasses`: it imports :mod:`inspect`
(and with it ``ast``, ``dis``, ``tokenize``), and generates each class's methods with ``exec``.
Measured on a small fetch, that was 6-9 ms of the cache process's start-up, on the path every
``treeseed fetch`` waits for (docs/architecture.md, Speed). The classes that sit on that path
(the fetch result, the delivery, the fetcher run, the index row) write their ``__init__`` and
name their fields in ``__slots__``; everything else keeps ``@dataclass``.
"""

from __future__ import annotations


class Record:
    """Base of a class whose ``__slots__`` are its fields, in order."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  (mutable, as a dataclass without frozen=True)

    def as_dict(self) -> dict[str, object]:
        """The fields by name, in order (what ``dataclasses.asdict`` gives, one level deep)."""
        return {name: getattr(self, name) for name in self.__slots__}


class FrozenRecord(Record):
    """A :class:`Record` whose fields are set once, in ``__init__`` (by ``object.__setattr__``,
    as a frozen dataclass does), and which hashes by value."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))
