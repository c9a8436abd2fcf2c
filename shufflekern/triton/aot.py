"""Ahead-of-time compilation of every Triton kernel variant the package launches, for real GPUs, without one.

The interpreter (TRITON_INTERPRET=1, what CI runs the kernels under) accepts code that Triton's compiler
rejects (tl.dot's dtype rules, block-size limits, layouts).  This module compiles each kernel with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`, i.e. down to PTX and a cubin through
ptxas, for sm_80 and sm_90, and reports per variant its registers, spills (local memory) and shared memory.

Which variants: `launched_variants()` does not keep a hand-written list.  It calls the package's own
launchers (shufflekern.triton.<op>) over a sweep of inputs (every dtype they accept, both memory formats,
every flag, sizes that reach every block size) with each `_..._kernel` replaced by a recorder that keeps
what Triton's JIT would specialise on: the pointer arguments' element types, the constexpr arguments and
launch options (num_warps...).  So a launcher that starts passing a new constexpr or dtype changes the list
by itself; tests/conftest.py also records every Triton launch of the test suite and fails if one is not in
this list (the sweep missed a path).

What a variant leaves out (Triton compiles these as further specialisations of the same code): integer
arguments are compiled as plain i32 (the JIT also specialises an int equal to 1 into a constant, and marks
ints/pointers divisible by 16; pointers are compiled here with that 16-byte alignment, as torch allocates),
and `UPCAST` of shuffle_conv1x1 is True only for CPU tensors (the interpreter's bf16 tl.dot), so on a GPU
it is always False.

    python -m shufflekern.triton.aot [--arch sm_80,sm_90] [--json PATH] [--jobs N]

Compilation runs in child processes without TRITON_INTERPRET (under it `triton.jit` yields interpreter
functions, which ASTSource cannot compile).  ptxas: the one in the triton wheel (triton/backends/nvidia/bin),
or $TRITON_PTXAS_PATH (e.g. /usr/local/cuda/bin/ptxas); nothing is downloaded.
"""
import contextlib
import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import time

MODULES = ("channel_shuffle", "shuffle_conv1x1", "kd_loss", "batch_norm_act")
MODULES += ("at_loss",)  # issue 14
MODULES += ("dkd_loss",)  # dkd_loss
ARCHS = ("sm_80", "sm_90")
# Launch options a launcher may pass (Triton's, not the kernel's arguments).
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _module(name):
    return importlib.import_module(f"shufflekern.triton.{name}")


def kernels(module):
    """{name: jit function} of the launched kernels of a module (helpers end otherwise than `_kernel`)."""
    import triton
    from triton.runtime.interpreter import InterpretedFunction
    kinds = (triton.runtime.JITFunction, InterpretedFunction)
    out = {}
    for k, v in vars(module).items():
        v = v.fn if isinstance(v, _Recorder) else v  # under recording(): the kernel itself
        if isinstance(v, kinds) and k.endswith("_kernel"):
            out[k] = v
    return out


def _arg_type(value):
    """Triton's type string of a non-constexpr argument, as its JIT derives it (ints/floats generic)."""
    import torch
    if isinstance(value, torch.Tensor):
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
        return native_specialize_impl(BaseBackend, value, False, True, True)[0]
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        return "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def _constexpr(value):
    import triton.language as tl
    if isinstance(value, tl.dtype):
        return f"tl.{value.name}"  # e.g. tl.fp32: decoded by tl.dtype("fp32")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"unsupported constexpr value {value!r}")


@functools.lru_cache(maxsize=None)
def _params(py_fn):
    return list(inspect.signature(py_fn).parameters.values())


def variant_of(module, name, fn, args, kwargs):
    """The variant (a JSON-able dict) of one launch `fn[grid](*args, **kwargs)`."""
    params = _params(fn.fn)
    bound = dict(zip([p.name for p in params], args))
    options = {}
    for k, v in kwargs.items():
        if k in _OPTIONS:
            options[k] = v
        else:
            bound[k] = v
    signature, constexprs = {}, {}
    for p in params:
        if p.name not in bound:
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"{module}.{name}: argument {p.name} not passed")
            bound[p.name] = p.default
        if "constexpr" in str(p.annotation):
            v = bound[p.name]
            if p.name == "UPCAST":
                v = False  # True only for CPU tensors (the interpreter's bf16 tl.dot); on a GPU: False
            signature[p.name] = "constexpr"
            constexprs[p.name] = _constexpr(v)
        else:
            signature[p.name] = _arg_type(bound[p.name])
    return {"module": module, "kernel": name, "signature": signature, "constexprs": constexprs,
            "options": options}


def variant_key(v):
    return json.dumps([v["module"], v["kernel"], v["signature"], v["constexprs"], v["options"]], sort_keys=True)


class _Recorder:
    """Stands in for a kernel: `rec[grid](*args, **kw)` records the variant, then runs the kernel if `run`."""

    def __init__(self, module, name, fn, sink, run):
        self.module, self.name, self.fn, self.sink, self.run = module, name, fn, sink, run

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink(variant_of(self.module, self.name, self.fn, args, kwargs))
            if self.run:
                return self.fn[grid](*args, **kwargs)
        return launch

    def __getattr__(self, attr):  # anything else (arg_names, fn, ...) is the kernel's
        return getattr(self.fn, attr)


@contextlib.contextmanager
def recording(sink, run=True):
    """Within the block every launch of a shufflekern Triton kernel calls sink(variant) (and runs if `run`)."""
    saved = []
    try:
        for m in MODULES:
            mod = _module(m)
            for name, fn in kernels(mod).items():
                saved.append((mod, name, getattr(mod, name)))  # a kernel, or an outer recording's recorder
                setattr(mod, name, _Recorder(m, name, fn, sink, run))
        yield
    finally:
        for mod, name, obj in saved:
            setattr(mod, name, obj)


# ---- the sweep over the launchers ------------------------------------------------------------------------
def _sweep():
    """Calls every launcher with every input class that changes what it launches (the kernels are not run)."""
    import torch
    cl = torch.channels_last
    floats = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    fmts = (torch.contiguous_format, cl)

    cs = _module("channel_shuffle")
    # channel_shuffle moves any non-complex dtype (bool as uint8).
    for dt in floats + (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.uint16,
                        torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2):
        for fmt in fmts:
            cs.channel_shuffle(torch.zeros(2, 4, 3, 3).to(dt).contiguous(memory_format=fmt), 2)

    sc = _module("shuffle_conv1x1")
    # Block sizes: _block(n, cap) = clamp(next_pow2(n), 16, cap): 8 -> 16, 32 -> 32, 64 -> 64 (cap 64).
    for dt in sc._DTYPES:
        for cg in (8, 32, 64):
            for mg in (8, 32, 64):
                for fmt in fmts:
                    x = torch.zeros(1, 2 * cg, 2, 2, dtype=dt).contiguous(memory_format=fmt)
                    w = torch.zeros(2 * mg, cg, 1, 1, dtype=dt)
                    gy = torch.zeros(1, 2 * mg, 2, 2, dtype=dt).contiguous(memory_format=fmt)
                    for b in (None, torch.zeros(2 * mg, dtype=dt)):
                        sc.shuffle_conv1x1(x, w, b, 2, 2)
                    sc.shuffle_conv1x1_grad_input(gy, w, 2, 2)
                    sc.shuffle_conv1x1_grad_weight(gy, x, 2, 2)

    kd = _module("kd_loss")
    # BLOCK = min(next_pow2(C), 1024): C = 1, 2, 3, 5, ... 1025 reach 1, 2, 4, ... 1024.
    for dt in floats:
        for c in (1, 2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025):
            s = torch.zeros(2, c, dtype=dt)
            for target, temperature, alpha in ((None, 2.0, 1.0), (torch.zeros(2, dtype=torch.int64), 2.0, 1.0),
                                               (torch.zeros(2, dtype=torch.int32), 1.0, 0.5),
                                               (torch.zeros(2, dtype=torch.int64), 2.0, 0.5)):
                for gs in (False, True):
                    for gt in (False, True):
                        for reduction in (0, 1):
                            kd.kd_loss_forward(s, s, target, temperature, alpha, -100, reduction, gs, gt)

    # --- dkd_loss (begin): BLOCK = min(next_pow2(C), 1024), C >= 2 ---
    dkd = _module("dkd_loss")
    for dt in floats:
        for c in (2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025):
            s = torch.zeros(2, c, dtype=dt)
            for gs in (False, True):
                for gt in (False, True):
                    dkd.dkd_loss_forward(s, s, torch.zeros(2, dtype=torch.int64), 4.0, 1.0, 8.0, -100, 3, gs, gt)
    # --- dkd_loss (end) ---

    bn = _module("batch_norm_act")
    for dt in floats:
        for fmt in fmts:
            x = torch.ones(2, 3, 2, 2, dtype=dt).contiguous(memory_format=fmt)
            w, b = torch.ones(3, dtype=dt), torch.zeros(3, dtype=dt)
            rm, rv = torch.zeros(3, dtype=dt), torch.ones(3, dtype=dt)
            for r in (None, torch.zeros_like(x)):
                for relu in (False, True):
                    for training in (False, True):
                        bn.batch_norm_act(x, w, b, r, rm, rv, training, 1e-5, relu)
                        for mask in ((True, True, True, True), (True, False, False, False),
                                     (False, True, False, False), (False, False, True, True)):
                            bn.batch_norm_act_backward(x, x, w, b, r, rm, rv, training, 1e-5, relu, mask)

    # ---- at_loss (issue 14): block sizes are fixed; the variants are the dtypes, formats and output masks
    at = _module("at_loss")
    for dt in floats:
        for fmt in fmts:
            fs = torch.ones(2, 3, 2, 2, dtype=dt).contiguous(memory_format=fmt)
            ft = torch.ones(2, 5, 2, 2, dtype=dt)
            loss, qs, qt = at.at_loss(fs, ft)
            for mask in ((True, True), (True, False), (False, True)):
                at.at_loss_backward(loss, fs, ft, qs, qt, mask)
    # ---- end at_loss


def launched_variants(select="all"):
    """Every distinct variant that the launchers launch over the sweep, in a stable order.

    select="cover": a subset in which, for every kernel and every pointer-dtype signature, each constexpr
    takes each of its values at least once (greedy): the quick check; "all": every variant."""
    seen = {}
    with recording(lambda v: seen.setdefault(variant_key(v), v), run=False):
        _sweep()
    variants = [seen[k] for k in sorted(seen)]
    if select == "all":
        return variants
    if select != "cover":
        raise ValueError(f"select must be 'all' or 'cover', got {select!r}")

    def facts(v):
        sig = json.dumps(v["signature"], sort_keys=True)
        return {(v["module"], v["kernel"], sig, k, json.dumps(c)) for k, c in v["constexprs"].items()} | \
            {(v["module"], v["kernel"], sig)}
    todo = set().union(*(facts(v) for v in variants)) if variants else set()
    chosen = []
    while todo:
        best = max(variants, key=lambda v: len(facts(v) & todo))
        chosen.append(best)
        todo -= facts(best)
    return sorted(chosen, key=variant_key)


# ---- compilation ---------------------------------------------------------------------------------------
def _tool(name):
    import triton.backends.nvidia as nv
    env = os.environ.get(f"TRITON_{name.upper()}_PATH")
    return env or os.path.join(os.path.dirname(nv.__file__), "bin", name)


def ptxas_info():
    """(path, version line) of the ptxas Triton uses."""
    from triton import knobs
    tool = knobs.nvidia.ptxas
    return tool.path, tool.version


def _resource_usage(cubin, name):
    """REG / SHARED / LOCAL of the function `name` in a cubin, from cuobjdump --dump-resource-usage."""
    import re
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"Function " + re.escape(name) + r":\s*\n\s*(.*)", out)
    fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", m.group(1))) if m else {}
    return {k: int(v) for k, v in fields.items()}


def _compile_one(v, arch):
    import triton
    import triton.language as tl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler.compiler import ASTSource
    fn = kernels(_module(v["module"]))[v["kernel"]]
    names = list(v["signature"])
    constexprs = {k: tl.dtype(c[3:]) if isinstance(c, str) and c.startswith("tl.") else c
                  for k, c in v["constexprs"].items()}
    attrs = {(names.index(k),): BaseBackend.parse_attr("D") for k, t in v["signature"].items() if t.startswith("*")}
    src = ASTSource(fn, dict(v["signature"]), constexprs=constexprs, attrs=attrs)
    cc = int(arch.removeprefix("sm_"))
    t0 = time.perf_counter()
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(v["options"]))
    seconds = time.perf_counter() - t0
    res = _resource_usage(k.asm["cubin"], k.metadata.name)
    return {"n_regs": res.get("REG"), "n_spills": res.get("LOCAL"), "stack": res.get("STACK"),
            "shared": k.metadata.shared, "num_warps": k.metadata.num_warps, "ptx": bool(k.asm.get("ptx")),
            "cubin": bool(k.asm.get("cubin")), "ptx_bytes": len(k.asm.get("ptx", "")),
            "cubin_bytes": len(k.asm.get("cubin", b"")), "seconds": round(seconds, 3), "error": None}


def _describe(v):
    consts = ",".join(f"{k}={c}" for k, c in v["constexprs"].items())
    ptrs = ",".join(f"{k}:{t[1:]}" for k, t in v["signature"].items() if t.startswith("*"))
    opts = "".join(f",{k}={o}" for k, o in v["options"].items())
    return f"{consts}{opts} | {ptrs}"


def _worker(jobs):
    """Compiles [(variant, arch)] in this process; one result dict per job."""
    out = []
    for i, v, arch in jobs:
        row = {"index": i, "name": v["kernel"], "module": v["module"], "arch": arch, "variant": _describe(v),
               "constexprs": v["constexprs"], "signature": v["signature"]}
        try:
            row.update(_compile_one(v, arch))
        except Exception as e:  # a kernel that does not compile is a result, not a crash of the report
            msg = f"{type(e).__name__}: {e}"
            row.update({"n_regs": None, "n_spills": None, "shared": None, "ptx": False, "cubin": False,
                        "error": msg[:4000]})
        out.append(row)
    return out


def compile_all(archs=ARCHS, variants=None, jobs=None, cache_dir=None, timeout=3600, select="all"):
    """Compiles every launched variant (or `variants`) for every arch in child processes without
    TRITON_INTERPRET.  Returns one dict per (variant, arch): name, module, arch, variant, constexprs,
    signature, n_regs, n_spills (local memory bytes, what Triton reports as n_spills), stack, shared (bytes),
    num_warps, ptx, cubin (produced), seconds, error (None, or the compiler's message)."""
    archs = tuple(a if a.startswith("sm_") else f"sm_{a}" for a in archs)
    if variants is None:
        variants = launched_variants(select)
    work = [(i, v, a) for i, (v, a) in enumerate((v, a) for v in variants for a in archs)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work) or 1))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    if cache_dir:
        env["TRITON_CACHE_DIR"] = cache_dir
    procs = []
    for i in range(jobs):
        chunk = work[i::jobs]
        p = subprocess.Popen([sys.executable, "-m", "shufflekern.triton.aot", "--worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        procs.append((p, chunk))
    results = []
    for p, chunk in procs:
        out, err = p.communicate(json.dumps(chunk), timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"triton aot worker failed ({p.returncode}):\n{err[-4000:]}")
        results += json.loads(out.strip().splitlines()[-1])
    results.sort(key=lambda r: r.pop("index"))
    return results


def table(results):
    """A markdown table: one row per kernel and arch with the variants' register / spill / shared ranges."""
    from collections import defaultdict
    by = defaultdict(list)
    for r in results:
        by[(r["module"], r["name"], r["arch"])].append(r)
    lines = ["| kernel | arch | variants | failed | registers | spills (bytes) | shared (bytes) |",
             "| --- | --- | ---: | ---: | --- | --- | --- |"]

    def rng(rows, k):
        vals = [r[k] for r in rows if r.get(k) is not None]
        return "-" if not vals else (f"{min(vals)}" if min(vals) == max(vals) else f"{min(vals)}-{max(vals)}")
    for (m, n, a), rows in sorted(by.items()):
        bad = sum(1 for r in rows if r["error"])
        lines.append(f"| {m}.{n} | {a} | {len(rows)} | {bad} | {rng(rows, 'n_regs')} | {rng(rows, 'n_spills')} | "
                     f"{rng(rows, 'shared')} |")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m shufflekern.triton.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default=",".join(ARCHS), help="comma-separated, default sm_80,sm_90")
    ap.add_argument("--json", default=None, help="write the per-variant results here")
    ap.add_argument("--jobs", type=int, default=None, help="compiler processes (default: cores)")
    ap.add_argument("--list", action="store_true", help="print the launched variants and exit")
    ap.add_argument("--select", default="all", choices=("all", "cover"),
                    help="all: every launched variant; cover: each constexpr value of each kernel and dtype once")
    a = ap.parse_args(argv)
    if a.worker:
        jobs = json.loads(sys.stdin.read())
        res = _worker(jobs)
        sys.stdout.write("\n" + json.dumps(res) + "\n")
        return 0
    if a.list:
        for v in launched_variants(a.select):
            print(f"{v['module']}.{v['kernel']}: {_describe(v)}")
        return 0
    t0 = time.time()
    res = compile_all(archs=a.arch.split(","), jobs=a.jobs, select=a.select)
    print(table(res))
    bad = [r for r in res if r["error"]]
    for r in bad:
        print(f"\nFAILED {r['module']}.{r['name']} {r['arch']} [{r['variant']}]:\n{r['error']}")
    print(f"\n{len(res)} compiled, {len(bad)} failed, {time.time() - t0:.0f} s (ptxas {ptxas_info()[0]})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
