"""Running test code under the AVX2 and portable builds of the kernels (for the slow tests that check them)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_under_avx2_and_default(code):
    """Run `code` (which must print sk._C.runtime_cpu_isa() first) in a fresh interpreter under
    ATEN_CPU_CAPABILITY=avx2 and =default; assert it succeeds and ran the ISA asked for."""
    for cap, name in (("avx2", "AVX2"), ("default", "DEFAULT")):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=ROOT)
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.split()[0] == name
