"""Named SQL, loaded from ``db/<vendor>/<concept>.sql``.

Keeping SQL in files means a reviewer reads the exact statements the engine runs, with
the index each relies on named in a comment beside it. ``sql(connection, "claim_jobs")``
returns the statement for that connection's vendor ("postgresql" or "sqlite");
``load(vendor)`` maps every statement name of a vendor to its text as written (includes
expanded, comments kept); ``sql()`` hands out that text compacted (``compact``): the
comments and the indentation dropped, so a statement is sent as its SQL alone.

The file format:

- ``-- name: <block>`` at the start of a line starts a block, a statement; the text up
  to the next block header is its text (a trailing ``;`` dropped). Text before the first
  header is the file's own comment. A name is unique among all the files of a vendor.
- ``-- name: <block> (fragment)`` starts a fragment: a part several statements share
  (the head of two INSERTs, the tail of two claims), not valid SQL on its own. A
  fragment is never handed out as a statement (asking for one raises a ``LookupError``
  that says so), and every fragment is included by some block.
- ``-- @include <fragment>`` on a line of its own (indentation allowed, and kept on every
  line it brings in) is replaced by that fragment of the same vendor, whose own includes
  are expanded first, to any depth. Only fragments are included, so editing a statement
  never changes another one.

A vendor's files are checked whole when first loaded, and anything the loader cannot
read one way only is refused with a ``SQLFileError`` that names the file, the block and
the line: an include of an unknown block or of a statement, an include cycle, a line
that mentions ``@include`` but is not an include line (left in, it would stay behind as
a comment and the statement would run incomplete, silently), a line that starts like a
block header but is not one, a name defined twice, an empty block, a fragment nothing
includes. Every include line is replaced and every other ``@include`` refused, so no
loaded statement holds one; the loader asserts that too.

The benchmark's own SQL lives beside its code (``taskengine/bench/*.sql``, the same
format, includes resolved within the file): ``package_statements`` reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Protocol

SQL_DIR = Path(__file__).parent  # one directory per vendor: db/postgresql/, db/sqlite/
_HEADER = re.compile(r"--\s*name:\s*(\w+)(\s+\(fragment\))?\s*")
_LOOKS_LIKE_HEADER = re.compile(r"\s*--\s*name\s*:")
_INCLUDE = re.compile(r"(\s*)--\s*@include\s+(\w+)\s*")
_INCLUDE_MARK = "@include"


class SQLFileError(ValueError):
    """A SQL file the loader refuses (see the module docstring for the rules)."""


class NoSuchStatement(KeyError):
    """Asked for a statement that is not there: an unknown name, or a fragment."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Block:
    """One block of a SQL file, as written (includes not expanded)."""

    name: str
    text: str
    fragment: bool
    source: str  # the file's name
    line: int  # of the block's header

    def where(self) -> str:
        return f"{self.source}, block {self.name!r} (line {self.line})"


class Statements(dict[str, str]):
    """Statement name → text with includes expanded. Fragments are not keys; looking one
    up, or an unknown name, raises ``NoSuchStatement`` saying which it is."""

    def __init__(self, statements: dict[str, str], fragments: dict[str, Block], label: str) -> None:
        super().__init__(statements)
        self.fragments = fragments
        self.label = label

    def __missing__(self, name: str) -> str:
        fragment = self.fragments.get(name)
        if fragment is not None:
            raise NoSuchStatement(
                f"SQL block {name!r} is a fragment of {fragment.source} (line {fragment.line}), not a statement:"
                " it is only included in other blocks"
            )
        raise NoSuchStatement(f"no SQL block {name!r} for {self.label}")


def read_blocks(path: Path) -> dict[str, Block]:
    """The blocks of one SQL file, as written. A block's source is ``<vendor>/<file>``
    (``sqlite/jobs.sql``): the files of the two vendors share their names."""
    return _parse(path.read_text(), f"{path.parent.name}/{path.name}")


def parse_blocks(text: str, source: str = "<text>") -> Statements:
    """The statements of one SQL text, its includes resolved within it."""
    return _expand(_parse(text, source), source)


def package_statements(package: str, filename: str) -> Statements:
    """The statements of a SQL file shipped inside ``package`` (read as a package resource,
    so it works from an installed wheel too)."""
    text = resources.files(package).joinpath(filename).read_text()
    return parse_blocks(text, f"{package.replace('.', '/')}/{filename}")


@cache
def load(vendor: str) -> Statements:
    """Every statement of ``vendor``'s files in ``SQL_DIR``, checked and expanded."""
    blocks: dict[str, Block] = {}
    for path in sorted((SQL_DIR / vendor).glob("*.sql")):
        for name, block in read_blocks(path).items():
            first = blocks.get(name)
            if first is not None:
                raise SQLFileError(
                    f"SQL block {name!r} defined twice for {vendor}: {first.source} line {first.line}"
                    f" and {block.source} line {block.line}"
                )
            blocks[name] = block
    return _expand(blocks, vendor)


class _Connection(Protocol):
    vendor: str


def sql(connection: _Connection, name: str) -> str:
    """The named statement for ``connection``'s vendor ("postgresql" or "sqlite"), compacted."""
    return _compacted(connection.vendor, name)


@cache
def _compacted(vendor: str, name: str) -> str:
    return compact(load(vendor)[name])


# The parts of a statement's text, left to right: a quoted literal or identifier — kept
# whole, whatever it holds — or a gap: a run of whitespace and comments.
_TOKEN = re.compile(
    r"(?P<keep>(?<!\w)[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\""
    r"|\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$)"
    r"|(?P<gap>(?:\s+|--[^\n]*|/\*.*?\*/)+)",
    re.DOTALL,
)


_LINE_COMMENT = re.compile(r"--[^\n]*")
_BLOCK_COMMENT_BODY = re.compile(r"/\*(.*?)\*/", re.DOTALL)


class UncompactableSQL(ValueError):
    """SQL that ``compact`` cannot shorten without risk of changing what it says."""


def compact(text: str) -> str:
    """``text`` without its comments and indentation: what the server needs, no more.

    A statement's comments are for its reader (the index it relies on, why it is
    written so); sent, they cost on every call: psycopg parses a query for its
    placeholders on each execute unless it is short enough for its cache (4 KiB), and
    the worker's batch statement with its comments was twice that. Quoted text —
    literals, identifiers, dollar-quoted bodies — is kept exactly; every comment and
    every run of whitespace outside it becomes one space, and none is kept beside a
    comma or a parenthesis — but for the newline between two string literals that
    PostgreSQL joins into one. A nested block comment is refused (UncompactableSQL)."""

    def token(match: re.Match[str]) -> str:
        keep = match.group("keep")
        if keep is not None:
            return keep
        gap = match.group("gap")
        for body in _BLOCK_COMMENT_BODY.findall(_LINE_COMMENT.sub("", gap)):
            if "/*" in body:  # PostgreSQL nests block comments; the pattern above does not
                raise UncompactableSQL(f"a nested block comment: {gap.strip()!r}")
        if "\n" in gap and text[match.start() - 1 : match.start()] == "'" and text.startswith("'", match.end()):
            return "\n"  # 'a'<newline>'b' is one literal, 'ab': the newline is what joins them
        return " "

    parts = _TOKEN.sub(token, text)
    # Beside a comma or a parenthesis a space separates nothing: drop it (outside quotes).
    return "".join(
        piece if quoted else _PUNCTUATION_SPACE.sub(r"\1", piece) for piece, quoted in _split_quoted(parts)
    ).strip()


_PUNCTUATION_SPACE = re.compile(r" ?([(),]) ?")


def _split_quoted(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into runs outside quotes and quoted runs (True), in order."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for match in _TOKEN.finditer(text):
        if match.group("keep") is None:
            continue
        pieces.append((text[at : match.start()], False))
        pieces.append((match.group("keep"), True))
        at = match.end()
    pieces.append((text[at:], False))
    return pieces


def _parse(text: str, source: str) -> dict[str, Block]:
    blocks: dict[str, Block] = {}
    header: tuple[str, bool, int] | None = None
    body: list[str] = []

    def close() -> None:
        if header is None:
            return
        name, fragment, line = header
        block = Block(name, "\n".join(body).strip().rstrip(";"), fragment, source, line)
        if not block.text:
            raise SQLFileError(f"{block.where()}: the block is empty")
        if name in blocks:
            raise SQLFileError(f"{source}: block {name!r} defined twice (lines {blocks[name].line} and {line})")
        blocks[name] = block

    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.fullmatch(line)
        if match:
            close()
            header, body = (match.group(1), match.group(2) is not None, number), []
        elif _LOOKS_LIKE_HEADER.match(line):
            raise SQLFileError(
                f"{source}, line {number}: {line!r} is not a block header"
                " ('-- name: <block>' or '-- name: <block> (fragment)', at the start of the line)"
            )
        elif _INCLUDE_MARK in line and not _INCLUDE.fullmatch(line):
            where = f"block {header[0]!r}" if header else "before the first block"
            raise SQLFileError(
                f"{source}, {where}, line {number}: {line.strip()!r} is not an include the loader can expand"
                " ('-- @include <fragment>' on a line of its own); left in, it would stay behind as a comment"
            )
        elif header is not None:
            body.append(line)
    close()
    return blocks


def _expand(blocks: dict[str, Block], label: str) -> Statements:
    expanded: dict[str, str] = {}
    included: set[str] = set()

    def expand(block: Block, chain: tuple[str, ...]) -> str:
        if block.name in expanded:
            return expanded[block.name]
        chain = (*chain, block.name)
        lines: list[str] = []
        for line in block.text.splitlines():
            match = _INCLUDE.fullmatch(line)
            if not match:
                lines.append(line)
                continue
            indent, name = match.groups()
            target = blocks.get(name)
            if target is None:
                raise SQLFileError(f"{block.where()}: includes {name!r}, which no {label} SQL defines")
            if not target.fragment:
                raise SQLFileError(
                    f"{block.where()}: includes {name!r}, which is a statement, not a fragment"
                    " (share a '(fragment)' block instead)"
                )
            if name in chain:
                cycle = " -> ".join((*chain[chain.index(name) :], name))
                raise SQLFileError(f"{block.where()}: include cycle {cycle}")
            included.add(name)
            lines.extend(indent + part if part else part for part in expand(target, chain).splitlines())
        expanded[block.name] = "\n".join(lines)
        return expanded[block.name]

    statements = {name: expand(block, ()) for name, block in blocks.items() if not block.fragment}
    fragments = {name: block for name, block in blocks.items() if block.fragment}
    for name, block in fragments.items():
        if name not in included:
            raise SQLFileError(f"{block.where()}: a fragment included by no block")
    for name, text in statements.items():
        if _INCLUDE_MARK in text:  # impossible by construction: every include line was replaced
            raise SQLFileError(f"{blocks[name].where()}: an include line survived expansion")
    return Statements(statements, fragments, label)
