"""python -m shufflekern {info,bench,train,distill,prune,quantize,traffic}"""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m shufflekern", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, compiled kernels, usable backends")
    sub.add_parser("bench", help="kernel and model benchmarks vs eager PyTorch and torch.compile",
                   add_help=False)
    sub.add_parser("train", help="train a teacher or a vanilla student", add_help=False)
    sub.add_parser("distill", help="distil a teacher into a student", add_help=False)
    sub.add_parser("prune", help="shuffle-aware structured pruning of a student (+ KD fine-tune)", add_help=False)
    sub.add_parser("quantize", help="INT8 PT2E quantization via torchao (+ latency, size)", add_help=False)
    sub.add_parser("traffic", help="modeled GPU memory traffic of the CUDA kernels (emulator; a model, not a "
                   "measurement)", add_help=False)
    if argv and argv[0] in ("bench", "train", "distill", "prune", "quantize", "traffic"):
        cmd, rest = argv[0], argv[1:]
        if cmd == "bench":
            from ._bench_cli import main as run
        elif cmd == "train":
            from .distill.cli import train_main as run
        elif cmd == "prune":
            from .compress.cli import prune_main as run
        elif cmd == "quantize":
            from .compress.cli import quantize_main as run
        elif cmd == "traffic":
            from .traffic import main as run
        else:
            from .distill.cli import distill_main as run
        return run(rest)
    args = parser.parse_args(argv)
    if args.cmd == "info":
        from ._info import format_info, info
        print(format_info(info()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
