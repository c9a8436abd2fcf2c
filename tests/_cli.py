"""Running `python -m shufflekern ...` in-process for the CLI tests (a subprocess costs seconds of imports)."""
import sys


def run_cli(capsys, *args):
    """(exit code, stdout + stderr) of shufflekern's CLI with these arguments."""
    from shufflekern.__main__ import main
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out + out.err
