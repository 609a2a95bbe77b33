"""The one CBOR codec: serde_cbor's encoding (core §2), declared on dataclasses.

A struct is a frozen slots dataclass that subclasses ``Serde`` and is decorated with
``@serde`` (or ``@variant`` for a variant of an externally tagged enum). As with serde's
derive, its field order is the CBOR map's key order and each field's annotation says how
the value is written:

* ``Annotated[int, U32]`` / ``Annotated[int, U64]``: a shortest-form unsigned integer, range-checked;
* ``Annotated[bytes, ByteArray]`` / ``Annotated[bytes, ByteArray(32)]``: a byte field as an array of
  uints (core §2 rule 4; never a CBOR byte string), optionally of a fixed length;
* ``str``, ``bool``, ``T | None`` (absent is null), ``tuple[T, ...]`` (an array), another struct;
* ``Literal["Jwt"]``: a unit-only enum, written as the bare variant name;
* a union of ``@variant`` classes: an externally tagged enum. A variant without fields is a
  unit variant (its bare name), ``@variant(newtype=True)`` is ``{name: value}``, any other is
  ``{name: {fields…}}``; ``@variant(other=True)`` is serde's ``#[serde(other)]``: unknown unit
  variants decode to it.

Field markers: ``Default`` (``#[serde(default)]``: a missing field takes the type's default),
``Flatten`` (``#[serde(flatten)]``: the struct's fields inline; serde_cbor then writes an
indefinite-length map, the one such record of core §14.2) and ``Interned`` (decoded text is
``sys.intern``-ed: keys that repeat across a log share one string). Container options:
``@serde(deny_unknown_fields=True)`` (a map with exactly the fields, no packed forms) and
``@serde(lenient=True)`` (``decode`` accepts every form serde accepts instead of only the
canonical bytes).

At decoration time the codec generates Python source for each class and stores the compiled
functions on it (``cls.__serde__``, a ``TypeCodec``); nothing is registered globally:

* ``encode``: the canonical bytes, written directly (key literals merged, no intermediate objects);
* ``from_obj``: a decoded cbor2 object to the typed value, accepting what serde accepts (a map by
  field name with unknown keys ignored, a map by field index, an array of the values, legacy
  ``[name, body]`` enums); every type or range error names the field;
* ``parse``: the canonical parser. It reads only the canonical layout, straight from the bytes
  (fixed literals merged and compared in C, shortest heads, byte arrays checked as canonical
  items with ``uint8_items``, nested structs and enums inlined), and must consume the input
  exactly, so a value it returns re-encodes to exactly the input. Anything else gives None;
* ``decode``: strict decoding = ``parse``, else the general check "loads, ``from_obj``, re-encode,
  compare", whose error names the first differing byte and the field that holds it.

The helpers after the codec (``loads``, ``to_bytes``, ``struct_fields``, ``read_head``,
``uint8_items``, …) are its building blocks, also used directly by formats that are not structs
(the state snapshot).
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import sys
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    Self,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    overload,
)

import cbor2

from ecac import _native
from ecac.core.errors import DecodeError

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

dumps = cbor2.dumps

T = TypeVar("T")
R = TypeVar("R")
_C = TypeVar("_C", bound=type)


# --------------------------------------------------------------------------- field annotations


@dataclasses.dataclass(frozen=True, slots=True)
class UInt:
    """An unsigned integer field of at most ``max`` (``U32``, ``U64``); always written in shortest form."""

    max: int


U32 = UInt(U32_MAX)
U64 = UInt(U64_MAX)


class ByteArray:
    """A byte field as an array of uints: ``ByteArray`` (any length) or ``ByteArray(n)`` (exactly n)."""

    __slots__ = ("length",)

    def __init__(self, length: int | None = None) -> None:
        self.length = length

    def __repr__(self) -> str:
        return f"ByteArray({self.length})"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``#[serde(default)]``: a missing field decodes to the field's default (its type's, without one)
Default = _Marker("Default")
#: ``#[serde(flatten)]``: the struct's fields are written inline; the map becomes indefinite-length
Flatten = _Marker("Flatten")
#: decoded text is ``sys.intern``-ed (Data keys repeat across a log)
Interned = _Marker("Interned")

Bytes32 = Annotated[bytes, ByteArray(32)]
ByteVec = Annotated[bytes, ByteArray]
U32Int = Annotated[int, U32]
U64Int = Annotated[int, U64]


class NonCanonicalError(DecodeError):
    """Well-formed input whose bytes are not the canonical encoding of the value it decodes to."""

    def __init__(self, what: str, offset: int, field: str, got: int, canonical: int) -> None:
        self.offset, self.field = offset, field
        where = f"in `{field}`" if field else "in the top-level item"
        super().__init__(
            f"{what}: non-canonical encoding (not the canonical encoding of its fields; first difference "
            f"at byte {offset}, {where}; {got} bytes, the canonical form has {canonical})"
        )


# --------------------------------------------------------------------------- the Serde base


class Serde:
    """Base of every ``@serde`` struct: the methods delegate to the class's compiled ``TypeCodec``."""

    __slots__ = ()
    __serde__: ClassVar[TypeCodec[Any]]
    #: the field names in CBOR order (set by the decorator)
    FIELDS: ClassVar[tuple[str, ...]]

    def encode(self) -> bytes:
        """The canonical CBOR bytes."""
        return self.__serde__.encode(self)

    def to_obj(self) -> Any:
        """The cbor2-ready object (maps in field order, byte fields as int lists); also serde_json's shape."""
        return self.__serde__.to_obj(self)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Strict decode (the canonical bytes only), or the serde forms for ``@serde(lenient=True)``."""
        return cast(Self, cls.__serde__.decode(data))

    @classmethod
    def from_obj(cls, obj: Any, what: str | None = None) -> Self:
        """The value of a decoded cbor2 object, in any form serde accepts; DecodeError names the field."""
        return cast(Self, cls.__serde__.from_obj(obj, cls.__serde__.what if what is None else what))


@overload
def serde(cls: _C, /) -> _C: ...
@overload
def serde(*, lenient: bool = False, deny_unknown_fields: bool = False) -> Callable[[_C], _C]: ...
def serde(
    cls: _C | None = None, /, *, lenient: bool = False, deny_unknown_fields: bool = False
) -> _C | Callable[[_C], _C]:
    """Declare a dataclass a serde struct: compile its codec now and store it on the class."""

    def wrap(c: _C) -> _C:
        node = _StructNode(c, None, deny_unknown_fields)
        _attach(c, node, node, lenient)
        return c

    return wrap if cls is None else wrap(cls)


@overload
def variant(cls: _C, /) -> _C: ...
@overload
def variant(
    *, newtype: bool = False, other: bool = False, deny_unknown_fields: bool = False
) -> Callable[[_C], _C]: ...
def variant(
    cls: _C | None = None,
    /,
    *,
    newtype: bool = False,
    other: bool = False,
    deny_unknown_fields: bool = False,
) -> _C | Callable[[_C], _C]:
    """Declare a dataclass a variant (named by its ``NAME`` class variable) of an externally tagged enum.

    No fields: a unit variant; ``newtype``: ``{NAME: value}`` of its one field; otherwise
    ``{NAME: {fields…}}``. ``other``: unknown unit variants of an enum containing it decode to it.
    """

    def wrap(c: _C) -> _C:
        name = c.__dict__.get("NAME")
        if not isinstance(name, str):
            raise TypeError(f"@variant {c.__name__}: declare its variant name as NAME: ClassVar[str]")
        node = _StructNode(c, _VariantInfo(name, newtype, other), deny_unknown_fields)
        _attach(c, node, _EnumNode((node,)), False)
        return c

    return wrap if cls is None else wrap(cls)


def _attach(c: type, node: _StructNode, top: _Node, lenient: bool) -> None:
    if not issubclass(c, Serde) or not dataclasses.is_dataclass(c):
        raise TypeError(f"@serde {c.__name__}: must be a dataclass subclassing Serde")
    c.__serde__ = TypeCodec(top, c.__name__, lenient)
    c.FIELDS = tuple(f.name for f in node.own)


# --------------------------------------------------------------------------- the compiled codec of a type


class TypeCodec(Generic[T]):
    """The compiled encoder, lenient decoder and canonical parser of one type (a struct, an enum)."""

    __slots__ = ("encode", "from_obj", "lenient", "node", "parse", "what")

    def __init__(self, tp: Any, what: str | None = None, lenient: bool = False) -> None:
        node = tp if isinstance(tp, _Node) else _node_of(tp)
        self.node: _Node = node
        self.what: str = what or str(getattr(tp, "__name__", "value"))
        self.lenient = lenient
        #: the canonical bytes of a value
        self.encode: Callable[[T], bytes] = node.encoder()
        #: ``(obj, what)``: the value of a decoded cbor2 object, any serde form
        self.from_obj: Callable[[Any, str], T] = node.decoder()
        #: the value whose canonical encoding is exactly these bytes, else None
        self.parse: Callable[[bytes], T | None] = _compile_parser(node)

    def parser_into(self, build: Callable[..., R], inline: Sequence[str] = ()) -> Callable[[bytes], R | None]:
        """A canonical parser of this struct that returns ``build(*values, data)`` instead of the value.

        ``values`` are the field values in order, each field named in ``inline`` (a nested
        struct) replaced by its own fields' values: e.g. a flat class built straight from the
        bytes without the nested objects. None when ``data`` is not a canonical encoding.
        """
        return _compile_parser(self.node, build, inline)

    def prefix(self) -> bytes:
        """The bytes every canonical encoding of this type starts with (map head, first key, …)."""
        return self.node.lit()

    def to_obj(self, value: T) -> Any:
        """The cbor2-ready object of ``value`` (decoded from its canonical bytes)."""
        return cbor2.loads(self.encode(value))

    def decode(self, data: bytes) -> T:
        """Strict decode, or ``decode_lenient`` when the type was declared lenient."""
        return self.decode_lenient(data) if self.lenient else self.decode_strict(data)

    def decode_strict(self, data: bytes) -> T:
        """Only the canonical encoding: the canonical parser, else loads + from_obj + re-encode + compare."""
        raw = data if type(data) is bytes else bytes(data)
        got = self.parse(raw)
        if got is not None:
            return got
        value = self.from_obj(loads(raw, self.what, max_cost=naming_budget(len(raw))), self.what)
        self.require_canonical(value, raw)
        return value

    def require_canonical(self, value: T, data: bytes) -> None:
        """NonCanonicalError (the first differing byte and its field) unless ``data`` encodes ``value``."""
        canonical = self.encode(value)
        if canonical != data:
            at = next((i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b), None)
            if at is None:
                at = min(len(canonical), len(data))
            raise NonCanonicalError(self.what, at, self.node.locate(value, at), len(data), len(canonical))

    def decode_lenient(self, data: bytes) -> T:
        """One CBOR item in any form serde accepts (no canonical check)."""
        return self.from_obj(loads(data, self.what), self.what)


# --------------------------------------------------------------------------- schema nodes and code generation


class _Env:
    """A namespace for generated code: helpers plus the constants one compilation refers to."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = dict(_HELPERS)
        self._n = 0

    def const(self, value: Any, hint: str = "c") -> str:
        self._n += 1
        name = f"_{hint}{self._n}"
        self.ns[name] = value
        return name

    def fresh(self, hint: str = "v") -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def compile(self, src: str, name: str) -> Any:
        exec(compile(src, f"<serde {name}>", "exec"), self.ns)
        return self.ns[name]


class _Term:
    """What follows a value in the canonical layout, for finding where a byte array ends.

    ``find``: these bytes come next (a literal canonical uint items cannot contain: its first
    two bytes are >= 0x19 and it is not one repeated byte); ``end``: exactly ``suffix`` and then
    the end of the input; ``choice``: one or the other, by a runtime condition; None: unknown.
    """

    __slots__ = ("a", "b", "cond", "kind", "lit")

    def __init__(
        self, kind: str, lit: bytes = b"", cond: str = "", a: _Term | None = None, b: _Term | None = None
    ) -> None:
        self.kind, self.lit, self.cond, self.a, self.b = kind, lit, cond, a, b


def _findable(lit: bytes) -> bool:
    """Whether ``lit`` cannot occur inside (or run into) canonical uint items followed by it."""
    return len(lit) >= 2 and lit[0] >= 0x19 and lit[1] >= 0x19 and len(set(lit)) > 1


def _then(static: bytes, term: _Term | None) -> _Term | None:
    """The terminator of a value followed by exactly the literal ``static`` and then by what ``term`` says."""
    if not static:
        return term
    if term is not None and term.kind == "end":
        return _Term("end", static + term.lit)
    lit = static + term.lit if term is not None and term.kind == "find" else static
    return _Term("find", lit) if _findable(lit) else None


class _Parse:
    """Emits the straight-line canonical parser; literals are merged and checked as late as possible."""

    def __init__(self, env: _Env) -> None:
        self.env = env
        self.lines: list[str] = []
        self.depth = 2
        self.pending = b""  # bytes that must come next, not checked yet
        self.known = b""  # bytes known to be at p (a ``find`` just found them)

    def line(self, s: str) -> None:
        self.lines.append("    " * self.depth + s)

    def push(self, lit: bytes) -> None:
        self.pending += lit

    def flush(self) -> None:
        lit, known = self.pending, self.known
        self.pending = self.known = b""
        if known:
            if lit.startswith(known):
                self.line(f"p += {len(known)}")
                lit = lit[len(known) :]
            else:  # the found literal runs past what is pending: all of it is there
                assert known.startswith(lit), (known, lit)
                self.line(f"p += {len(lit)}")
                lit = b""
        if len(lit) == 1:
            self.line(f"if data[p] != {lit[0]}: return None")
            self.line("p += 1")
        elif lit:
            self.line(f"if not data.startswith({lit!r}, p): return None")
            self.line(f"p += {len(lit)}")

    def head(self, major: int, out: str) -> None:
        """``out`` = the argument of a shortest-form head of ``major`` at p."""
        self.flush()
        base = major << 5
        self.line(f"{out} = data[p] - {base}")
        self.line(f"if 0 <= {out} < 24: p += 1")
        self.line(f"elif {out} == 24:")
        self.line(f"    {out} = data[p + 1]")
        self.line(f"    if {out} < 24: return None")
        self.line("    p += 2")
        self.line("else:")
        self.line(f"    r = _read_head(data, p, {major})")
        self.line("    if r is None: return None")
        self.line(f"    {out}, p = r")


class _Node(ABC):
    """One schema node: emits the code of the encoder, the lenient decoder and the canonical parser.

    Each concrete node kind implements all three emitters (abstract here).
    """

    def lit(self) -> bytes:
        """A literal every canonical encoding of this node starts with."""
        return b""

    @abstractmethod
    def enc(self, env: _Env, x: str) -> str:
        """An expression: the canonical bytes of the value of expression ``x``."""

    @abstractmethod
    def dec(self, env: _Env, x: str, w: str) -> str:
        """An expression: the typed value of decoded CBOR ``x``; ``w`` is the expression naming it."""

    @abstractmethod
    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        """Statements: parse this node's canonical encoding at p into ``out``, advancing p."""

    def default(self) -> Any:
        raise TypeError(f"{self!r} has no default value")

    def locate(self, value: Any, at: int) -> str:
        """The path (``a.b[2]``) of the field holding byte ``at`` of this value's canonical encoding."""
        return ""

    def encoder(self) -> Callable[[Any], bytes]:
        env = _Env()
        return cast(
            Callable[[Any], bytes], env.compile(f"def enc(x):\n    return {self.enc(env, 'x')}\n", "enc")
        )

    def decoder(self) -> Callable[[Any, str], Any]:
        env = _Env()
        return cast(
            Callable[[Any, str], Any],
            env.compile(f"def dec(x, w):\n    return {self.dec(env, 'x', 'w')}\n", "dec"),
        )


class _UIntNode(_Node):
    def __init__(self, max_value: int) -> None:
        self.max = max_value

    def enc(self, env: _Env, x: str) -> str:
        return f"_enc_uint({x})"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"_to_u({x}, {w}, {self.max})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        g.flush()
        g.line(f"{out} = data[p]")
        g.line(f"if {out} < 24: p += 1")
        g.line(f"elif {out} == 24:")
        g.line(f"    {out} = data[p + 1]")
        g.line(f"    if {out} < 24: return None")
        g.line("    p += 2")
        g.line(f"elif {out} == 25:")
        g.line(f"    {out} = data[p + 1] << 8 | data[p + 2]")
        g.line(f"    if {out} < 256: return None")
        g.line("    p += 3")
        g.line("else:")
        g.line(f"    r = _uint_at(data, p, {self.max})")
        g.line("    if r is None: return None")
        g.line(f"    {out}, p = r")

    def default(self) -> Any:
        return 0


class _BoolNode(_Node):
    def enc(self, env: _Env, x: str) -> str:
        return f"(b'\\xf5' if {x} else b'\\xf4')"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"_to_bool({x}, {w})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        g.flush()
        g.line(f"{out} = data[p]")
        g.line(f"if {out} == 0xF5: {out} = True")
        g.line(f"elif {out} == 0xF4: {out} = False")
        g.line("else: return None")
        g.line("p += 1")

    def default(self) -> Any:
        return False


class _TextNode(_Node):
    def __init__(self, interned: bool) -> None:
        self.interned = interned

    def enc(self, env: _Env, x: str) -> str:
        return f"_enc_text({x})"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"_intern(_to_text({x}, {w}))" if self.interned else f"_to_text({x}, {w})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        n, e = g.env.fresh("n"), g.env.fresh("e")
        g.head(3, n)
        g.line(f"{e} = p + {n}")
        g.line(f"if {e} > n_data: return None")
        value = f"data[p:{e}].decode()"
        g.line(f"{out} = {'_intern(' + value + ')' if self.interned else value}")
        g.line(f"p = {e}")

    def default(self) -> Any:
        return ""


class _BytesNode(_Node):
    def __init__(self, length: int | None) -> None:
        self.length = length

    def lit(self) -> bytes:
        return b"" if self.length is None else encode_head(4, self.length)

    def enc(self, env: _Env, x: str) -> str:
        return f"_enc_bytes({x})"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"_to_bytes({x}, {w}, {self.length})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        if self.length is None:
            n = g.env.fresh("n")
            g.head(4, n)
        else:
            n = str(self.length)
            g.push(self.lit())
        g.flush()
        e = g.env.fresh("e")
        if term is not None and term.kind == "find":
            g.line(f"{e} = data.find({term.lit!r}, p)")
            g.line(f"if {e} < 0: return None")
        else:
            self._end(g, e, n, term)
        # uint8_items, with its common case (no byte 24) inline
        g.line(f"{out} = data[p:{e}]")
        g.line(f"if b'\\0' + {out}.translate(_PREFIX_AT) == {out}.translate(_NEEDS_PREFIX_AT) + b'\\0':")
        g.line(f"    {out} = {out}.translate(None, b'\\x18')")
        g.line("else:")
        g.line(f"    {out} = _items({out})")
        g.line(f"if {out} is None or len({out}) != {n}: return None")
        g.line(f"p = {e}")
        if term is not None and term.kind == "find":
            g.known = term.lit

    def _end(self, g: _Parse, e: str, n: str, term: _Term | None) -> None:
        if term is None:
            g.line(f"{e} = _items_end(data, p, {n})")
            g.line(f"if {e} < 0: return None")
        elif term.kind == "find":
            g.line(f"{e} = data.find({term.lit!r}, p)")
            g.line(f"if {e} < 0: return None")
        elif term.kind == "end":
            g.line(f"{e} = n_data - {len(term.lit)}")
            g.line(f"if {e} < p: return None")
        else:
            g.line(f"if {term.cond}:")
            g.depth += 1
            self._end(g, e, n, term.a)
            g.depth -= 1
            g.line("else:")
            g.depth += 1
            self._end(g, e, n, term.b)
            g.depth -= 1

    def default(self) -> Any:
        return b"" if not self.length else bytes(self.length)


class _OptionNode(_Node):
    def __init__(self, inner: _Node) -> None:
        self.inner = inner

    def enc(self, env: _Env, x: str) -> str:
        return f"(b'\\xf6' if {x} is None else {self.inner.enc(env, x)})"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"(None if {x} is None else {self.inner.dec(env, x, w)})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        g.flush()
        g.line("if data[p] == 0xF6:")
        g.line(f"    {out} = None")
        g.line("    p += 1")
        g.line("else:")
        g.depth += 1
        self.inner.parse(g, out, term)
        g.flush()
        g.depth -= 1

    def default(self) -> Any:
        return None

    def locate(self, value: Any, at: int) -> str:
        return "" if value is None else self.inner.locate(value, at)


class _SeqNode(_Node):
    def __init__(self, elem: _Node) -> None:
        self.elem = elem
        self.elem_enc = elem.encoder()

    def enc(self, env: _Env, x: str) -> str:
        e = env.fresh("e")
        return f"(_enc_head4(len({x})) + b''.join([{self.elem.enc(env, e)} for {e} in {x}]))"

    def dec(self, env: _Env, x: str, w: str) -> str:
        fn = env.const(self.elem.decoder(), "elem")
        return f"_to_seq({x}, {w}, {fn})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        n, k, acc, v = g.env.fresh("n"), g.env.fresh("k"), g.env.fresh("acc"), g.env.fresh("v")
        g.head(4, n)
        lit = self.elem.lit()
        elem_term = _Term(
            "choice", cond=f"{k} + 1 < {n}", a=_Term("find", lit) if _findable(lit) else None, b=term
        )
        g.line(f"{acc} = []")
        g.line(f"for {k} in range({n}):")
        g.depth += 1
        self.elem.parse(g, v, elem_term)
        g.flush()
        g.line(f"{acc}.append({v})")
        g.depth -= 1
        g.line(f"{out} = tuple({acc})")

    def default(self) -> Any:
        return ()

    def locate(self, value: Any, at: int) -> str:
        pos = len(encode_head(4, len(value)))
        for i, e in enumerate(value):
            end = pos + len(self.elem_enc(e))
            if at < end:
                inner = self.elem.locate(e, at - pos)
                return f"[{i}]" + ("." + inner if inner and not inner.startswith("[") else inner)
            pos = end
        return ""


class _LiteralNode(_Node):
    """A unit-only enum (``Literal["Jwt"]``): the bare variant name; ``{name: null}`` also read."""

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values

    def lit(self) -> bytes:
        return encode_text(self.values[0]) if len(self.values) == 1 else b""

    def enc(self, env: _Env, x: str) -> str:
        return f"_enc_text({x})"

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"_to_literal({x}, {w}, {self.values!r})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        if len(self.values) == 1:
            g.push(self.lit())
            g.line(f"{out} = {self.values[0]!r}")
            return
        g.flush()
        for i, value in enumerate(self.values):
            lit = encode_text(value)
            g.line(f"{'if' if i == 0 else 'elif'} data.startswith({lit!r}, p):")
            g.line(f"    {out} = {value!r}")
            g.line(f"    p += {len(lit)}")
        g.line("else: return None")


class _Field:
    __slots__ = ("default", "has_default", "name", "node")

    def __init__(self, name: str, node: _Node, default: Any = None, has_default: bool = False) -> None:
        self.name, self.node, self.default, self.has_default = name, node, default, has_default


@dataclasses.dataclass(frozen=True, slots=True)
class _VariantInfo:
    name: str
    newtype: bool
    other: bool


class _StructNode(_Node):
    """A dataclass: a map of its fields in declaration order (flattened fields inline)."""

    def __init__(self, cls: type, info: _VariantInfo | None, deny_unknown: bool) -> None:
        self.cls = cls
        self.info = info
        self.deny_unknown = deny_unknown
        hints = get_type_hints(cls, include_extras=True)
        self.own: list[_Field] = []
        #: (field, flattened struct or None) in map order
        self.flat: list[tuple[str, _Field | _StructNode]] = []
        for f in dataclasses.fields(cls):
            node, markers = _node_and_markers(hints[f.name], cls)
            if Flatten in markers:
                if not isinstance(node, _StructNode) or node.info is not None:
                    raise TypeError(f"{cls.__name__}.{f.name}: only a plain struct can be flattened")
                self.flat.append((f.name, node))
            has_default = Default in markers or isinstance(node, _OptionNode)
            default: Any = None
            if Default in markers:
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                else:
                    default = node.default()
            fld = _Field(f.name, node, default, has_default)
            self.own.append(fld)
            if Flatten not in markers:
                self.flat.append((f.name, fld))
        if info is not None and info.newtype and len(self.own) != 1:
            raise TypeError(f"{cls.__name__}: a newtype variant has exactly one field")
        if info is not None and info.other and self.own:
            raise TypeError(f"{cls.__name__}: only a unit variant can be `other`")
        self.unit = info is not None and not self.own
        self.indefinite = any(isinstance(x, _StructNode) for _, x in self.flat)
        self.checked = hasattr(cls, "__post_init__")  # invariants: build through __init__
        self.body = self._compile_body()
        self.build = self._compile_build()
        self.dec_body = self._compile_dec()

    def __repr__(self) -> str:
        return self.cls.__name__

    # --- shapes

    def leaves(self) -> Iterator[tuple[str, _Field]]:
        """``(attribute path, field)`` of every field written, in map order."""
        for name, x in self.flat:
            if isinstance(x, _StructNode):
                for path, f in x.leaves():
                    yield f"{name}.{path}", f
            else:
                yield name, x

    def head(self) -> bytes:
        return b"\xbf" if self.indefinite else encode_head(5, sum(1 for _ in self.leaves()))

    def closing(self) -> bytes:
        return b"\xff" if self.indefinite else b""

    def lit(self) -> bytes:
        leaves = list(self.leaves())
        if not leaves:
            return self.head()
        return self.head() + encode_text(leaves[0][1].name) + leaves[0][1].node.lit()

    def default(self) -> Any:
        return self.cls()

    # --- encoding

    def _compile_body(self) -> Callable[[Any], bytes]:
        env = _Env()
        parts: list[str] = []
        static = self.head()
        for path, f in self.leaves():
            static += encode_text(f.name)
            parts.append(repr(static))
            static = b""
            parts.append(f.node.enc(env, f"v.{path}"))
        static += self.closing()
        if static:
            parts.append(repr(static))
        src = f"def body(v):\n    return b''.join(({', '.join(parts)},))\n"
        return cast(Callable[[Any], bytes], env.compile(src, "body"))

    def enc(self, env: _Env, x: str) -> str:
        return f"{env.const(self.body, 'body')}({x})"

    # --- building values

    def _compile_build(self) -> Callable[..., Any]:
        env = _Env()
        names = [f.name for f in self.own]
        src = f"def build({', '.join(names)}):\n    return {self.build_expr(env, names)}\n"
        return cast(Callable[..., Any], env.compile(src, "build"))

    def build_expr(self, env: _Env, values: list[str]) -> str:
        cls = env.const(self.cls, "cls")
        if self.checked or not values:
            return f"{cls}({', '.join(values)})"
        setters = [
            f"{env.const(self.cls.__dict__[f.name].__set__, 'set')}(o, {v})"
            for f, v in zip(self.own, values, strict=True)
        ]
        return f"_built(o := _new({cls}), {', '.join(setters)})"

    def emit_build(self, g: _Parse, out: str, values: list[str]) -> None:
        cls = g.env.const(self.cls, "cls")
        if self.checked or not values:
            g.line(f"{out} = {cls}({', '.join(values)})")
            return
        g.line(f"{out} = _new({cls})")
        for f, v in zip(self.own, values, strict=True):
            g.line(f"{g.env.const(self.cls.__dict__[f.name].__set__, 'set')}({out}, {v})")

    # --- lenient decoding (what serde accepts)

    def _compile_dec(self) -> Callable[[Any, str], Any]:
        env = _Env()
        lines = ["def dec(obj, w):"]
        own_vars = self._dec_lines(env, lines, "    ")
        lines.append(f"    return {self._build_call(env, own_vars)}")
        return cast(Callable[[Any, str], Any], env.compile("\n".join(lines) + "\n", "dec"))

    def _build_call(self, env: _Env, values: list[str]) -> str:
        call = f"{env.const(self.build, 'build')}({', '.join(values)})"
        return f"_checked({env.const(self.build, 'build')}, w, {', '.join(values)})" if self.checked else call

    def _dec_lines(self, env: _Env, lines: list[str], ind: str) -> list[str]:
        """Lines reading ``obj`` (at ``w``) into one variable per own field; returns those variables."""
        names = [f.name for _, f in self.leaves()]
        by_map_only = self.deny_unknown or self.indefinite
        lines.append(f"{ind}if isinstance(obj, dict):")
        raw = self._lookup_lines(env, lines, ind + "    ", by_map_only)
        if not raw:
            lines.append(f"{ind}    pass")
        if self.deny_unknown:
            known = env.const(frozenset(names), "names")
            lines.append(f"{ind}    for key in obj:")
            lines.append(f"{ind}        if key not in {known}:")
            lines.append(f"{ind}            raise DecodeError(f'{{w}}: unknown field {{key!r}}')")
        if not by_map_only:
            lines.append(f"{ind}elif isinstance(obj, (list, tuple)):")
            lines.append(f"{ind}    if len(obj) != {len(names)}:")
            lines.append(
                f"{ind}        raise DecodeError(f'{{w}}: expected {len(names)} fields, got {{len(obj)}}')"
            )
            if raw:
                lines.append(f"{ind}    {', '.join(raw)}{',' if len(raw) == 1 else ''} = obj")
        lines.append(f"{ind}else:")
        lines.append(f"{ind}    raise DecodeError(f'{{w}}: expected a map, got {{type(obj).__name__}}')")
        return self._convert_lines(env, lines, ind, iter(raw))

    def _lookup_lines(self, env: _Env, lines: list[str], ind: str, by_name_only: bool) -> list[str]:
        raw: list[str] = []
        for i, (_, f) in enumerate(self.leaves()):
            x = env.fresh("x")
            raw.append(x)
            lines.append(f"{ind}{x} = obj.get({f.name!r}, _MISSING)")
            lines.append(f"{ind}if {x} is _MISSING:")
            inner = ind + "    "
            if not by_name_only:
                lines.append(f"{inner}{x} = obj.get({i}, _MISSING)")
                lines.append(f"{inner}if {x} is _MISSING:")
                inner += "    "
            if not f.has_default:
                lines.append(f"{inner}raise DecodeError(f'{{w}}: missing field `{f.name}`')")
            else:
                lines.append(f"{inner}pass")
        return raw

    def _convert_lines(self, env: _Env, lines: list[str], ind: str, raw: Iterator[str]) -> list[str]:
        out: list[str] = []
        for name, x in self.flat:
            v = env.fresh("v")
            if isinstance(x, _StructNode):
                sub = x._convert_lines(env, lines, ind, raw)
                lines.append(f"{ind}{v} = {x._build_call(env, sub)}")
            else:
                r = next(raw)
                conv = x.node.dec(env, r, f"w + {'.' + name!r}")
                if x.has_default:
                    conv = f"({env.const(x.default, 'dflt')} if {r} is _MISSING else {conv})"
                lines.append(f"{ind}{v} = {conv}")
            out.append(v)
        return out

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"{env.const(self.dec_body, 'dec')}({x}, {w})"

    # --- canonical parsing

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        self._emit_builds(g, out, "", self.parse_fields(g, term))

    def parse_fields(self, g: _Parse, term: _Term | None, inline: Sequence[str] = ()) -> dict[str, str]:
        """Parse the fields without building the value: ``{attribute path: variable}``.

        The fields named in ``inline`` (nested structs) are not built either; their own fields
        come back as ``name.field``.
        """
        leaves = list(self.leaves())
        vals: dict[str, str] = {}
        g.push(self.head())
        for i, (path, f) in enumerate(leaves):
            g.push(encode_text(f.name))
            if i + 1 < len(leaves):  # the next key (and its value's fixed start) follows, then more values
                nxt = encode_text(leaves[i + 1][1].name) + leaves[i + 1][1].node.lit()
                after = _Term("find", nxt) if _findable(nxt) else None
            else:
                after = _then(self.closing(), term)
            if path in inline:
                if not isinstance(f.node, _StructNode):
                    raise TypeError(f"{self.cls.__name__}.{path} is not a struct: it cannot be inlined")
                vals.update({f"{path}.{k}": v for k, v in f.node.parse_fields(g, after).items()})
                continue
            v = g.env.fresh("v")
            f.node.parse(g, v, after)
            vals[path] = v
        g.push(self.closing())
        return vals

    def _emit_builds(self, g: _Parse, out: str, prefix: str, vals: dict[str, str]) -> None:
        values: list[str] = []
        for name, x in self.flat:
            if isinstance(x, _StructNode):
                v = g.env.fresh("s")
                x._emit_builds(g, v, f"{prefix}{name}.", vals)
                values.append(v)
            else:
                values.append(vals[prefix + name])
        self.emit_build(g, out, values)

    def locate(self, value: Any, at: int) -> str:
        pos = len(self.head())
        for path, f in self.leaves():
            pos += len(encode_text(f.name))
            v = value
            for part in path.split("."):
                v = getattr(v, part)
            end = pos + len(f.node.encoder()(v))
            if at < end:
                inner = f.node.locate(v, at - pos) if at >= pos else ""
                return path + ("." + inner if inner and not inner.startswith("[") else inner)
            pos = end
        return ""


class _EnumNode(_Node):
    """An externally tagged enum of ``@variant`` structs (core §2 rule 8)."""

    def __init__(self, variants: tuple[_StructNode, ...]) -> None:
        self.variants = variants
        self.by_name = {v.info.name: v for v in variants if v.info is not None}
        other = [v for v in variants if v.info is not None and v.info.other]
        self.other = other[0].cls() if other else None
        self.units = {n: v.cls() for n, v in self.by_name.items() if v.unit}
        self.encode_fn = self._compile_enc()
        self.dec_fn = self._compile_dec()

    def __repr__(self) -> str:
        return " | ".join(repr(v) for v in self.variants)

    @staticmethod
    def tag(v: _StructNode) -> bytes:
        assert v.info is not None
        return encode_text(v.info.name) if v.unit else b"\xa1" + encode_text(v.info.name)

    def lit(self) -> bytes:
        if len(self.variants) != 1:
            return b""
        v = self.variants[0]
        return self.tag(v) + (
            v.own[0].node.lit() if v.info is not None and v.info.newtype else v.lit() if not v.unit else b""
        )

    def _variant_enc(self, env: _Env, v: _StructNode, x: str) -> str:
        tag = repr(self.tag(v))
        if v.unit:
            return tag
        if v.info is not None and v.info.newtype:
            return f"{tag} + {v.own[0].node.enc(env, f'{x}.{v.own[0].name}')}"
        return f"{tag} + {v.enc(env, x)}"

    def _compile_enc(self) -> Callable[[Any], bytes]:
        env = _Env()
        lines = ["def enc(x):", "    t = type(x)"]
        for i, v in enumerate(self.variants):
            lines.append(f"    {'if' if i == 0 else 'elif'} t is {env.const(v.cls, 'cls')}:")
            lines.append(f"        return {self._variant_enc(env, v, 'x')}")
        names = ", ".join(v.cls.__name__ for v in self.variants)
        lines.append(f"    raise TypeError(f'cannot encode {{t.__name__}} as one of {names}')")
        return cast(Callable[[Any], bytes], env.compile("\n".join(lines) + "\n", "enc"))

    def enc(self, env: _Env, x: str) -> str:
        return f"{env.const(self.encode_fn, 'enc')}({x})"

    def _compile_dec(self) -> Callable[[Any, str], Any]:
        env = _Env()
        ns = env.ns
        ns.update(_BY_NAME=self.by_name, _UNITS=self.units, _OTHER=self.other)
        expected = ", ".join(self.by_name)
        lines = [
            "def dec(x, w):",
            "    if isinstance(x, str):",
            "        name, body = x, _MISSING",
            "    elif isinstance(x, dict):",
            "        if len(x) != 1:",
            "            raise DecodeError(f'{w}: expected a 1-entry map, got {len(x)} entries')",
            "        ((name, body),) = x.items()",
            "        if not isinstance(name, str):",
            "            raise DecodeError(f'{w}: variant name is {type(name).__name__}, not text')",
            "    elif isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str):",
            "        name, body = x  # serde_cbor's legacy array form",
            "    else:",
            "        raise DecodeError(f'{w}: expected a map with one variant name, got {type(x).__name__}')",
            "    unit = _UNITS.get(name)",
            "    if unit is not None:",
            "        if body is not _MISSING and body is not None:",
            "            raise DecodeError(f'{w}: unit variant {name} takes no value')",
            "        return unit",
            "    v = _BY_NAME.get(name)",
            "    if v is None:",
            "        if _OTHER is not None and (body is _MISSING or body is None):",
            "            return _OTHER",
            f"        raise DecodeError(f'{{w}}: unknown variant {{name!r}}; expected one of {expected}')",
            "    if body is _MISSING:",
            "        raise DecodeError(f'{w}: variant {name} needs fields')",
        ]
        first = True
        for v in self.variants:
            if v.unit or v.info is None:
                continue
            lines.append(f"    {'if' if first else 'elif'} v is {env.const(v, 'var')}:")
            first = False
            if v.info.newtype:
                inner = v.own[0].node.dec(env, "body", "w + '.' + name")
                conv = f"{v._build_call(env, [inner])}"
                lines.append(f"        return {conv}")
            else:
                conv = v.dec(env, "body", "w + '.' + name")
                lines.append(f"        return {conv}")
        lines.append("    raise AssertionError(name)")
        return cast(Callable[[Any, str], Any], env.compile("\n".join(lines) + "\n", "dec"))

    def dec(self, env: _Env, x: str, w: str) -> str:
        return f"{env.const(self.dec_fn, 'dec')}({x}, {w})"

    def parse(self, g: _Parse, out: str, term: _Term | None) -> None:
        g.flush()
        for i, v in enumerate(self.variants):
            tag = self.tag(v)
            g.line(f"{'if' if i == 0 else 'elif'} data.startswith({tag!r}, p):")
            g.depth += 1
            g.line(f"p += {len(tag)}")
            if v.unit:
                g.line(f"{out} = {g.env.const(v.cls(), 'unit')}")
            elif v.info is not None and v.info.newtype:
                inner = g.env.fresh("v")
                v.own[0].node.parse(g, inner, term)
                g.flush()
                v.emit_build(g, out, [inner])
            else:
                v.parse(g, out, term)
                g.flush()
            g.depth -= 1
        g.line("else: return None")

    def locate(self, value: Any, at: int) -> str:
        for v in self.variants:
            if type(value) is v.cls and not v.unit:
                pos = len(self.tag(v))
                if v.info is not None and v.info.newtype:
                    inner = v.own[0].node.locate(getattr(value, v.own[0].name), at - pos)
                    return v.own[0].name + ("." + inner if inner and not inner.startswith("[") else inner)
                return v.locate(value, at - pos) if at >= pos else ""
        return ""


def _node_and_markers(tp: Any, owner: type) -> tuple[_Node, tuple[Any, ...]]:
    """The node of a field's annotation and the markers (``Default``, ``Flatten``, …) on it."""
    meta: tuple[Any, ...] = ()
    while get_origin(tp) is Annotated:
        base, *rest = get_args(tp)
        tp, meta = base, meta + tuple(rest)
    return _node_of(tp, meta, owner), meta


def _node_of(tp: Any, meta: tuple[Any, ...] = (), owner: type | None = None) -> _Node:
    """The schema node of a resolved annotation ``tp`` carrying the ``Annotated`` metadata ``meta``."""
    while get_origin(tp) is Annotated:
        base, *rest = get_args(tp)
        tp, meta = base, meta + tuple(rest)
    where = f"{owner.__name__}: " if owner is not None else ""
    if tp is bool:
        return _BoolNode()
    if tp is int:
        widths = [m for m in meta if isinstance(m, UInt)]
        if len(widths) != 1:
            raise TypeError(f"{where}annotate int fields with their width: Annotated[int, U32] or U64")
        return _UIntNode(widths[0].max)
    if tp is bytes:
        arrays = [m for m in meta if m is ByteArray or isinstance(m, ByteArray)]
        if len(arrays) != 1:
            raise TypeError(f"{where}annotate bytes fields: Annotated[bytes, ByteArray] or ByteArray(n)")
        a = arrays[0]
        return _BytesNode(a.length if isinstance(a, ByteArray) else None)
    if tp is str:
        return _TextNode(Interned in meta)
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}only tuple[T, ...] sequences are supported, not {tp}")
        return _SeqNode(_node_of(args[0], (), owner))
    if origin is Literal:
        values = get_args(tp)
        if not values or not all(isinstance(v, str) for v in values):
            raise TypeError(f"{where}Literal enums take text variant names")
        return _LiteralNode(tuple(values))
    if origin is Union or origin is types.UnionType:
        members = [m for m in get_args(tp) if m is not type(None)]
        if len(members) < len(get_args(tp)):
            inner = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
            return _OptionNode(_node_of(inner, meta, owner))
        return _EnumNode(tuple(_variant_node(m, where) for m in members))
    if isinstance(tp, type) and issubclass(tp, Serde) and "__serde__" in tp.__dict__:
        node = tp.__serde__.node
        return node
    raise TypeError(f"{where}no CBOR form for {tp!r} (decorate the class with @serde or @variant)")


def _variant_node(tp: Any, where: str) -> _StructNode:
    if not (isinstance(tp, type) and issubclass(tp, Serde) and "__serde__" in tp.__dict__):
        raise TypeError(f"{where}{tp!r} in an enum is not a @variant class")
    node = tp.__serde__.node
    if not isinstance(node, _EnumNode) or len(node.variants) != 1:
        raise TypeError(f"{where}{tp.__name__} in an enum is not a @variant class")
    return node.variants[0]


def _compile_parser(
    node: _Node, into: Callable[..., Any] | None = None, inline: Sequence[str] = ()
) -> Callable[[bytes], Any]:
    """The canonical parser of ``node`` over a whole input (see the module docstring).

    With ``into`` (a struct only), the value is not built: ``into(*field values, data)`` is
    returned instead, the fields named in ``inline`` spliced in as their own fields' values.
    """
    env = _Env()
    g = _Parse(env)
    if into is None:
        node.parse(g, "out", _Term("end"))
    else:
        if not isinstance(node, _StructNode) or node.indefinite:
            raise TypeError("parsing into a constructor needs a plain struct")
        vals = node.parse_fields(g, _Term("end"), inline)
        args = [vals[path] for path in _inlined_paths(node, inline)]
        g.flush()
        g.line(f"out = {env.const(into, 'into')}({', '.join([*args, 'data'])})")
    g.flush()
    src = "\n".join(
        [
            "def parse(data):",
            "    n_data = len(data)",
            "    p = 0",
            "    try:",
            *g.lines,
            "    except (IndexError, ValueError):  # read past the end, bad UTF-8, a refused value",
            "        return None",
            "    if p != n_data: return None",
            "    return out",
        ]
    )
    return cast(Callable[[bytes], Any], env.compile(src + "\n", "parse"))


def _inlined_paths(node: _StructNode, inline: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name, f in node.flat:
        assert isinstance(f, _Field)
        if name in inline:
            assert isinstance(f.node, _StructNode)
            out += [f"{name}.{sub}" for sub, _ in f.node.flat]
        else:
            out.append(name)
    return out


# --------------------------------------------------------------------------- helpers of the generated code

_MISSING = object()


def _built(o: Any, *_: Any) -> Any:
    return o


def _checked(build: Callable[..., Any], what: str, *values: Any) -> Any:
    """A value whose class checks invariants in ``__post_init__``: a ValueError is a DecodeError."""
    try:
        return build(*values)
    except ValueError as e:
        raise DecodeError(f"{what}: {e}") from None


def _to_bool(obj: Any, what: str) -> bool:
    if type(obj) is not bool:
        raise DecodeError(f"{what}: expected a boolean, got {type(obj).__name__}")
    return obj


def _to_seq(obj: Any, what: str, elem: Callable[[Any, str], Any]) -> tuple[Any, ...]:
    if not isinstance(obj, list | tuple):
        raise DecodeError(f"{what}: expected an array, got {type(obj).__name__}")
    return tuple([elem(x, f"{what}[{i}]") for i, x in enumerate(obj)])


def _to_literal(obj: Any, what: str, values: tuple[str, ...]) -> str:
    if isinstance(obj, dict) and len(obj) == 1:
        ((name, body),) = obj.items()
        if body is None:
            obj = name
    if type(obj) is str and obj in values:
        return obj
    raise DecodeError(f"{what}: unknown variant {obj!r}; expected one of {', '.join(values)}")


def _uint_at(data: bytes, pos: int, max_value: int) -> tuple[int, int] | None:
    got = read_head(data, pos, 0)
    if got is None or got[0] > max_value:
        return None
    return got


def _items_end(data: bytes, pos: int, n: int) -> int:
    """The position after ``n`` canonical uint8 items at ``pos``, or -1."""
    end = len(data)
    for _ in range(n):
        if pos >= end:
            return -1
        b = data[pos]
        if b < 24:
            pos += 1
        elif b == 24 and pos + 1 < end and data[pos + 1] >= 24:
            pos += 2
        else:
            return -1
    return pos


# --------------------------------------------------------------------------- decoder bounds

#: deepest nesting of arrays and maps accepted from untrusted bytes (ecac formats use at most ~10)
MAX_DEPTH = 64
#: ``loads`` refuses an input whose decoded objects would take more than this many bytes per input
#: byte (plus ``COST_FLOOR``): ecac's formats take 8 to 10 (byte fields are arrays of small ints:
#: an 8-byte slot per 1 or 2 input bytes; short key strings), while a run of empty maps takes 72
COST_FACTOR = 16
COST_FLOOR = 64 * 1024
#: the Python objects ``cbor2`` builds, in bytes (64-bit CPython; measured with tracemalloc): every
#: item takes an 8-byte slot in its container; an int outside the small-int cache, a float, a simple
#: value; bytes, ASCII text, other text (at most 4 bytes per character) plus their length; a list
#: (and its over-allocation once non-empty); a dict (and its keys table once non-empty, and per entry)
COST_SLOT, COST_INT, COST_FLOAT, COST_SIMPLE = 8, 32, 24, 48
COST_BYTES, COST_ASCII, COST_TEXT = 33, 49, 80
COST_LIST, COST_LIST_SLACK, COST_DICT, COST_DICT_KEYS, COST_ENTRY = 56, 32, 64, 160, 48


class CborBoundsError(ValueError):
    """Raised by ``cbor_extent``: malformed, too deep, or over the decoded-size budget (says where)."""


def _cbor_extent_py(data: bytes, pos: int, max_depth: int, max_cost: int) -> tuple[int, int, int]:
    """The pure-Python ``cbor_extent`` (the C one in ``ecac._native`` is tested against it)."""
    end = len(data)
    items = cost = 0
    stack: list[int] = []  # the enclosing containers' remaining counts
    # items still to read at this level; -1: an indefinite array, -2 / -3: an indefinite map
    # before a key / before a value
    remaining = 1
    p = pos
    while True:
        while remaining == 0:
            if not stack:
                return p, items, cost
            remaining = stack.pop()
        if p >= end:
            raise CborBoundsError(f"truncated: the input ends at byte {p} inside an item")
        ib = data[p]
        if ib == 0xFF and remaining < 0:
            if remaining == -3:
                raise CborBoundsError(f"break at byte {p} after a map key without its value")
            p += 1
            remaining = stack.pop()
            continue
        at = p
        major, info = ib >> 5, ib & 0x1F
        p += 1
        arg = 0
        indefinite = False
        if info < 24:
            arg = info
        elif info < 28:
            w = 1 << (info - 24)
            if p + w > end:
                raise CborBoundsError(f"truncated: the head at byte {at} needs {w} more bytes")
            arg = int.from_bytes(data[p : p + w], "big")
            p += w
        elif info == 31 and major in (2, 3, 4, 5):
            indefinite = True
        elif info == 31 and major == 7:
            raise CborBoundsError(f"unexpected break at byte {at}")
        else:
            raise CborBoundsError(f"reserved head 0x{ib:02x} at byte {at}")
        items += 1
        cost += COST_SLOT
        if remaining > 0:
            remaining -= 1
        elif remaining == -2:
            remaining = -3
            cost += COST_ENTRY
        elif remaining == -3:
            remaining = -2
        if major <= 1:
            if arg > (256 if major == 0 else 4):
                cost += COST_INT
        elif major <= 3:
            if indefinite:
                n, ascii_ = 0, True
                while True:
                    if p >= end:
                        raise CborBoundsError(f"truncated: the indefinite string at byte {at} has no break")
                    c = data[p]
                    if c == 0xFF:
                        p += 1
                        break
                    if c >> 5 != major or c & 0x1F > 27:
                        raise CborBoundsError(f"bad chunk 0x{c:02x} at byte {p} of the string at byte {at}")
                    q = p + 1
                    k = c & 0x1F
                    if k >= 24:
                        w = 1 << (k - 24)
                        if q + w > end:
                            raise CborBoundsError(f"truncated: the head at byte {p} needs {w} more bytes")
                        k = int.from_bytes(data[q : q + w], "big")
                        q += w
                    if k > end - q:
                        raise CborBoundsError(f"declared length {k} at byte {p} exceeds the input")
                    ascii_ = ascii_ and data[q : q + k].isascii()
                    n += k
                    p = q + k
            else:
                if arg > end - p:
                    raise CborBoundsError(f"declared length {arg} at byte {at} exceeds the input")
                n = arg
                ascii_ = major == 2 or data[p : p + n].isascii()
                p += n
            cost += (COST_BYTES + n) if major == 2 else (COST_ASCII + n) if ascii_ else (COST_TEXT + 4 * n)
        elif major <= 5:
            if len(stack) >= max_depth:
                raise CborBoundsError(f"nesting deeper than {max_depth} at byte {at}")
            if indefinite:  # charged as if non-empty
                stack.append(remaining)
                remaining = -1 if major == 4 else -2
                cost += COST_LIST_SLACK if major == 4 else COST_DICT_KEYS
            else:
                width = 1 if major == 4 else 2
                if arg > (end - p) // width:
                    raise CborBoundsError(f"declared length {arg} at byte {at} exceeds the input")
                stack.append(remaining)
                remaining = arg * width
                if arg and major == 4:
                    cost += COST_LIST_SLACK
                elif arg:
                    cost += COST_DICT_KEYS + COST_ENTRY * arg
            cost += COST_LIST if major == 4 else COST_DICT
        elif major == 6:
            raise CborBoundsError(f"CBOR tag at byte {at}: no ecac format uses tags")
        else:
            cost += 0 if 20 <= info <= 23 else COST_FLOAT if info >= 25 else COST_SIMPLE
        if cost > max_cost:
            raise CborBoundsError(
                f"decoding would take more than {max_cost} bytes of memory (at byte {at}, {items} items)"
            )


_cbor_extent_c = getattr(_native, "cbor_extent", None)


def cbor_extent(
    data: bytes, pos: int = 0, max_depth: int = MAX_DEPTH, max_cost: int = U64_MAX
) -> tuple[int, int, int]:
    """``(end, items, cost)`` of the one well-formed CBOR item at ``pos``, without decoding it.

    ``cost`` estimates the bytes of the objects ``cbor2`` would build for it (``COST_*``).
    Raises ``CborBoundsError`` (a ``ValueError`` naming the byte) for malformed or truncated
    input, a declared length longer than what is left (nothing is allocated for it), nesting
    deeper than ``max_depth``, a tag, or as soon as ``cost`` exceeds ``max_cost``. Linear time,
    constant memory beyond the ``max_depth`` stack; the C version (``ecac._native``) when built.
    """
    if _cbor_extent_c is not None:
        try:
            return _cbor_extent_c(data, pos, max_depth, max_cost)  # type: ignore[no-any-return]
        except ValueError as e:
            raise CborBoundsError(str(e)) from None
    return _cbor_extent_py(data, pos, max_depth, max_cost)


#: how ``cbor_extent`` messages start when a limit (not malformed input) refused the bytes
_LIMIT_MESSAGES = ("nesting deeper", "decoding would take", "CBOR tag")


def decode_budget(n: int) -> int:
    """The most memory ``loads`` lets the decoded value of ``n`` input bytes take."""
    return COST_FACTOR * n + COST_FLOOR


#: strict decoders fall back to cbor2 only to name what is wrong with a non-canonical input (which is
#: refused anyway): at most this much memory for it, so a hostile 8 MiB frame costs no more
NAMING_COST = 32 * 1024 * 1024


def naming_budget(n: int) -> int:
    """The ``max_cost`` of a strict decoder's cbor2 fallback for ``n`` input bytes."""
    return min(decode_budget(n), NAMING_COST)


def loads(data: bytes, what: str = "CBOR", *, max_depth: int = MAX_DEPTH, max_cost: int | None = None) -> Any:
    """Decode exactly one CBOR item; trailing bytes and malformed input raise DecodeError.

    Bounded for untrusted input: the structure is checked first by ``cbor_extent`` (nesting at
    most ``max_depth``, declared lengths within the input, no tags, decoded size at most
    ``max_cost``, by default ``decode_budget(len(data))``), so a hostile input is refused before
    anything is allocated for it.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    budget = decode_budget(len(data)) if max_cost is None else max_cost
    try:
        end, _, _ = cbor_extent(data, 0, max_depth, budget)
    except CborBoundsError as e:
        msg = str(e)
        if msg.startswith("truncated"):
            raise DecodeError(f"{what}: truncated CBOR ({msg})") from None
        if msg.startswith(_LIMIT_MESSAGES):
            raise DecodeError(f"{what}: refused CBOR ({msg})") from None
        raise DecodeError(f"{what}: malformed CBOR ({msg})") from None
    if end != len(data):
        raise DecodeError(f"{what}: {len(data) - end} trailing bytes after the CBOR item")
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise DecodeError(f"{what}: malformed CBOR ({e})") from None
    except EOFError:
        raise DecodeError(f"{what}: truncated CBOR") from None
    if fp.tell() != len(data):
        raise DecodeError(f"{what}: {len(data) - fp.tell()} trailing bytes after the CBOR item")
    return obj


# --------------------------------------------------------------------------- building blocks


def b2l(data: bytes) -> list[int]:
    """Bytes as the array-of-ints CBOR form used for every byte field."""
    return list(data)


_INT_ONLY = frozenset({int})


def to_bytes(obj: Any, what: str, length: int | None = None) -> bytes:
    """A CBOR array of ints 0..255 (optionally of exact length) as bytes; byte strings are rejected."""
    if not isinstance(obj, list | tuple):
        raise DecodeError(f"{what}: expected an array of ints, got {type(obj).__name__}")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(obj)}")
    # set(map(type, …)) runs in C: this check is on the hot path of every lenient decode
    if obj and set(map(type, obj)) != _INT_ONLY:
        bad = next(x for x in obj if type(x) is not int)
        raise DecodeError(f"{what}: array element is {type(bad).__name__}, not an integer")
    try:
        return bytes(obj)
    except ValueError:
        raise DecodeError(f"{what}: array element out of byte range") from None


def to_u(obj: Any, what: str, max_value: int) -> int:
    """An unsigned integer within ``max_value``; bools, floats and negatives are rejected."""
    if type(obj) is not int:
        raise DecodeError(f"{what}: expected an unsigned integer, got {type(obj).__name__}")
    if obj < 0 or obj > max_value:
        raise DecodeError(f"{what}: integer {obj} out of range")
    return obj


def to_u32(obj: Any, what: str) -> int:
    return to_u(obj, what, U32_MAX)


def to_u64(obj: Any, what: str) -> int:
    return to_u(obj, what, U64_MAX)


def to_text(obj: Any, what: str) -> str:
    if type(obj) is not str:
        raise DecodeError(f"{what}: expected a text string, got {type(obj).__name__}")
    return obj


def struct_fields(obj: Any, fields: Sequence[str], what: str, optional: Sequence[str] = ()) -> list[Any]:
    """The field values of a decoded struct, in declaration order (for formats that are not ``@serde``).

    Accepts the forms serde accepts on input: a map keyed by field name (unknown keys
    ignored), a map keyed by field index, or an array of the values in order. A missing
    field listed in ``optional`` comes back as ``None``; any other missing field fails.
    """
    if isinstance(obj, dict):
        out: list[Any] = []
        for i, name in enumerate(fields):
            if name in obj:
                out.append(obj[name])
            elif i in obj:
                out.append(obj[i])
            elif name in optional:
                out.append(None)
            else:
                raise DecodeError(f"{what}: missing field `{name}`")
        return out
    if isinstance(obj, list | tuple):
        if len(obj) != len(fields):
            raise DecodeError(f"{what}: expected {len(fields)} fields, got {len(obj)}")
        return list(obj)
    raise DecodeError(f"{what}: expected a map, got {type(obj).__name__}")


# --------------------------------------------------------------------------- canonical form, directly


def encode_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of ``major`` type (0 uint, 3 text, 4 array, 5 map) with argument ``n``."""
    base = major << 5
    if n < 24:
        return bytes([base | n])
    if n < 0x100:
        return bytes([base | 24, n])
    if n < 0x10000:
        return bytes([base | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([base | 26]) + n.to_bytes(4, "big")
    return bytes([base | 27]) + n.to_bytes(8, "big")


_UINT_SMALL = tuple(encode_head(0, n) for n in range(256))
_ARRAY_SMALL = tuple(encode_head(4, n) for n in range(256))
_TEXT_SMALL = tuple(encode_head(3, n) for n in range(256))


def encode_uint(n: int) -> bytes:
    """``dumps(n)`` for an unsigned integer below 2**64."""
    if 0 <= n < 256:
        return _UINT_SMALL[n]
    if not 0 <= n <= U64_MAX:
        raise ValueError(f"{n} is not an unsigned 64-bit integer")
    return encode_head(0, n)


def encode_text(s: str) -> bytes:
    """``dumps(s)`` for a text string."""
    b = s.encode()
    n = len(b)
    return (_TEXT_SMALL[n] if n < 256 else encode_head(3, n)) + b


def _encode_array_head(n: int) -> bytes:
    return _ARRAY_SMALL[n] if n < 256 else encode_head(4, n)


#: the canonical CBOR item of each byte value as an unsigned integer (a charmap: mapped in C)
_UINT8_ITEM = types.MappingProxyType({b: bytes([b]) if b < 24 else bytes([0x18, b]) for b in range(256)})
_charmap_encode = codecs.charmap_encode


def encode_byte_array(data: bytes) -> bytes:
    """``dumps(b2l(data))``: a byte string as the array of uints used for every byte field."""
    items = _charmap_encode(bytes(data).decode("latin-1"), "strict", _UINT8_ITEM)[0]
    n = len(data)
    return (_ARRAY_SMALL[n] if n < 256 else encode_head(4, n)) + items


def read_head(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """``(argument, next position)`` of a shortest-form head of ``major`` type at ``pos``, else None."""
    if pos >= len(data):
        return None
    info = data[pos] - (major << 5)
    if 0 <= info < 24:
        return info, pos + 1
    if info == 24:
        if pos + 1 < len(data) and data[pos + 1] >= 24:
            return data[pos + 1], pos + 2
        return None
    width = {25: 2, 26: 4, 27: 8}.get(info)
    if width is None:
        return None
    end = pos + 1 + width
    raw = data[pos + 1 : end]
    if len(raw) != width:
        return None
    n = int.from_bytes(raw, "big")
    if n < 1 << (4 * width):  # would fit the next smaller width: not the shortest form
        return None
    return n, end


#: for ``uint8_items``: 1 where a byte is the 0x18 prefix / a byte >= 25 (which needs that prefix)
_PREFIX_AT = bytes.maketrans(bytes(range(256)), b"\0" * 24 + b"\1" + b"\0" * 231)
_NEEDS_PREFIX_AT = bytes.maketrans(bytes(range(256)), b"\0" * 25 + b"\1" * 231)
#: item classes: a = 00..17, m = 18 (the prefix, or the value 24 after one), b = 19..ff
_ITEM_CLASS = bytes(0x61 if v < 0x18 else 0x6D if v == 0x18 else 0x62 for v in range(256))


def uint8_items(body: bytes) -> bytes | None:
    """The bytes ``b`` such that ``body`` is exactly the items of ``encode_byte_array(b)``, else None.

    Canonical items are a byte below 24 by itself or 0x18 followed by the byte (>= 24).
    Without the byte 24 (0x18 0x18), ``body`` is canonical iff a byte is >= 25 exactly
    where the byte before it is 0x18 and the last byte is not 0x18: two translations
    compared shifted by one, all in C. With it (always, for op bytes inside an ``OpBytes``
    frame), the items are checked on their class string (``a`` < 0x18, ``m`` = 0x18, ``b`` >
    0x18): runs of ``m`` start at item boundaries, so pairs ``mm`` (the value 24) are
    removed left to right and what is left must be ``a`` and ``mb`` only, which three
    counts establish; decoding maps the same pairs to 0x18 and drops the other markers.
    """
    if b"\0" + body.translate(_PREFIX_AT) == body.translate(_NEEDS_PREFIX_AT) + b"\0":
        return body.translate(None, b"\x18")
    if b"\x18\x18" not in body:
        return None
    cls = body.translate(_ITEM_CLASS).replace(b"mm", b"")
    markers = cls.count(b"m")
    if markers != cls.count(b"b") or markers != cls.count(b"mb"):
        return None
    text = body.decode("latin-1").replace("\x18\x18", "\u0100").replace("\x18", "")
    return text.replace("\u0100", "\x18").encode("latin-1")


#: what generated code refers to by name (functions and constants: nothing here changes)
_HELPERS: Mapping[str, Any] = types.MappingProxyType(
    {
        "DecodeError": DecodeError,
        "_MISSING": _MISSING,
        "_built": _built,
        "_checked": _checked,
        "_enc_bytes": encode_byte_array,
        "_enc_head4": _encode_array_head,
        "_enc_text": encode_text,
        "_enc_uint": encode_uint,
        "_intern": sys.intern,
        "_items": uint8_items,
        "_items_end": _items_end,
        "_new": object.__new__,
        "_PREFIX_AT": _PREFIX_AT,
        "_NEEDS_PREFIX_AT": _NEEDS_PREFIX_AT,
        "_read_head": read_head,
        "_to_bool": _to_bool,
        "_to_bytes": to_bytes,
        "_to_literal": _to_literal,
        "_to_seq": _to_seq,
        "_to_text": to_text,
        "_to_u": to_u,
        "_uint_at": _uint_at,
    }
)
