"""Renders a pytest-benchmark JSON of the shufflekern microbenchmarks: the long CSV, the table with the
speed-ups of shufflekern over every other provider, and one PNG plot per op.

    python bench/report.py PASS1.json [PASS2.json ...] [--out DIR]
(`python -m shufflekern bench` runs the cases and calls this.)
"""
import argparse
import csv
import json
import math
import os
import platform
import statistics
from collections import defaultdict

KEY = ("op", "mode", "shape", "layout", "dtype")
OURS = "shufflekern"


def load(paths):
    """(first pass's document, rows merged over the passes) of one or more pytest-benchmark JSONs."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    docs, rows = [], []
    for i, path in enumerate(paths):
        with open(path) as f:
            docs.append(json.load(f))
        rows += [dict(b["extra_info"], pass_index=i) for b in docs[-1]["benchmarks"]
                 if "median_s" in b.get("extra_info", {})]
    return docs[0], merge_passes(rows)


def merge_passes(rows):
    """One row per (case, provider): the median of the passes' medians (and of their quantiles), the
    rounds summed, the largest peak memory, and each pass's median (`by_pass`, for `ratio`).  The passes run
    the providers in alternating order, so a slow spell of a shared machine that hits one provider's block
    in one pass is outvoted."""
    by = defaultdict(list)
    for r in rows:
        by[tuple(r[k] for k in KEY) + (r["provider"],)].append(r)
    out = []
    for same in by.values():
        m = dict(same[0])
        for k in ("median_s", "q20_s", "q80_s"):
            m[k] = statistics.median(r[k] for r in same)
        m["rounds"] = sum(r.get("rounds", 0) for r in same)
        m["passes"] = len(same)
        m["by_pass"] = {r["pass_index"]: r["median_s"] for r in same if "pass_index" in r}
        peaks = [r["peak_bytes"] for r in same if r.get("peak_bytes") is not None]
        m["peak_bytes"] = max(peaks) if peaks else None
        out.append(m)
    return out


def machine_string(doc):
    m = doc.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw") or platform.processor() or m.get("machine", "")
    return f"{cpu}, {m.get('cpu', {}).get('count', os.cpu_count())} cores, {m.get('system', '')} {m.get('release', '')}".strip()


def write_csv(path, doc, rows, versions):
    machine = machine_string(doc)
    stamp = doc.get("datetime", "")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "provider", "mode", "shape", "layout", "dtype", "metric", "value", "machine",
                    "versions", "timestamp"])
        for r in rows:
            for metric, key, scale in (("median_ms", "median_s", 1e3), ("q20_ms", "q20_s", 1e3),
                                       ("q80_ms", "q80_s", 1e3), ("peak_mb", "peak_bytes", 1e-6)):
                if r.get(key) is None:
                    continue
                w.writerow([r["op"], r["provider"], r["mode"], r["shape"], r["layout"], r["dtype"], metric,
                            f"{r[key] * scale:.6g}", machine, versions, stamp])


def group(rows):
    cases = defaultdict(dict)
    for r in rows:
        cases[tuple(r[k] for k in KEY)][r["provider"]] = r
    return cases


def ratio(case, p):
    """Provider p's time over ours in one case: the median over the passes of the ratio measured within each
    pass (the providers of a case are timed interleaved in a pass, bench/harness.py), so a pass in which one
    provider alone ran slow moves the ratio less than it moves that provider's median; the ratio of the
    merged medians where the passes are not known."""
    a, b = case[p].get("by_pass") or {}, case[OURS].get("by_pass") or {}
    common = sorted(set(a) & set(b))
    if common:
        return statistics.median(a[i] / b[i] for i in common)
    return case[p]["median_s"] / case[OURS]["median_s"]


def speedups(cases):
    """{(op, mode, layout, dtype, other): [ratio per shape]} of other's time over ours (`ratio`)."""
    out = defaultdict(list)
    for key, provs in cases.items():
        if OURS not in provs:
            continue
        op, mode, _shape, layout, dtype = key
        for p in provs:
            if p != OURS:
                out[(op, mode, layout, dtype, p)].append(ratio(provs, p))
    return out


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def fmt_ms(r):
    return f"{r['median_s'] * 1e3:.3g}"


def table(cases):
    """Markdown table per op: median ms for each provider and shufflekern's speed-up over each."""
    lines = []
    by_op = defaultdict(list)
    for key in sorted(cases):
        by_op[key[0]].append(key)
    for op, keys in by_op.items():
        provs = []
        for k in keys:
            for p in cases[k]:
                if p not in provs:
                    provs.append(p)
        provs.sort(key=lambda p: (p != OURS, p))
        others = [p for p in provs if p != OURS]
        head = (["mode", "shape", "layout", "dtype"] + [f"{p} ms" for p in provs] + [f"x vs {p}" for p in others]
                + ["fastest"])
        if any("peak_bytes" in r for k in keys for r in cases[k].values()):
            head += [f"{p} MB" for p in provs]
        lines += [f"### {op}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k in keys:
            c = cases[k]
            cells = [k[1], k[2], k[3] or "-", k[4]]
            cells += [fmt_ms(c[p]) if p in c else "" for p in provs]
            cells += [f"{ratio(c, p):.2f}" if p in c and OURS in c else "" for p in others]
            cells.append(min(c, key=lambda p: c[p]["median_s"]))
            if len(head) > len(cells):
                cells += [f"{c[p]['peak_bytes'] / 1e6:.1f}" if p in c and c[p].get("peak_bytes") is not None
                          else "" for p in provs]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def summary(cases):
    lines = ["### Geometric-mean speed-up of shufflekern (other provider's time / ours, per pass, `ratio`)", "",
             "| op | mode | layout | dtype | vs | shapes | speed-up |", "|---|---|---|---|---|---|---|"]
    for (op, mode, layout, dtype, p), xs in sorted(speedups(cases).items()):
        lines.append(f"| {op} | {mode} | {layout or '-'} | {dtype} | {p} | {len(xs)} | {geomean(xs):.2f}x |")
    return "\n".join(lines) + "\n"


def plots(cases, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_op = defaultdict(dict)
    for (op, mode, shape, layout, dtype, p), xs in (
            ((k[0], k[1], k[2], k[3], k[4], p), ratio(c, p))
            for k, c in cases.items() if OURS in c for p in c if p != OURS):
        by_op[op][(mode, shape, layout, dtype, p)] = xs
    for op, vals in by_op.items():
        labels = sorted({k[:4] for k in vals})
        provs = sorted({k[4] for k in vals})
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(labels) * len(provs)), 4.5))
        width = 0.8 / len(provs)
        for i, p in enumerate(provs):
            ys = [vals.get(l + (p,), float("nan")) for l in labels]
            ax.bar([j + i * width for j in range(len(labels))], ys, width, label=f"vs {p}")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
        ax.set_xticklabels([" ".join(x for x in l if x) for l in labels], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("speed-up of shufflekern (x)")
        ax.set_title(f"{op}: other provider's median time / shufflekern's")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def render(json_paths, out_dir, versions=""):
    doc, rows = load(json_paths)
    os.makedirs(out_dir, exist_ok=True)
    cases = group(rows)
    csv_path = os.path.join(out_dir, "results.csv")
    write_csv(csv_path, doc, rows, versions)
    text = (f"Machine: {machine_string(doc)}; {versions}; {doc.get('datetime', '')}\n\n"
            + summary(cases) + "\n" + table(cases))
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    pngs = plots(cases, out_dir) if cases else []
    return text, csv_path, pngs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("json", nargs="+", help="one pytest-benchmark JSON per pass")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    text, *_ = render(a.json, a.out or os.path.dirname(os.path.abspath(a.json[0])))
    print(text)


if __name__ == "__main__":
    main()
