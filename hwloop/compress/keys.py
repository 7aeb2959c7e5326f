"""Typed decision keys: the names of the sizes a search decides and of rank groups.

A decision size is keyed ``ch:<group>`` (channels kept of a coupled group; a low-rank layer's rank is the
group ``rank:<layer>``, so its size is ``ch:rank:<layer>``) or ``bits:<layer>`` (weight bits of a layer).
:class:`SizeKey` builds and parses these keys with a checked ``kind`` and ``name``; it *is* the string
(a ``str`` subclass), so size tables, JSON files and Optuna parameter names keyed by today's strings read it
unchanged. :func:`rank_group` / :func:`rank_layer` name the channels between the two factors of a low-rank layer.

Example:
    >>> from hwloop.compress.keys import SizeKey, rank_group
    >>> k = SizeKey.channels(rank_group("features.3"))
    >>> k, k.kind, k.name, {"ch:rank:features.3": 7}[k]
    ('ch:rank:features.3', 'ch', 'rank:features.3', 7)
    >>> SizeKey.parse("bits:features.7") == SizeKey.bits("features.7")
    True
"""

from __future__ import annotations

from hwloop.errors import CompressionError

__all__ = ["SIZE_KINDS", "SizeKey", "is_rank_group", "rank_group", "rank_layer"]

#: ``ch``: channels kept of a coupled group; ``bits``: weight bits of a layer
SIZE_KINDS = ("ch", "bits")
_RANK = "rank:"


class SizeKey(str):
    """A decision-size key ``<kind>:<name>``; equal (and hashed) as the plain string it spells."""

    __slots__ = ()

    def __new__(cls, kind: str, name: str) -> SizeKey:  # noqa: PYI034
        if kind not in SIZE_KINDS:
            raise CompressionError(f"size key kind {kind!r} is unknown; allowed: {', '.join(SIZE_KINDS)}")
        if not isinstance(name, str) or not name:
            raise CompressionError(f"size key name {name!r} must be a non-empty string")
        return super().__new__(cls, f"{kind}:{name}")

    @classmethod
    def channels(cls, group: str) -> SizeKey:
        """``ch:<group>``: channels kept of a coupled group (``group`` may be a :func:`rank_group`)."""
        return cls("ch", group)

    @classmethod
    def bits(cls, layer: str) -> SizeKey:
        """``bits:<layer>``: a layer's weight bits."""
        return cls("bits", layer)

    @classmethod
    def parse(cls, text: str) -> SizeKey:
        """The key a string spells (``ch:...`` or ``bits:...``)."""
        kind, sep, name = str(text).partition(":")
        if not sep:
            raise CompressionError(f"size key {text!r} must be 'ch:<group>' or 'bits:<layer>'")
        return cls(kind, name)

    @property
    def kind(self) -> str:
        return self.partition(":")[0]

    @property
    def name(self) -> str:
        return self.partition(":")[2]

    def __repr__(self) -> str:
        return str.__repr__(str(self))

    def __reduce__(self) -> tuple[type[str], tuple[str]]:   # copies/deep-copies become the plain string
        return (str, (str(self),))


def rank_group(layer: str) -> str:
    """``rank:<layer>``: the group of channels between a low-rank (svd) layer's two factors."""
    return f"{_RANK}{layer}"


def is_rank_group(key: str) -> bool:
    """Whether a group key names low-rank channels (``rank:<layer>``, or a Tucker-2 ``rank:<layer>:in|out``)."""
    return key.startswith(_RANK)


def rank_layer(key: str) -> str:
    """The layer of a rank group key (``rank:<layer>`` or ``rank:<layer>:in|out`` → ``<layer>``)."""
    if not is_rank_group(key):
        raise CompressionError(f"group key {key!r} is not a rank group ('rank:<layer>')")
    return key[len(_RANK):].split(":", 1)[0]
