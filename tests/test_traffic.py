"""The modeled memory traffic (shufflekern/traffic.py, the emulator's traffic model): checks that the model
counts what it claims on cases whose answer is known, and that `python -m shufflekern traffic` runs."""
import json
import os
import subprocess
import sys

import torch

import shufflekern as sk
from shufflekern import traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nchw_shuffle_moves_exactly_its_bytes():
    x = torch.randn(2, 64, 16, 16)  # planes of 1 KiB: every warp request is whole sectors
    _, log = traffic.emulated_traffic(lambda: sk.channel_shuffle(x, 4))
    tot = traffic.summarize(log)
    assert tot["kernels"] == ["_channel_shuffle_kernel"]
    assert tot["requested"] == tot["moved"] == 2 * x.numel() * 4


def test_uncoalesced_gather_costs_sectors():
    """A 1x1 conv tile that reads 16 channels of one pixel per warp in NCHW would move 8x its bytes; the
    kernels' loads run along pixels instead, so the sector efficiency of the forward is high."""
    x = torch.randn(2, 48, 16, 16)
    w = torch.randn(48, 16, 1, 1)
    _, log = traffic.emulated_traffic(lambda: sk.shuffle_conv1x1(x, w, groups=3))
    tot = traffic.summarize(log)
    assert 0.9 <= tot["requested"] / tot["moved"] <= 1.0


def test_sampling_scales_to_the_grid():
    s, t = torch.randn(4096, 10), torch.randn(4096, 10)
    y = torch.randint(0, 10, (4096,))
    full = traffic.summarize(traffic.emulated_traffic(lambda: sk.kd_loss(s.requires_grad_(), t, y))[1])
    part = traffic.summarize(traffic.emulated_traffic(lambda: sk.kd_loss(s.requires_grad_(), t, y), 4)[1])
    assert abs(part["moved"] / full["moved"] - 1) < 0.05


def test_eager_bytes_counts_inputs_and_outputs_not_views():
    a, b = torch.randn(1000), torch.randn(1000)
    assert traffic.eager_bytes(lambda: (a + b).view(10, 100).t()) == 3 * 4000


def test_cli_writes_json(tmp_path):
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "shufflekern", "traffic", "--ops", "channel_shuffle", "--no-progress",
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert {r["mode"] for r in rows} == {"fwd", "bwd"}
    for row in rows:
        for key in ("op", "case", "bytes_min", "bytes_moved", "sector_efficiency", "eager_bytes", "h100_us_model"):
            assert key in row
        assert row["sector_efficiency"] >= 0.9 and row["bytes_moved"] <= 1.15 * row["bytes_min"]
