#!/usr/bin/env python3
"""Structure check for the Rust crates: file size, function size, import loops.

What it checks, over the non-test source of each crate (proto, core, net,
perf, tools/harness):
  * no source file is over MAX_FILE_LINES lines (test modules marked
    `#[cfg(test)]` are not counted);
  * no function is over MAX_FN_LINES lines, from its `fn` line to its
    closing brace;
  * no import loop between the modules of one crate target: every strongly
    connected component of more than one module is reported.

Why: the project's guide asks for short files and functions and for modules
that depend on each other in one direction only (a wing may use `core`, the
core never the wing). Reviews miss these slowly growing problems; this check
makes the test command fail the moment one appears, naming the file, line and
module path to fix.

How: the module tree of each target (lib.rs, main.rs, src/bin/...) is found by
following its `mod name;` declarations, so files no target compiles, test
modules in their own files and generated code (`include!` from OUT_DIR) are
never read. Each file is masked first: comments (doc comments too), string
and char literals become blanks, so a path in a doc comment or a `"{"` in a
string neither adds an edge nor unbalances a brace. Import edges come from
`use` trees starting with `crate`, `super` or `self` (groups expanded) and
from inline `crate::a::b` / `super::x` / `self::x` paths; each path maps to the
longest existing module it names. The crate root is never a target. A child
importing its parent (`use super::X`) counts like any other edge; a parent
naming a child by its bare name (`use child::X`, how a mod.rs re-exports) is
not an edge, since declaring the child already ties the two together.
Paths inside `#[cfg(test)]` items are ignored.

Usage: tools/check-structure.py [--root DIR] [CRATE_SRC ...]
Exit status 0 when everything passes, 1 on any violation (each printed on its
own line starting with "FAIL").
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field

MAX_FILE_LINES = 600
MAX_FN_LINES = 100
DEFAULT_SRC_DIRS = ["proto/src", "core/src", "net/src", "perf/src", "tools/harness/src"]
GENERATED_MARKERS = ("@generated", "DO NOT EDIT", "Code generated")

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*(?:all\s*\(\s*)?test\b[^\]]*\]")
ATTR = re.compile(r"\s*#\s*!?\s*\[")
FN_DEF = re.compile(r"\bfn\s+(" + IDENT + r")")
MOD_DECL = re.compile(r"\bmod\s+(" + IDENT + r")\s*([;{])")
USE_STMT = re.compile(r"\buse\s+")
VIS_IN = re.compile(r"\bpub\s*\(\s*in\s+[^)]*\)")
INLINE_PATH = re.compile(r"(?<![\w$:])((?:crate|super|self)(?:\s*::\s*(?:" + IDENT + r"))+)")
PATH_ATTR = re.compile(r'#\s*\[\s*path\s*=\s*"([^"]+)"\s*\]\s*$')


# --------------------------------------------------------------------------
# Masking: blank out comments and literals, keeping every newline in place.
# --------------------------------------------------------------------------


def _blank(text: str) -> str:
    return "".join("\n" if ch == "\n" else " " for ch in text)


def _end_of_raw_string(src: str, i: int) -> int | None:
    """If src[i:] starts a raw string (r"..", r#".."#, br#".."#), its end."""
    j = i + (2 if src[i : i + 2] in ("br", "cr") else 1)
    hashes = 0
    while j < len(src) and src[j] == "#":
        hashes += 1
        j += 1
    if j >= len(src) or src[j] != '"':
        return None  # a raw identifier such as r#type, or a plain identifier
    close = src.find('"' + "#" * hashes, j + 1)
    return len(src) if close < 0 else close + 1 + hashes


def _end_of_quoted(src: str, i: int, quote: str) -> int:
    j = i + 1
    while j < len(src):
        if src[j] == "\\":
            j += 2
            continue
        if src[j] == quote:
            return j + 1
        j += 1
    return len(src)


def _end_of_block_comment(src: str, i: int) -> int:
    depth, j = 0, i
    while j < len(src):
        if src.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif src.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(src)


def _end_of_char_literal(src: str, i: int) -> int | None:
    """A char literal at src[i] == "'" (None when it is a lifetime or label)."""
    if src.startswith("\\", i + 1):
        return _end_of_quoted(src, i, "'")
    if i + 2 < len(src) and src[i + 2] == "'":
        return i + 3
    return None


def _end_of_prefixed_literal(src: str, i: int) -> int | None:
    """End of a literal with a prefix (r"", br"", cr"", b"", c"", b'x'), or None
    when src[i] only starts an identifier."""
    if src[i] == "r" or src[i : i + 2] in ("br", "cr"):
        end = _end_of_raw_string(src, i)
        if end is not None:
            return end
    if src[i : i + 2] in ('b"', 'c"'):
        return _end_of_quoted(src, i + 1, '"')
    if src.startswith("b'", i):
        return _end_of_char_literal(src, i + 1)
    return None


def mask(src: str) -> str:
    """src with comments, strings and char literals replaced by blanks."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        prev_ident = i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")
        end = None
        if src.startswith("//", i):
            nl = src.find("\n", i)
            end = n if nl < 0 else nl
        elif src.startswith("/*", i):
            end = _end_of_block_comment(src, i)
        elif ch == '"':
            end = _end_of_quoted(src, i, '"')
        elif ch in "rbc" and not prev_ident:
            end = _end_of_prefixed_literal(src, i)
        elif ch == "'":
            end = _end_of_char_literal(src, i)
        if end is None:
            out.append(ch)
            i += 1
        else:
            out.append(_blank(src[i:end]))
            i = end
    return "".join(out)


# --------------------------------------------------------------------------
# Items and brace matching on masked text.
# --------------------------------------------------------------------------


def match_brace(text: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at open_at (len(text) if unbalanced)."""
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text)


def item_end(text: str, start: int) -> tuple[int, int | None]:
    """End of the item starting at `start`: (index of its final `;` or `}`,
    index of its body's `{` or None). Parentheses and brackets are skipped, so
    the `;` of `[u8; 4]` does not end a signature."""
    depth = 0
    for j in range(start, len(text)):
        ch = text[j]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch == ";":
            return j, None
        elif depth == 0 and ch == "{":
            return match_brace(text, j), j
    return len(text), None


def skip_attributes(text: str, i: int) -> int:
    """Index of the first non-attribute, non-blank character at or after i."""
    while True:
        m = ATTR.match(text, i)
        if not m:
            return len(text) - len(text[i:].lstrip())
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "[":
                depth += 1
            elif text[j] == "]":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


@dataclass
class SourceFile:
    path: str  # relative to the repository root
    module: str  # "a::b", "" for a crate root
    raw: str
    code: str = ""  # masked, with #[cfg(test)] items blanked
    test_lines: int = 0
    test_mods: set[str] = field(default_factory=set)  # `#[cfg(test)] mod x;`

    def __post_init__(self) -> None:
        self.code = self._strip_test_items(mask(self.raw))

    def _strip_test_items(self, text: str) -> str:
        """Blank every item marked #[cfg(test)] and count its lines."""
        pieces, last = [], 0
        for m in CFG_TEST.finditer(text):
            if m.start() < last:
                continue  # inside an item already removed
            body = skip_attributes(text, m.end())
            end, _ = item_end(text, body)
            decl = MOD_DECL.match(re.sub(r"^pub(\s*\([^)]*\))?\s+", "", text[body : end + 1]))
            if decl and decl.group(2) == ";":
                self.test_mods.add(decl.group(1))
            self.test_lines += line_of(text, end) - line_of(text, m.start()) + 1
            pieces += [text[last : m.start()], _blank(text[m.start() : end + 1])]
            last = end + 1
        pieces.append(text[last:])
        return "".join(pieces)

    @property
    def lines(self) -> int:
        """Lines of the file that are not test code (trailing blanks excluded)."""
        return len(self.raw.rstrip().splitlines()) - self.test_lines

    def functions(self) -> list[tuple[str, int, int]]:
        """(name, first line, length in lines) of every fn with a body."""
        found = []
        for m in FN_DEF.finditer(self.code):
            end, body = item_end(self.code, m.end())
            if body is None:
                continue  # a declaration in a trait or an extern block
            first = line_of(self.code, m.start())
            found.append((m.group(1), first, line_of(self.code, end) - first + 1))
        return found


# --------------------------------------------------------------------------
# Module trees: follow `mod name;` from each target root.
# --------------------------------------------------------------------------


def target_roots(src_dir: str) -> list[tuple[str, str]]:
    """(label, root file) of each compilation target whose root is in src_dir."""
    roots = []
    for name, label in (("lib.rs", "lib"), ("main.rs", "bin")):
        if os.path.isfile(os.path.join(src_dir, name)):
            roots.append((label, os.path.join(src_dir, name)))
    bin_dir = os.path.join(src_dir, "bin")
    if os.path.isdir(bin_dir):
        for entry in sorted(os.listdir(bin_dir)):
            full = os.path.join(bin_dir, entry)
            if entry.endswith(".rs"):
                roots.append(("bin " + entry[:-3], full))
            elif os.path.isfile(os.path.join(full, "main.rs")):
                roots.append(("bin " + entry, os.path.join(full, "main.rs")))
    return roots


def is_generated(raw: str) -> bool:
    head = "\n".join(raw.splitlines()[:5])
    return any(marker in head for marker in GENERATED_MARKERS)


def child_files(parent: str, owns_dir: bool, name: str, path_attr: str | None) -> list[str]:
    """Candidate files for `mod name;` declared in file `parent`."""
    base = os.path.dirname(parent)
    if path_attr:
        return [os.path.join(base, path_attr)]
    if not owns_dir:  # a/b.rs declares its children in a/b/
        base = os.path.join(base, os.path.basename(parent)[:-3])
    return [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]


def load_target(repo: str, root_file: str) -> dict[str, SourceFile]:
    """Every non-test, non-generated file of one target, keyed by module path."""
    files: dict[str, SourceFile] = {}
    todo = [(root_file, "", True)]
    while todo:
        path, module, owns_dir = todo.pop()
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        if is_generated(raw):
            continue
        sf = SourceFile(os.path.relpath(path, repo), module, raw)
        files[module] = sf
        for m in MOD_DECL.finditer(sf.code):
            if m.group(2) != ";" or m.group(1) in sf.test_mods:
                continue  # inline modules belong to this file
            line = line_of(sf.code, m.start())  # a #[path] attribute sits on the line above
            attr = PATH_ATTR.search(sf.raw.splitlines()[line - 2]) if line > 1 else None
            for cand in child_files(path, owns_dir, m.group(1), attr.group(1) if attr else None):
                if os.path.isfile(cand):
                    child = m.group(1) if not module else module + "::" + m.group(1)
                    todo.append((cand, child, cand.endswith("mod.rs") or cand == root_file))
                    break
    return files


# --------------------------------------------------------------------------
# Import graph and its strongly connected components.
# --------------------------------------------------------------------------


def expand_use_tree(tree: str) -> list[str]:
    """`crate::a::{b, c::{D, self}}` -> ["crate::a::b", "crate::a::c::D", "crate::a::c"]."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+" + IDENT, "", tree))
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for j, ch in enumerate(inner + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            if inner[start:j]:
                parts.append(inner[start:j])
            start = j + 1
    out = []
    for part in parts:
        for sub in expand_use_tree(part):
            out.append(prefix.rstrip(":") if sub == "self" else prefix + sub)
    return out


def import_paths(code: str) -> list[str]:
    """Every crate-relative path a file names, from use trees and inline paths."""
    code = VIS_IN.sub(" ", code)
    paths, use_spans = [], []
    for m in USE_STMT.finditer(code):
        end = code.find(";", m.end())  # a use tree holds no `;`
        end = len(code) if end < 0 else end
        use_spans.append((m.start(), end))
        paths += expand_use_tree(code[m.end() : end])
    rest = list(code)
    for start, end in use_spans:
        rest[start:end] = " " * (end - start)
    paths += [re.sub(r"\s+", "", m.group(1)) for m in INLINE_PATH.finditer("".join(rest))]
    return [p for p in paths if p.split("::")[0] in ("crate", "super", "self")]


def resolve(current: str, path: str, modules: set[str]) -> str | None:
    """The longest existing module `path` names from module `current`."""
    segs = [s for s in path.split("::") if s and s != "*"]
    base = current.split("::") if current else []
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    else:
        if segs[0] == "self":
            segs = segs[1:]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    for k in range(len(segs), -1, -1):
        candidate = "::".join(base + segs[:k])
        if candidate in modules:
            return candidate
    return None


def import_graph(files: dict[str, SourceFile]) -> dict[str, set[str]]:
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, sf in files.items():
        for path in import_paths(sf.code):
            target = resolve(module, path, modules)
            if target and target != module:  # the root ("") is never a target
                edges[module].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def describe_cycle(comp: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(comp)
    links = [f"{a} -> {b}" for a in comp for b in sorted(edges[a]) if b in inside]
    return "{" + ", ".join(comp) + "} via " + "; ".join(links)


# --------------------------------------------------------------------------
# The check.
# --------------------------------------------------------------------------


def check_crate(repo: str, src_dir: str) -> list[str]:
    """Print the crate's summary line; return its violations."""
    failures: list[str] = []
    seen: dict[str, SourceFile] = {}
    modules = 0
    for label, root in target_roots(os.path.join(repo, src_dir)):
        files = load_target(repo, root)
        modules += len(files)
        for sf in files.values():
            seen.setdefault(sf.path, sf)
        edges = import_graph(files)
        for comp in strongly_connected(edges):
            failures.append(f"FAIL {src_dir} ({label}): import loop {describe_cycle(comp, edges)}")
    longest_file = ("-", 0)
    longest_fn = ("-", 0)
    for path, sf in sorted(seen.items()):
        if sf.lines > MAX_FILE_LINES:
            failures.append(f"FAIL {path}: {sf.lines} lines without tests (max {MAX_FILE_LINES})")
        longest_file = max(longest_file, (path, sf.lines), key=lambda t: t[1])
        for name, first, length in sf.functions():
            where = f"{path}:{first} fn {name}"
            if length > MAX_FN_LINES:
                failures.append(f"FAIL {where}: {length} lines (max {MAX_FN_LINES})")
            longest_fn = max(longest_fn, (where, length), key=lambda t: t[1])
    crate = os.path.dirname(src_dir.rstrip("/")) or src_dir
    print(
        f"{crate}: {len(seen)} files, {modules} modules, longest file {longest_file[0]} "
        f"({longest_file[1]} lines), longest function {longest_fn[0]} ({longest_fn[1]} lines)"
    )
    unread = sorted(
        os.path.relpath(os.path.join(dp, f), repo)
        for dp, _, names in os.walk(os.path.join(repo, src_dir))
        for f in names
        if f.endswith(".rs") and os.path.relpath(os.path.join(dp, f), repo) not in seen
    )
    if unread:  # test-only, generated, or compiled by no target: said, not checked
        print(f"{crate}: not checked (test-only, generated or declared by no target): {', '.join(unread)}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    parser.add_argument("src_dirs", nargs="*", default=DEFAULT_SRC_DIRS)
    args = parser.parse_args()
    repo = os.path.abspath(args.root)
    failures: list[str] = []
    for src_dir in args.src_dirs:
        if not os.path.isdir(os.path.join(repo, src_dir)):
            failures.append(f"FAIL {src_dir}: no such directory under {repo}")
            continue
        failures += check_crate(repo, src_dir)
    for line in failures:
        print(line)
    print(f"structure: {len(failures)} violation(s)" if failures else "structure: ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
