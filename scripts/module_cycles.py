#!/usr/bin/env python3
"""Finds cycles between the top-level modules of each crate of the workspace.

A top-level module is one declared by the crate root (src/lib.rs or src/main.rs): src/x.rs or
src/x/mod.rs, with every file under src/x/. Module `a` refers to module `b` when code in `a`
names `crate::b` (in a path or a `use crate::{b, ...}` group), or an item the crate root
re-exports from `b` (`crate::Item` after `pub use b::Item;`), or climbs with `super::` up to
the crate root and names either from there. Test code is left out: modules declared under
`#[cfg(test)]`, files named `tests.rs` or `*_tests.rs`, and any item under `#[cfg(test)]`.

This reads tokens, not a syntax tree: comments and literals are skipped; macros are read as
plain tokens; `use super::*` from a top-level module names the root, not a module, and is
not counted.

Usage: scripts/module_cycles.py [-v] [crate ...]
  -v      also print every reference between modules
  crate   check only these workspace members (directory names)
Exits 1 if any crate has a cycle, 2 on a usage or reading error.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workspace_members(root):
    """The `members` of [workspace] in the root Cargo.toml."""
    path = os.path.join(root, "Cargo.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib

        return list(tomllib.loads(text)["workspace"]["members"])
    except ImportError:
        # Python before 3.11: the members list is one array of plain strings.
        m = re.search(r"^\s*members\s*=\s*\[(.*?)\]", text, re.S | re.M)
        if not m:
            raise ValueError(f"{path}: no [workspace] members")
        return re.findall(r'"([^"]+)"', m.group(1))


def tokens(text):
    """Identifiers and punctuation of Rust source with their line numbers; comments, string
    and char literals, lifetimes and numbers are dropped."""
    out = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += text[i] == "\n"
                    i += 1
        elif m := re.compile(r'(?:b|c)?r(#*)"').match(text, i):
            end = text.find('"' + m.group(1), m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            line += text.count("\n", i, end)
            i = end
        elif c == '"' or (c in "bc" and text.startswith('"', i + 1)):
            i += 1 if c == '"' else 2
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                line += text[i] == "\n" if i < n else 0
                i += 1
            i += 1
        elif c == "'" or (c == "b" and text.startswith("'", i + 1)):
            i += 1 if c == "'" else 2
            if i < n and text[i] == "\\":
                end = text.find("'", i + 2)
                i = n if end < 0 else end + 1
            elif i + 1 < n and text[i + 1] == "'":
                i += 2
            # Else a lifetime or label: its name is read as an identifier, harmlessly.
        elif c.isalpha() or c == "_":
            m = re.compile(r"(?:r#)?[A-Za-z0-9_]+").match(text, i)
            out.append((m.group(0).removeprefix("r#"), line))
            i = m.end()
        elif c.isdigit():
            # `1.5` is one number; in `0..n` or `1.max(x)` the dot is not part of it.
            i = re.compile(r"[0-9][0-9A-Za-z_]*(?:\.[0-9][0-9A-Za-z_]*)?").match(text, i).end()
        elif text.startswith("::", i):
            out.append(("::", line))
            i += 2
        else:
            out.append((c, line))
            i += 1
    return out


def read_attribute(toks, i):
    """Index past the attribute starting at toks[i] (`#` or `#!`), and whether it is a
    cfg that holds only in tests."""
    j = i + 1
    if j < len(toks) and toks[j][0] == "!":
        j += 1
    if j >= len(toks) or toks[j][0] != "[":
        return i + 1, False
    depth, k = 0, j
    while k < len(toks):
        t = toks[k][0]
        if t in "([{":
            depth += 1
        elif t in ")]}":
            depth -= 1
            if depth == 0:
                break
        k += 1
    inner = [t for t, _ in toks[j + 1 : k]]
    test_only = (
        bool(inner) and inner[0] == "cfg" and "test" in inner and "not" not in inner
    )
    return k + 1, test_only


def skip_item(toks, i):
    """Index past the item (or statement) starting at toks[i]: its `;`, or its closing
    brace; an unmatched closer ends it without being consumed."""
    depth = 0
    while i < len(toks):
        t = toks[i][0]
        if t in "([{":
            depth += 1
        elif t in ")]}":
            if depth == 0:
                return i
            depth -= 1
            if depth == 0 and t == "}":
                return i + 1
        elif t == ";" and depth == 0:
            return i + 1
        i += 1
    return i


def group_heads(toks, i):
    """The first name of each element of the `{...}` group opening at toks[i]."""
    heads, depth, expect = [], 0, True
    while i < len(toks):
        t, line = toks[i]
        if t == "{":
            depth += 1
            expect = depth == 1 or expect
        elif t == "}":
            depth -= 1
            if depth == 0:
                break
        elif t == "," and depth == 1:
            expect = True
        elif depth == 1 and expect:
            if re.match(r"[A-Za-z_]\w*$", t):
                heads.append((t, line))
            expect = False
        i += 1
    return heads


class Module:
    """A file of the crate, where it sits in the module tree."""

    def __init__(self, path, modpath, child_dir):
        self.path = path
        self.modpath = modpath
        self.child_dir = child_dir


def child_file(child_dir, name):
    for candidate in (
        os.path.join(child_dir, name + ".rs"),
        os.path.join(child_dir, name, "mod.rs"),
    ):
        if os.path.isfile(candidate):
            return candidate
    return None


def is_test_file(path):
    base = os.path.basename(path)
    return base == "tests.rs" or base.endswith("_tests.rs")


def scan(module, toks, declare, refer, reexport):
    """Walks one file: reports the non-test `mod x;` it declares, the names its paths take
    from the crate root, and (in the root) the names its `use` items bring there."""
    stack = []  # inline modules: (name, depth at which their brace closes)
    depth, i = 0, 0
    while i < len(toks):
        t, line = toks[i]
        if t == "#":
            end, test_only = read_attribute(toks, i)
            inner = i + 1 < len(toks) and toks[i + 1][0] == "!"
            if test_only and inner:
                if not stack:
                    return  # `#![cfg(test)]`: the whole file is test code.
                i = skip_to_close(toks, end)
                stack.pop()
                depth -= 1
                continue
            if test_only:
                while end < len(toks) and toks[end][0] == "#":
                    end, _ = read_attribute(toks, end)
                i = skip_item(toks, end)
                continue
            i = end
            continue
        if t == "use" and not module.modpath and not stack:
            end = skip_item(toks, i)
            reexport([tok for tok, _ in toks[i + 1 : end]])
            i = end
            continue
        if t == "mod" and i + 2 < len(toks) and re.match(r"\w+$", toks[i + 1][0]):
            name, after = toks[i + 1][0], toks[i + 2][0]
            if after == ";":
                inline = [n for n, _ in stack]
                declare(name, inline)
                i += 3
                continue
            if after == "{":
                depth += 1
                stack.append((name, depth))
                i += 3
                continue
        if t == "{":
            depth += 1
        elif t == "}":
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
        elif t == "crate" and next_is(toks, i, "::"):
            names = after_path_start(toks, i + 2)
            for name, at in names:
                refer(name, at)
        elif t == "super" and next_is(toks, i, "::"):
            ups, j = 0, i
            while toks[j][0] == "super" and next_is(toks, j, "::"):
                ups, j = ups + 1, j + 2
                if j >= len(toks):
                    break
            here = module.modpath + [n for n, _ in stack]
            if ups >= len(here):
                if ups == len(here):
                    for name, at in after_path_start(toks, j):
                        refer(name, at)
            else:
                refer(here[: len(here) - ups][0], line)
            i = j
            continue
        i += 1


def skip_to_close(toks, i):
    """Index past the brace closing the block that toks[i] is in."""
    depth = 0
    while i < len(toks):
        t = toks[i][0]
        if t in "([{":
            depth += 1
        elif t in ")]}":
            if depth == 0:
                return i + 1
            depth -= 1
        i += 1
    return i


def next_is(toks, i, value):
    return i + 1 < len(toks) and toks[i + 1][0] == value


def after_path_start(toks, i):
    """The names a path continues with at toks[i]: one name, or the heads of a group."""
    if i >= len(toks):
        return []
    t, line = toks[i]
    if t == "{":
        return group_heads(toks, i)
    if re.match(r"[A-Za-z_]\w*$", t):
        return [(t, line)]
    return []


def crate_targets(src):
    """The crate roots of one package: src/lib.rs and src/main.rs, each a crate of its own."""
    return [
        os.path.join(src, root)
        for root in ("lib.rs", "main.rs")
        if os.path.isfile(os.path.join(src, root))
    ]


def module_graph(root_file, errors):
    """The top-level modules of the crate rooted at root_file, and the references between
    them: {(from, to): [(file, line), ...]}."""
    src = os.path.dirname(root_file)
    top, edges, reexports = [], {}, {}
    work = [Module(root_file, [], src)]
    while work:
        module = work.pop()
        try:
            with open(module.path, encoding="utf-8") as f:
                toks = tokens(f.read())
        except (OSError, UnicodeDecodeError) as e:
            errors.append(f"{module.path}: {e}")
            continue

        def declare(name, inline, module=module):
            if module.modpath == [] and inline:
                return  # modules inside an inline module of the root: rare, not followed
            child_dir = os.path.join(module.child_dir, *inline)
            path = child_file(child_dir, name)
            if path is None or is_test_file(path):
                return
            if module.modpath == [] and not inline:
                top.append(name)
            base = os.path.basename(path)
            if base == "mod.rs":
                sub = os.path.dirname(path)
            else:
                sub = os.path.join(child_dir, name)
            work.append(Module(path, module.modpath + inline + [name], sub))

        def refer(name, line, module=module):
            if module.modpath:
                edges.setdefault((module.modpath[0], name), []).append(
                    (os.path.relpath(module.path, ROOT), line)
                )

        def reexport(use):
            # `use x::{A, b::C as D};` in the root: `crate::A` and `crate::D` are from x.
            while use and use[0] in ("crate", "self", "::"):
                use = use[1:]
            if len(use) < 2 or use[1] != "::":
                return
            for k, name in enumerate(use[2:], start=2):
                ends = k + 1 == len(use) or use[k + 1] in (",", "}", ";")
                if ends and re.match(r"[A-Za-z_]\w*$", name) and name != "self":
                    reexports.setdefault(name, use[0])

        scan(module, toks, declare, refer, reexport)
    modules = sorted(set(top))
    resolved = {}
    for (a, name), at in edges.items():
        b = name if name in modules else reexports.get(name)
        if a != b and a in modules and b in modules:
            resolved.setdefault((a, b), []).extend(at)
    for at in resolved.values():
        at.sort()
    return modules, resolved


def cycles(modules, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    succ = {m: sorted(b for (a, b) in edges if a == m) for m in modules}
    index, low, on, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    return sorted(found)


def where(at):
    file, line = at[0]
    more = f" (+{len(at) - 1} more)" if len(at) > 1 else ""
    return f"{file}:{line}{more}"


def main(argv):
    verbose = "-v" in argv
    wanted = [a for a in argv if a != "-v"]
    if any(a.startswith("-") for a in wanted):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        members = workspace_members(ROOT)
    except (OSError, ValueError, KeyError) as e:
        print(f"cannot read the workspace members: {e}", file=sys.stderr)
        return 2
    unknown = [w for w in wanted if w not in members]
    if unknown:
        print(f"not workspace members: {', '.join(unknown)} (members: {', '.join(members)})",
              file=sys.stderr)
        return 2
    errors, any_cycle = [], False
    for member in wanted or members:
        src = os.path.join(ROOT, member, "src")
        roots = crate_targets(src)
        if not roots:
            errors.append(f"{member}: no src/lib.rs or src/main.rs")
        for root_file in roots:
            name = member if len(roots) == 1 else f"{member} ({os.path.basename(root_file)})"
            modules, edges = module_graph(root_file, errors)
            found = cycles(modules, edges)
            any_cycle |= bool(found)
            verdict = f"{len(found)} cycle(s)" if found else "no cycles"
            print(f"{name}: {len(modules)} modules, {len(edges)} references, {verdict}")
            for component in found:
                print(f"  cycle among: {', '.join(component)}")
                for (a, b), at in sorted(edges.items()):
                    if a in component and b in component:
                        print(f"    {a} -> {b}  {where(at)}")
            if verbose:
                print("  references:")
                for (a, b), at in sorted(edges.items()):
                    print(f"    {a} -> {b}  {where(at)}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return 2
    return 1 if any_cycle else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
