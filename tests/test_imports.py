"""The package's imports form no cycle (read with ast; nothing is imported).  Imports inside functions count
too: deferring an import hides a cycle from the interpreter, not from the design."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parent.parent / "shufflekern"


def _modules():
    """{dotted name: path} of every .py module of the package (and its compiled extensions, path None)."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    for path in list(PKG.rglob("*.so")) + list(PKG.rglob("*.pyd")):
        parts = path.relative_to(PKG.parent).parts
        out[".".join(parts[:-1] + (path.name.split(".")[0],))] = None
    return out


def _imports(name, path, modules):
    """The package modules `name` imports, anywhere in the file."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for s in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(s, ast.Import):
            found |= {a.name for a in s.names if a.name in modules}
        elif isinstance(s, ast.ImportFrom):
            if s.level:
                base = here.split(".")
                base = base[:len(base) - (s.level - 1)]
                mod = ".".join(base + ([s.module] if s.module else []))
            else:
                mod = s.module
            subs = {f"{mod}.{a.name}" for a in s.names if f"{mod}.{a.name}" in modules}
            found |= subs
            # `from pkg import submodule` needs pkg's __init__ only if another name comes from it.
            if mod in modules and len(subs) < len(s.names):
                found.add(mod)
    found.discard(name)
    return found


def _cycles(graph):
    """Each elementary cycle found by a depth-first search (one representative per back edge)."""
    cycles, state, stack = [], {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    return cycles


def test_the_walk_sees_the_package():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items() if p is not None}
    assert "shufflekern._backend" in graph["shufflekern.functional"]
    assert "shufflekern.ops" in graph["shufflekern"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items() if p is not None}
    cycles = _cycles(graph)
    text = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"import cycles:\n{text}"
