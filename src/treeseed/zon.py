"""ZON, the Zig Object Notation of ``build.zig.zon``, read in pure Python.

A Zig package's manifest decides what its hash covers (``.paths``), what the hash string starts
with (``.name``, ``.version``, ``.fingerprint``) and what it depends on, so treeseed has to read
it exactly as ``zig fetch`` 0.15 does. The value grammar:

==========================  ============================================================
``.{ .a = 1, .b = 2 }``     :class:`ZonStruct` (a ``dict`` with ``str`` keys, in order)
``.{ "a", "b" }``           :class:`ZonTuple` (a ``list``)
``.{}``                     :class:`EmptyInit`, an empty :class:`ZonStruct` (see below)
``"text"``, ``\\\\lines``   ``str`` (multi-line strings are :class:`MultilineString`)
``.foo``, ``.@"a b"``       :class:`EnumLiteral`, a ``str`` subclass
``42``, ``-0x2a``, ``'a'``  ``int`` (a character literal is a :class:`CharLiteral`)
``1.5``, ``inf``, ``nan``   ``float``
``true``, ``false``         ``bool``; ``null`` is ``None``
==========================  ============================================================

``.{}`` is both the empty struct and the empty tuple; Zig decides from the destination type.
Python has no destination type, so it comes back as an :class:`EmptyInit`: a ``dict`` (so
``.get``, ``.items`` and ``in`` work) that iterates, measures and tests false like an empty
list. Code that needs a list writes ``list(value)``. (Zig itself reads ``.paths = .{}`` as a
struct and refuses it; :func:`manifest_info` does the same.)

Strings are Zig byte strings: ``\\xNN`` escapes can form bytes that are not UTF-8. Those come
back as surrogate escapes (``value.encode("utf-8", "surrogateescape")`` gives the exact
bytes), the same convention :mod:`os` uses for file names.

The rules are those of ``zig fetch``, which reads a manifest's syntax tree only, not the
stricter semantic pass of ``zig ast-check``: duplicate field names are accepted and the last
one wins, and ``-0``, ``-nan`` and ``@""`` pass. The lexical rules (no tab in a string or
comment, no doc comments, Zig's number and escape rules) are Zig's tokenizer's
(tests/test_zig.py checks literals against ``zig ast-check``). Zig expressions beyond literals
(``1 + 2``) are rejected, even in fields zig would ignore.

>>> loads('.{ .name = .demo, .paths = .{ "src", "build.zig" } }')
{'name': EnumLiteral('demo'), 'paths': ['src', 'build.zig']}
"""

from __future__ import annotations

import bisect
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError

MANIFEST_NAME = "build.zig.zon"
#: ``zig fetch`` refuses manifests larger than this.
MAX_MANIFEST_BYTES = 10 * 1024 * 1024
#: Limits on ``.name`` and ``.version`` (Zig embeds both in the package hash string).
MAX_NAME_LEN = 32
MAX_VERSION_LEN = 32
#: The longest ``.hash`` a dependency may declare (name and version at their limits, the
#: separators and 44 characters of base64).
MAX_HASH_LEN = MAX_NAME_LEN + 1 + MAX_VERSION_LEN + 1 + 44

KEYWORDS = frozenset(
    "addrspace align allowzero and anyframe anytype asm break callconv catch comptime const "
    "continue defer else enum errdefer error export extern fn for if inline noalias noinline "
    "nosuspend opaque or orelse packed pub resume return linksection struct suspend switch test "
    "threadlocal try union unreachable var volatile while".split()
)


class EnumLiteral(str):
    """``.foo``: compares, hashes and formats like the string ``"foo"``.

    Zig 0.14 moved ``.name`` from a string to an enum literal; being a ``str`` lets callers
    treat both spellings alike, while ``isinstance(v, EnumLiteral)`` still tells them apart.
    ``quoted`` is true for the ``.@"..."`` spelling, which a package name may not use.
    """

    quoted: bool

    def __new__(cls, value: str, quoted: bool = False) -> EnumLiteral:
        self = super().__new__(cls, value)
        self.quoted = quoted
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (EnumLiteral, (str(self), self.quoted))

    def __repr__(self) -> str:
        return f"EnumLiteral({str.__repr__(self)})"


class MultilineString(str):
    """A ``\\\\`` string: Zig's manifest fields want a ``"..."`` literal and reject these."""

    __slots__ = ()


class CharLiteral(int):
    """``'a'``: a code point, which ZON treats as an integer (but not as an integer literal)."""

    __slots__ = ()


class ZonStruct(dict):
    """``.{ .key = value, ... }``; ``line`` is where it opens, ``key_lines`` where each key is.

    For editing a file in place (``treeseed zig add``), offsets into the parsed text:
    ``span`` runs from the ``.`` of ``.{`` to just after ``}``, ``field_spans[key]`` from the
    ``.`` of ``.key`` to just after its value, ``value_spans[key]`` over the value alone.
    """

    line: int = 0
    key_lines: dict[str, int]
    span: tuple[int, int] = (0, 0)
    field_spans: dict[str, tuple[int, int]]
    value_spans: dict[str, tuple[int, int]]

    def __init__(self, *args: Any, line: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = line
        self.key_lines = {}
        self.field_spans = {}
        self.value_spans = {}


class ZonTuple(list):
    """``.{ a, b, ... }``; ``line`` is where it opens, ``item_lines[i]`` where item ``i`` is."""

    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any, line: int = 0) -> None:
        super().__init__(*args)
        self.line = line
        self.item_lines = []


class EmptyInit(ZonStruct):
    """``.{}``: the empty struct and the empty tuple at once (see the module docstring)."""

    def __repr__(self) -> str:
        return "EmptyInit()"


def load(path: Path, display: str | None = None) -> dict:
    """Parse the ZON file at ``path``, whose top level must be a struct (as a manifest's is).

    ``display`` names the file in errors when ``path`` is a temporary copy (an unpacked archive).
    """
    name = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ManifestError(name, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(name, f"larger than {MAX_MANIFEST_BYTES} bytes")
    value = loads(raw.decode("utf-8", "surrogateescape"), name)
    if not isinstance(value, dict):
        raise ManifestError(name, "expected top level expression to be a struct", line=1)
    return value


def loads(text: str, path: str = MANIFEST_NAME) -> Any:
    """Parse ZON ``text``; ``path`` names the file in error messages."""
    if text.startswith("\ufeff"):  # zig skips a UTF-8 byte order mark
        text = text[1:]
    return _Parser(text, path).parse_document()


# --- tokens -----------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The extent of one number token, as Zig's tokenizer cuts it: digits, letters and '_', a sign
# only right after an exponent letter, a '.' only when a digit or letter follows it (so ``1..2``
# is not a number). Whether the token is a *valid* number is decided afterwards.
_NUMBER = re.compile(r"[0-9](?:[eEpP][+-]|[0-9A-Za-z_]|\.(?=[0-9A-Za-z_]))*")
_PUNCT = {".": "'.'", "{": "'{'", "}": "'}'", ",": "','", "=": "'='", "-": "'-'"}
# Bytes no Zig token may contain (tab included: Zig rejects it in strings and comments too).
_BAD_IN_TEXT = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_SIMPLE_ESCAPES = {"n": 10, "r": 13, "t": 9, "\\": 92, "'": 39, '"': 34}
_HEX = frozenset("0123456789abcdefABCDEF")
_WORDS = {"true": True, "false": False, "null": None, "inf": math.inf, "nan": math.nan}
_BAD_CODEPOINT = "unicode escape does not correspond to a valid unicode scalar value"


@dataclass(slots=True)
class _Token:
    kind: str  # punctuation itself, or ident / qident / string / mlstring / char / number / eof
    text: str
    pos: int
    value: Any = None


class _LexError(Exception):
    def __init__(self, pos: int, problem: str) -> None:
        self.pos = pos
        self.problem = problem


class _Lexer:
    """Turns ZON text into tokens; comments and whitespace vanish here.

    A lexical error becomes an ``error`` token (returned from then on), and the parser raises
    it only when it reaches that token: the parser reads a token ahead, and the error must
    name the field it is in, not the field before it.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.error: _Token | None = None

    @staticmethod
    def fail(pos: int, problem: str) -> _LexError:
        return _LexError(pos, problem)

    def next(self) -> _Token:
        if self.error is None:
            try:
                return self._next()
            except _LexError as e:
                self.error = _Token("error", "", e.pos, e.problem)
        return self.error

    def _next(self) -> _Token:
        self._skip_space()
        text, pos = self.text, self.pos
        if pos >= len(text):
            return _Token("eof", "end of file", pos)
        c = text[pos]
        if c in _PUNCT:
            self.pos += 1
            return _Token(c, c, pos)
        if c == '"':
            value = self._quoted("string literal")
            return _Token("string", text[pos : self.pos], pos, value)
        if c == "'":
            return self._char()
        if c == "\\" and text.startswith("\\\\", pos):
            return self._multiline()
        if c == "@" and text.startswith('@"', pos):
            self.pos += 1
            value = self._quoted("identifier")
            return _Token("qident", text[pos : self.pos], pos, value)
        if m := _IDENT.match(text, pos):
            self.pos = m.end()
            return _Token("ident", m.group(), pos, m.group())
        if m := _NUMBER.match(text, pos):
            self.pos = m.end()
            value = _number(m.group(), lambda off, msg: self.fail(pos + off, msg))
            return _Token("number", m.group(), pos, value)
        raise self.fail(pos, f"unexpected character {_show(c)}")

    def _skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\n\r":
                self.pos += 1
            elif text.startswith("//", self.pos):
                self._comment()
            else:
                return

    def _comment(self) -> None:
        start = self.pos
        end = self.text.find("\n", start)
        end = len(self.text) if end < 0 else end
        body = self.text[start:end].removesuffix("\r")
        if body.startswith("//!") or (body.startswith("///") and not body.startswith("////")):
            raise self.fail(start, "documentation comments are not allowed in ZON")
        if bad := _BAD_IN_TEXT.search(body):  # a CR is fine only right before the newline
            raise self.fail(start + bad.start(), f"comment contains invalid byte: {_show(bad[0])}")
        self.pos = end

    def _quoted(self, what: str) -> str:
        """Read a ``"..."`` body starting at the opening quote; return it with escapes applied."""
        text = self.text
        out = bytearray()
        i = self.pos + 1
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.fail(self.pos, f"unterminated {what}")
            c = text[i]
            if c == '"':
                break
            if c == "\\":
                i, code, is_byte = self._escape(i)
                if is_byte:
                    out.append(code)  # \xNN is a raw byte, not a code point
                elif 0xD800 <= code <= 0xDFFF:
                    raise self.fail(i - 1, _BAD_CODEPOINT)
                else:
                    out += chr(code).encode("utf-8")
                continue
            if _BAD_IN_TEXT.match(c):
                raise self.fail(i, f"{what} contains invalid byte: {_show(c)}")
            out += c.encode("utf-8", "surrogateescape")
            i += 1
        self.pos = i + 1
        return out.decode("utf-8", "surrogateescape")

    def _escape(self, i: int) -> tuple[int, int, bool]:
        """Decode the escape at ``text[i] == '\\'``: (index after it, value, whether a raw byte)."""
        text = self.text
        c = text[i + 1] if i + 1 < len(text) else ""
        if c in _SIMPLE_ESCAPES:
            return i + 2, _SIMPLE_ESCAPES[c], False
        if c == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) < 2 or not _HEX.issuperset(digits):
                raise self.fail(i, "expected two hex digits after '\\x'")
            return i + 4, int(digits, 16), True
        if c == "u":
            if not text.startswith("{", i + 2):
                raise self.fail(i + 2, "expected '{' after '\\u'")
            end = text.find("}", i + 3)
            digits = text[i + 3 : end] if end >= 0 else ""
            if end < 0 or "\n" in digits or '"' in digits:
                raise self.fail(i, "expected '}' to close '\\u{'")
            if not digits:
                raise self.fail(i, "empty unicode escape sequence")
            if not _HEX.issuperset(digits):
                raise self.fail(i, f"expected hex digit or '}}' in '\\u{{{digits}}}'")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.fail(i, _BAD_CODEPOINT)
            return end + 1, code, False
        raise self.fail(i, f"invalid escape character: {_show(c) if c else 'end of file'}")

    def _char(self) -> _Token:
        text, start = self.text, self.pos
        i = start + 1
        if i < len(text) and text[i] == "\\":
            i, code, _ = self._escape(i)
        elif i < len(text) and text[i] not in "'\n" and not _BAD_IN_TEXT.match(text[i]):
            if 0xDC80 <= ord(text[i]) <= 0xDCFF:
                raise self.fail(i, "character literal is not valid UTF-8")
            code = ord(text[i])
            i += 1
        else:
            raise self.fail(start, "empty or invalid character literal")
        if not text.startswith("'", i):
            raise self.fail(start, "expected a single character between single quotes")
        self.pos = i + 1
        return _Token("char", text[start : self.pos], start, CharLiteral(code))

    def _multiline(self) -> _Token:
        """One or more consecutive ``\\\\`` lines; comments between them are skipped, as in Zig."""
        start = self.pos
        lines: list[str] = []
        while self.text.startswith("\\\\", self.pos):
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            line = self.text[self.pos + 2 : end].removesuffix("\r")
            if bad := _BAD_IN_TEXT.search(line):
                problem = f"string literal contains invalid byte: {_show(bad[0])}"
                raise self.fail(self.pos + 2 + bad.start(), problem)
            lines.append(line)
            self.pos = end
            self._skip_space()
        value = MultilineString("\n".join(lines))
        return _Token("mlstring", self.text[start : self.pos], start, value)


def _show(c: str) -> str:
    return repr(c) if c.isprintable() else f"'\\x{ord(c):02x}'" if ord(c) < 0x100 else repr(c)


def _number(tok: str, fail: Callable[[int, str], Exception]) -> int | float:
    """Check ``tok`` against Zig's number literal rules and return its value."""
    base, i = 10, 0
    if len(tok) >= 2 and tok[0] == "0":
        prefix = tok[1]
        if prefix in "box":
            base, i = {"b": 2, "o": 8, "x": 16}[prefix], 2
        elif prefix in "BOX":
            raise fail(1, f"invalid number literal '{tok}': base prefix must be lowercase")
        elif prefix not in ".eE":
            raise fail(0, f"invalid number literal '{tok}': leading zero")
    if i == 2 and len(tok) == 2:
        raise fail(0, f"invalid number literal '{tok}': expected a digit after the base prefix")
    is_float = exponent = underscore = False
    special = ""
    for j in range(i, len(tok)):
        c = tok[j]
        problem = None
        if c == "_":
            if special or (j == 2 and base != 10):
                problem = "'_' must sit between digits"
            elif underscore:
                problem = "repeated '_'"
            underscore = True
        elif (c in "eE" and base == 10) or (c in "pP" and base == 16):
            if exponent:
                problem = "more than one exponent"
            elif underscore or (j == 2 and base == 16):
                problem = "exponent must follow a digit"
            is_float = exponent = True
            special = c
        elif c == ".":
            if exponent or special or underscore or "." in tok[:j]:
                problem = "misplaced '.'"
            elif base not in (10, 16):
                problem = "only decimal and hexadecimal numbers can have a fraction"
            is_float = True
            special = c
        elif c in "+-":
            if special not in ("eEpP" if base == 10 else "pP") or not special:
                problem = f"misplaced {c!r}"
            special = c
        else:
            digit = int(c, 36) if c.isalnum() and c.isascii() else 99
            if exponent and digit >= 10:
                problem = f"invalid exponent digit {c!r}"
            elif digit >= base:
                problem = f"invalid digit {c!r} for base {base}"
            underscore = False
            special = ""
        if problem:
            raise fail(j, f"invalid number literal '{tok}': {problem}")
    if underscore or special:
        raise fail(len(tok) - 1, f"invalid number literal '{tok}': ends in {tok[-1]!r}")
    digits = tok[i:].replace("_", "")
    if not is_float:
        return int(digits, base)
    return float.fromhex("0x" + digits) if base == 16 else float(digits)


# --- values -----------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the tokens; ``self.keys`` is the field path for error messages."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines = [m.start() for m in re.finditer("\n", text)]
        self.keys: list[str] = []
        self.lexer = _Lexer(text)
        self._tok = self.lexer.next()
        self.peeked: list[_Token] = []
        self.end = 0  # just after the last token consumed

    @property
    def tok(self) -> _Token:
        """The current token; reaching a lexical error raises it."""
        if self._tok.kind == "error":
            raise self.fail_at(self._tok.pos, self._tok.value)
        return self._tok

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self.lines, pos) + 1

    def fail_at(self, pos: int, problem: str) -> ManifestError:
        key = "".join(self.keys).lstrip(".") or None
        return ManifestError(self.path, problem, line=self.line_of(pos), key=key)

    def advance(self) -> _Token:
        tok = self.tok
        self._tok = self.peeked.pop(0) if self.peeked else self.lexer.next()
        self.end = tok.pos + len(tok.text.rstrip()) if tok.kind == "mlstring" else tok.pos + len(tok.text)
        return tok

    def peek(self, n: int) -> _Token:
        """The token ``n`` places after the current one."""
        while len(self.peeked) < n:
            self.peeked.append(self.lexer.next())
        return self.peeked[n - 1]

    def expect(self, kind: str, context: str) -> _Token:
        if self.tok.kind != kind:
            what = _PUNCT.get(kind, kind)
            raise self.fail_at(self.tok.pos, f"expected {what} {context}, found {self.found()}")
        return self.advance()

    def found(self) -> str:
        tok = self.tok
        if tok.kind == "eof":
            return tok.text
        return repr(tok.text if len(tok.text) < 40 else tok.text[:37] + "...")

    def parse_document(self) -> Any:
        value = self.value()
        if self.tok.kind != "eof":
            raise self.fail_at(self.tok.pos, f"expected end of file, found {self.found()}")
        return value

    def value(self) -> Any:
        tok = self.tok
        kind = tok.kind
        if kind == ".":
            nxt = self.peek(1)
            if nxt.kind == "{":
                return self.init()
            if nxt.kind in ("ident", "qident"):
                self.advance()
                name_tok = self.advance()
                return EnumLiteral(self.name(name_tok), quoted=name_tok.kind == "qident")
            if nxt.kind == "error":
                self.advance()
                self.tok  # noqa: B018 (the property raises the lexer's error)
            raise self.fail_at(nxt.pos, f"expected '{{' or a name after '.', found {nxt.text!r}")
        if kind in ("string", "mlstring", "char", "number"):
            return self.advance().value
        if kind == "-":
            self.advance()
            if self.tok.kind == "number":
                return -self.advance().value
            if self.tok.kind == "ident" and self.tok.text in ("inf", "nan"):
                return -float(self.advance().text)
            raise self.fail_at(self.tok.pos, f"expected a number after '-', found {self.found()}")
        if kind == "ident":
            if tok.text in _WORDS:
                self.advance()
                return _WORDS[tok.text]
            hint = f"(an enum literal is written '.{tok.text}')"
            raise self.fail_at(tok.pos, f"expected a value, found identifier {tok.text!r} {hint}")
        raise self.fail_at(tok.pos, f"expected a value, found {self.found()}")

    def name(self, tok: _Token) -> str:
        if tok.kind == "ident" and tok.text in KEYWORDS:
            raise self.fail_at(tok.pos, f"{tok.text!r} is a keyword; write it as @\"{tok.text}\"")
        return tok.value

    def init(self) -> Any:
        """``.{ ... }``: a struct when it starts with ``.name =``, else a tuple."""
        line = self.line_of(self.tok.pos)
        start = self.tok.pos
        self.advance()
        self.advance()
        if self.tok.kind == "}":
            self.advance()
            empty = EmptyInit(line=line)
            empty.span = (start, self.end)
            return empty
        names = ("ident", "qident")
        if self.tok.kind == "." and self.peek(1).kind in names and self.peek(2).kind == "=":
            struct = self.struct_body(ZonStruct(line=line))
            struct.span = (start, self.end)
            return struct
        return self.tuple_body(ZonTuple(line=line))

    def struct_body(self, out: ZonStruct) -> ZonStruct:
        while self.tok.kind != "}":
            dot = self.expect(".", "to start a field (all fields of a struct are '.name = value')")
            if self.tok.kind not in ("ident", "qident"):
                problem = f"expected a field name after '.', found {self.found()}"
                raise self.fail_at(self.tok.pos, problem)
            key = self.name(self.advance())
            self.keys.append("." + key)
            self.expect("=", f"after field name {key!r}")
            value_start = self.tok.pos
            out[key] = self.value()
            out.key_lines[key] = self.line_of(dot.pos)
            out.field_spans[key] = (dot.pos, self.end)
            out.value_spans[key] = (value_start, self.end)
            if self.tok.kind != "}":
                self.expect(",", "after initializer")
            self.keys.pop()
        self.advance()
        return out

    def tuple_body(self, out: ZonTuple) -> ZonTuple:
        while True:
            self.keys.append(f"[{len(out)}]")  # before looking: a bad token here is that item
            if self.tok.kind == "}":
                self.keys.pop()
                break
            if self.tok.kind == "." and self.peek(2).kind == "=":
                problem = "field initializer in a tuple (mixing '.name = value' and plain values)"
                raise self.fail_at(self.tok.pos, problem)
            line = self.line_of(self.tok.pos)
            out.append(self.value())
            out.item_lines.append(line)
            if self.tok.kind != "}":
                self.expect(",", "after initializer")
            self.keys.pop()
        self.advance()
        return out


# --- the manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ZigManifest:
    """What a ``build.zig.zon`` says about its package, checked the way ``zig fetch`` checks it.

    ``version`` is the semantic version as Zig prints it (it normalises, e.g. ``1_0.2.3`` is
    ``10.2.3``). ``paths`` is ``None`` when the field is missing (allowed for a project's own
    manifest, an error for a fetched package). Each dependency maps to a dict with ``url``,
    ``path`` and ``hash`` (``None`` when absent) and ``lazy`` (``False`` by default).
    """

    name: str
    version: str
    fingerprint: int | None = None
    paths: list[str] | None = None
    dependencies: dict[str, dict[str, Any]] = field(default_factory=dict)
    minimum_zig_version: str | None = None
    #: Line of each top-level field, for callers that report their own errors.
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def id(self) -> int:
        """The 32 bits of the fingerprint that go into the hash string (0 without one)."""
        return (self.fingerprint or 0) & 0xFFFFFFFF


def manifest_info(data: dict, path: str = MANIFEST_NAME) -> ZigManifest:
    """Check a parsed ``build.zig.zon`` as Zig 0.15 does and return its package facts.

    Every problem ``zig fetch`` reports is a :class:`ManifestError` here, with Zig's wording.
    Unknown fields are ignored, as Zig ignores them (newer manifests may carry more).
    """
    lines = getattr(data, "key_lines", {})
    top_line = getattr(data, "line", None) or None

    def fail(problem: str, key: str | None = None, line: int | None = None) -> ManifestError:
        return ManifestError(path, problem, line=line or lines.get(key or "", top_line), key=key)

    if not isinstance(data, dict):
        raise fail("expected top level expression to be a struct")
    if "name" not in data:
        raise fail("missing top-level 'name' field")
    name = _manifest_name(data["name"], lambda p: fail(p, "name"))
    if "version" not in data:
        raise fail("missing top-level 'version' field")
    version = _string(data["version"], lambda p: fail(p, "version"))
    if len(version) > MAX_VERSION_LEN:
        problem = f"version string length {len(version)} exceeds maximum of {MAX_VERSION_LEN}"
        raise fail(problem, "version")
    version = semver(version, lambda p: fail(p, "version"))
    fingerprint = None
    if "fingerprint" in data:
        fingerprint = _fingerprint(data["fingerprint"], name, lambda p: fail(p, "fingerprint"))
    paths = None
    if "paths" in data:
        value = data["paths"]
        if not isinstance(value, list):  # `.paths = .{}` too: zig reads `.{}` as a struct
            raise fail("expected paths expression to be a list of strings", "paths")
        item_lines = getattr(value, "item_lines", None) or [None] * len(value)
        paths = [
            _string(p, lambda m, i=i: fail(m, f"paths[{i}]", item_lines[i]))
            for i, p in enumerate(value)
        ]
    deps: dict[str, dict[str, Any]] = {}
    if "dependencies" in data:
        deps = _dependencies(data["dependencies"], fail)
    minimum = None
    if "minimum_zig_version" in data:
        def min_fail(problem: str) -> ManifestError:
            return fail(problem, "minimum_zig_version")

        minimum = semver(_string(data["minimum_zig_version"], min_fail), min_fail)
    return ZigManifest(name, version, fingerprint, paths, deps, minimum, dict(lines))


def _string(value: Any, fail: Callable[[str], ManifestError]) -> str:
    if type(value) is not str:  # EnumLiteral and MultilineString are not "..." literals
        raise fail("expected string literal")
    return value


def _manifest_name(value: Any, fail: Callable[[str], ManifestError]) -> str:
    """``.name``: a bare enum literal (0.14+) or, deprecated, a string holding an identifier."""
    if type(value) is str:
        if not is_valid_id(value):
            hint = "(hint: switch from string to enum literal)"
            raise fail(f"name must be a valid bare zig identifier {hint}")
    elif isinstance(value, EnumLiteral):
        if value.quoted:
            raise fail("name must be a valid bare zig identifier")
    else:
        raise fail("expected enum literal")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_LEN:
        raise fail(f"name '{value}' exceeds max length of {MAX_NAME_LEN}")
    return str(value)


def is_valid_id(name: str) -> bool:
    """A bare Zig identifier: letters, digits, ``_``, not starting with a digit, not a keyword."""
    return bool(_IDENT.fullmatch(name)) and name not in KEYWORDS


def _fingerprint(value: Any, name: str, fail: Callable[[str], ManifestError]) -> int:
    """``.fingerprint``: a u64 whose high half is the CRC-32 of the name, low half the id."""
    if type(value) is not int or value < 0:  # bool, CharLiteral and negatives are not literals
        raise fail("expected integer literal")
    if value >= 1 << 64:
        raise fail("expected u64 integer literal, found big_int")
    if not fingerprint_valid(value, name):
        raise fail(
            f"invalid fingerprint: 0x{value:x}; its high 32 bits must be 0x{_crc32(name):x} "
            f"(the CRC-32 of the name {name!r}) and its low 32 bits neither 0 nor 0xffffffff; "
            "if this is a new or forked package, generate a new one with zig"
        )
    return value


def fingerprint_valid(value: int, name: str) -> bool:
    """Zig's check: the id half is neither 0 nor all ones, the checksum half is CRC-32(name)."""
    fid, checksum = value & 0xFFFFFFFF, value >> 32
    return fid not in (0, 0xFFFFFFFF) and checksum == _crc32(name)


def _crc32(name: str) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape"))


def _dependencies(
    value: Any, fail: Callable[..., ManifestError]
) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise fail("expected dependencies expression to be a struct", "dependencies")
    dep_lines = getattr(value, "key_lines", {})
    out: dict[str, dict[str, Any]] = {}
    for dep_name, dep in value.items():
        key = f"dependencies.{dep_name}"
        line = dep_lines.get(dep_name)
        if not isinstance(dep, dict):
            raise fail("expected dependency expression to be a struct", key, line)
        field_lines = getattr(dep, "key_lines", {})

        def dep_fail(problem: str, fld: str | None = None, key: str = key,
                     field_lines: dict = field_lines, line: int | None = line) -> ManifestError:
            return fail(problem, f"{key}.{fld}" if fld else key, field_lines.get(fld or "", line))

        info: dict[str, Any] = {"url": None, "path": None, "hash": None, "lazy": False}
        if "url" in dep and "path" in dep:
            second = max(("url", "path"), key=lambda k: list(dep).index(k))
            raise dep_fail("dependency should specify only one of 'url' and 'path' fields.", second)
        for fld in ("url", "path", "hash"):
            if fld in dep:
                info[fld] = _string(dep[fld], lambda p, f=fld: dep_fail(p, f))
        if info["hash"] is not None and len(info["hash"]) > MAX_HASH_LEN:
            raise dep_fail(f"hash length exceeds maximum: {len(info['hash'])}", "hash")
        if "lazy" in dep:
            if not isinstance(dep["lazy"], bool):
                raise dep_fail("expected boolean", "lazy")
            info["lazy"] = dep["lazy"]
        if info["url"] is None and info["path"] is None:
            raise dep_fail("dependency requires location field, one of 'url' or 'path'.")
        out[str(dep_name)] = info
    return out


_SEMVER_ID = re.compile(r"[0-9A-Za-z-]+")


def semver(text: str, fail: Callable[[str], ManifestError]) -> str:
    """Validate a semantic version the way Zig's ``SemanticVersion.parse`` does; return it as
    Zig prints it (numbers re-rendered: Zig allows ``_`` separators in them)."""

    def num(part: str) -> int:
        if len(part) > 1 and part[0] == "0":
            raise fail("unable to parse semantic version: InvalidVersion")
        if not re.fullmatch(r"[0-9]+(?:_+[0-9]+)*", part):
            raise fail("unable to parse semantic version: InvalidVersion")
        n = int(part.replace("_", ""))
        if n >= 1 << 64:
            raise fail("unable to parse semantic version: Overflow")
        return n

    m = re.search(r"[-+]", text)
    core, extra = (text[: m.start()], text[m.start() :]) if m else (text, "")
    parts = core.split(".")
    if len(parts) != 3:
        raise fail("unable to parse semantic version: InvalidVersion")
    out = ".".join(str(num(p)) for p in parts)
    if not extra:
        return out
    pre, _, build = extra[1:].partition("+") if extra[0] == "-" else (None, "", extra[1:])
    has_build = extra[0] == "+" or "+" in extra[1:]
    for ident in (pre.split(".") if pre is not None else []):
        if not _SEMVER_ID.fullmatch(ident):
            raise fail("unable to parse semantic version: InvalidVersion")
        if ident.isdigit():
            num(ident)
    for ident in (build.split(".") if has_build else []):
        if not _SEMVER_ID.fullmatch(ident):
            raise fail("unable to parse semantic version: InvalidVersion")
    return out + (f"-{pre}" if pre is not None else "") + (f"+{build}" if has_build else "")


# --- editing a manifest in place ----------------------------------------------------------------


class ZonEditError(ManifestError):
    """A ``build.zig.zon`` that cannot be edited as asked (a ``.path`` dependency of that name,
    a ``.dependencies`` that is not a struct)."""


def with_dependency(text: str, name: str, url: str, package_hash: str, lazy: bool = False,
                    path: str = MANIFEST_NAME) -> str:
    """``text`` with dependency ``name`` set to ``url`` and ``package_hash`` (and ``.lazy =
    true``), by the smallest textual edit: every other byte, comments and layout included,
    stays as it was.

    A new dependency goes after the last one, on its own line at its indentation (inside the
    same line when the struct is written on one line), into ``.dependencies = .{}`` or, when
    there is none, as a new ``.dependencies`` after ``.version``, as ``zig fetch --save``
    places it. An existing one gets its ``.url`` and ``.hash`` values replaced (``.hash``
    added after ``.url`` when missing). The result is parsed again before it is returned, and
    must declare exactly what was asked, every other dependency unchanged.
    """
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom):]
    data = loads(body, path)
    if not isinstance(data, ZonStruct):
        raise ZonEditError(path, "expected top level expression to be a struct", line=1)
    fields = {"url": zig_string(url), "hash": zig_string(package_hash)}
    if lazy:
        fields["lazy"] = "true"
    edits = _dependency_edits(body, data, name, fields, path)
    for start, end, new in sorted(edits, reverse=True):
        body = body[:start] + new + body[end:]
    _check_edit(data, loads(body, path), name, url, package_hash, lazy, path)
    return bom + body


Edit = tuple[int, int, str]  # replace text[start:end] with the string


def _dependency_edits(text: str, data: ZonStruct, name: str, fields: dict[str, str],
                      path: str) -> list[Edit]:
    deps = data.get("dependencies")
    if deps is None:
        anchor = "version" if "version" in data.field_spans else list(data.field_spans)[-1]
        block = _Block(text, data.field_spans[anchor][0])
        inner = block.inner
        entry = _entry_lines(name, fields, inner, block.unit, block.newline)
        value = f".{{{block.newline}{entry}{block.newline}{block.indent}}}"
        return _append_field(text, data.field_spans[anchor], f".dependencies = {value}",
                             f".dependencies = .{{ {_entry_inline(name, fields)} }}")
    if not isinstance(deps, ZonStruct):
        line = data.key_lines.get("dependencies")
        raise ZonEditError(path, "expected dependencies expression to be a struct", line=line,
                           key="dependencies")
    if name in deps:
        return _update_entry(text, deps, name, fields, path)
    if deps.field_spans:
        last = deps.field_spans[list(deps.field_spans)[-1]]
        block = _Block(text, last[0])
        entry = _entry_lines(name, fields, block.indent, block.unit, block.newline).lstrip()
        return _append_field(text, last, entry.rstrip(","), _entry_inline(name, fields))
    return _fill_empty(text, deps, data.field_spans["dependencies"], name, fields)


def _fill_empty(text: str, deps: ZonStruct, field_span: tuple[int, int], name: str,
                fields: dict[str, str]) -> list[Edit]:
    """``.dependencies = .{}`` (maybe with comments inside): the entry goes before ``}``."""
    start, end = deps.span
    close = end - 1
    block = _Block(text, field_span[0])
    line_start = text.rfind("\n", 0, close) + 1
    if line_start > start and not text[line_start:close].strip():  # `}` on a line of its own
        entry = _entry_lines(name, fields, block.inner, block.unit, block.newline)
        return [(line_start, line_start, entry + block.newline)]
    entry = _entry_lines(name, fields, block.inner, block.unit, block.newline)
    return [(start, end, f".{{{block.newline}{entry}{block.newline}{block.indent}}}")]


def _update_entry(text: str, deps: ZonStruct, name: str, fields: dict[str, str],
                  path: str) -> list[Edit]:
    entry = deps[name]
    line = deps.key_lines.get(name)
    if not isinstance(entry, ZonStruct) or "path" in entry or "url" not in entry:
        raise ZonEditError(path, f"dependency {name!r} exists and is not a .url dependency; "
                           "remove it, or choose another name with --name", line=line,
                           key=f"dependencies.{name}")
    edits: list[Edit] = [(*entry.value_spans[k], v) for k, v in fields.items() if k in entry]
    missing = [f".{k} = {v}" for k, v in fields.items() if k not in entry]
    if missing:  # after the last field of the entry, in the order .url, .hash, .lazy
        last = entry.field_spans[list(entry.field_spans)[-1]]
        block = _Block(text, last[0])
        edits += _append_field(text, last, f",{block.newline}{block.indent}".join(missing),
                               ", ".join(missing))
    return edits


def _append_field(text: str, after: tuple[int, int], lines: str, inline: str) -> list[Edit]:
    """Insert a field after the field spanning ``after``: on a line of its own at that field's
    indentation when the field ends its line, else on the same line."""
    _, end = after
    block = _Block(text, after[0])
    cursor = end
    while cursor < len(text) and text[cursor] in " \t\r\n":
        cursor += 1
    comma = cursor < len(text) and text[cursor] == ","
    tail = cursor + 1 if comma else end
    eol = text.find("\n", tail)
    rest = text[tail:eol if eol >= 0 else len(text)].strip()
    edits: list[Edit] = [] if comma else [(end, end, ",")]
    if block.own_line and (not rest or rest.startswith("//")):
        if eol < 0:
            edits.append((len(text), len(text), f"{block.newline}{block.indent}{lines},"))
        else:
            edits.append((eol + 1, eol + 1, f"{block.indent}{lines},{block.newline}"))
    else:  # one edit, so that nothing else lands between the comma and the field
        closes = text[tail:].lstrip().startswith("}")  # else more fields follow: a comma
        edits = [(tail, tail, ("" if comma else ",") + f" {inline}" + ("" if closes else ","))]
    return edits


class _Block:
    """The layout around a field starting at ``pos``: its indentation, whether it starts its
    line, the indentation step (4, or what the file uses) and the newline spelling."""

    def __init__(self, text: str, pos: int) -> None:
        line_start = text.rfind("\n", 0, pos) + 1
        lead = text[line_start:pos]
        self.own_line = not lead.strip()
        self.indent = lead if self.own_line else ""
        self.unit = "\t" if self.indent.startswith("\t") else "    "
        self.inner = self.indent + self.unit
        self.newline = "\r\n" if "\r\n" in text else "\n"


def _entry_lines(name: str, fields: dict[str, str], indent: str, unit: str, newline: str) -> str:
    inner = indent + unit
    body = "".join(f"{inner}.{key} = {value},{newline}" for key, value in fields.items())
    return f"{indent}{field_name(name)} = .{{{newline}{body}{indent}}},"


def _entry_inline(name: str, fields: dict[str, str]) -> str:
    body = ", ".join(f".{key} = {value}" for key, value in fields.items())
    return f"{field_name(name)} = .{{ {body} }}"


def field_name(name: str) -> str:
    """``.name``, or ``.@"name"`` when it is not a bare identifier (Zig's ``fmtId``)."""
    return f".{name}" if is_valid_id(name) else f".@{zig_string(name)}"


def zig_string(value: str) -> str:
    """``value`` as a Zig string literal (Zig's ``fmtString`` escapes)."""
    out = []
    for ch in value.encode("utf-8", "surrogateescape"):
        c = chr(ch)
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif 0x20 <= ch < 0x7F:
            out.append(c)
        else:
            out.append(f"\\x{ch:02x}")
    return '"' + "".join(out) + '"'


def _check_edit(old: dict, new: Any, name: str, url: str, package_hash: str, lazy: bool,
                path: str) -> None:
    """Never write an edit that does not say what was asked, or that changed anything else."""
    def others(data: Any) -> dict:
        deps = data.get("dependencies") if isinstance(data, dict) else None
        return {k: v for k, v in (deps or {}).items() if k != name}

    got = (new.get("dependencies") or {}).get(name) if isinstance(new, dict) else None
    fine = (isinstance(got, dict) and got.get("url") == url and got.get("hash") == package_hash
            and (not lazy or got.get("lazy") is True) and others(old) == others(new)
            and {k: v for k, v in old.items() if k != "dependencies"}
            == {k: v for k, v in new.items() if k != "dependencies"})
    if not fine:
        raise ZonEditError(path, f"treeseed could not add dependency {name!r} to this file "
                           "without changing something else; add it by hand: "
                           f"{_entry_inline(name, {'url': zig_string(url), 'hash': zig_string(package_hash)})},")
