"""bench/harness.py: the providers of a case are timed interleaved, round by round, and those samples are
what the report reads (the bench itself only measures; this checks the bookkeeping)."""
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import harness  # noqa: E402


class _Stats:
    def __init__(self):
        self.data = []


class FakeBenchmark:
    """The part of pytest-benchmark's fixture that harness.measure uses."""

    def __init__(self):
        self.extra_info = {}
        self.stats = type("S", (), {"stats": _Stats()})()

    def pedantic(self, target, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        import time
        for _ in range(rounds):
            args = setup() if setup else ()
            t0 = time.perf_counter()
            target(*args)
            self.stats.stats.data.append(time.perf_counter() - t0)


def _measure(calls, provider, shape="s1", mode="fwd"):
    x = torch.ones(4)

    def fn(t):
        calls.append(provider)
        return t * 2

    b = FakeBenchmark()
    harness.measure(b, op="toy", provider=provider, mode=mode, shape=shape, dtype=x.dtype, fn=fn, inputs=[x],
                    memory=False, budget_s=0.002, min_rounds=6, max_rounds=20)
    return b.extra_info


def test_case_providers_are_timed_interleaved_in_alternating_order():
    harness._pending.clear()
    calls = []
    a = _measure(calls, "A")
    b = _measure(calls, "B")
    c = _measure(calls, "C")
    assert "interleaved" not in a  # not yet: the case's other providers may follow
    before = len(calls)
    other = _measure(calls, "A", shape="s2")  # a new case: the previous one is timed now
    timed = calls[before:]
    rounds = a["rounds"]
    assert a["interleaved"] == b["interleaved"] == c["interleaved"] == 3
    assert a["rounds"] == b["rounds"] == c["rounds"] >= 6
    seq = timed[:6 * rounds]  # each provider twice a round (warm, timed); then the new case's own calls
    assert len(timed) > 6 * rounds and set(timed[6 * rounds:]) == {"A"}
    for r in range(rounds):
        expect = ["A", "A", "B", "B", "C", "C"] if r % 2 == 0 else ["C", "C", "B", "B", "A", "A"]
        assert seq[6 * r:6 * r + 6] == expect, (r, seq[6 * r:6 * r + 6])
    for info in (a, b, c):
        assert info["q20_s"] <= info["median_s"] <= info["q80_s"]
    harness.flush()  # the pending single-provider case keeps its own rounds
    assert "interleaved" not in other and other["rounds"] >= 1
    assert harness._pending == []


def _measure_ptrs(seen, provider, x, shape="s3"):
    def fn(t):
        seen.setdefault(provider, set()).add(t.data_ptr())
        return t * 2

    harness.measure(FakeBenchmark(), op="toy", provider=provider, mode="fwd", shape=shape, dtype=x.dtype, fn=fn,
                    inputs=[x], memory=False, budget_s=0.002, min_rounds=3, max_rounds=5)


def test_providers_of_a_case_read_the_same_input_memory_when_their_inputs_are_equal():
    harness._pending.clear()
    seen = {}
    _measure_ptrs(seen, "A", torch.arange(6.0).reshape(2, 3))
    _measure_ptrs(seen, "B", torch.arange(6.0).reshape(2, 3))                  # equal: A's tensor is used
    _measure_ptrs(seen, "C", torch.arange(6.0).reshape(2, 3) + 1)              # other values: its own
    _measure_ptrs(seen, "D", torch.arange(6.0).reshape(3, 2).t().contiguous())  # other layout/values: its own
    _measure_ptrs(seen, "E", torch.arange(6.0).reshape(3, 2).t())              # other strides: its own
    # the next case (it times the pending one first) never takes the previous case's tensors
    _measure_ptrs(seen, "F", torch.arange(6.0).reshape(2, 3), shape="s4")
    harness.flush()
    assert len(seen["A"]) == 1 and seen["B"] == seen["A"]
    for p in "CDEF":
        assert seen[p].isdisjoint(seen["A"]), p


def test_isolate_inductor_cache_per_isa(monkeypatch):
    """torch.compile gets a cache directory named after ATEN_CPU_CAPABILITY (or "default"); a chosen directory
    is left alone."""
    from shufflekern.testing import isolate_inductor_cache_per_isa
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    d = isolate_inductor_cache_per_isa()
    assert d.endswith("_isa_default") and os.environ["TORCHINDUCTOR_CACHE_DIR"] == d
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    d = isolate_inductor_cache_per_isa()
    assert d.endswith("_isa_avx2") and os.environ["TORCHINDUCTOR_CACHE_DIR"] == d
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/chosen")
    assert isolate_inductor_cache_per_isa() == "/tmp/chosen"
