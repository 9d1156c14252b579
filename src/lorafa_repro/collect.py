"""``python -m lorafa_repro.collect <dirs...> --out runs.csv``: one tidy CSV row per run (every result.json
under the given folders, any status): flattened config, metrics, memory, params and timing columns, plus
path, kind, status and error (the one-line reason). Unreadable result files are listed on stderr, not rows."""

from __future__ import annotations

import sys
from pathlib import Path


def collect(dirs: list[str | Path], status: str | list[str] | None = None):
    import pandas as pd

    from lorafa_repro.results import load_results

    frames, skipped = [], []
    for d in dirs:
        df = load_results(d, status=status, quiet=True)
        skipped += df.attrs.get("skipped", [])
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out.attrs["skipped"] = skipped
    return out


def main(argv: list[str] | None = None) -> int:
    from lorafa_repro.cli import ArgumentParser, check_output_path, fail, user_errors

    ap = ArgumentParser(prog="python -m lorafa_repro.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="folders searched recursively for result.json")
    ap.add_argument("--out", required=True, help="CSV file to write")
    ap.add_argument("--status", nargs="*", default=None, help="keep only these statuses (default: all)")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        fail(ap.prog, f"no such folder {missing[0]}. Fix: pass existing run folders")
    with user_errors(ap.prog):
        check_output_path(args.out, "--out")
    df = collect(args.dirs, status=args.status)
    from lorafa_repro.results import write_text_atomic

    write_text_atomic(args.out, df.to_csv(index=False))
    for path, why in df.attrs["skipped"]:
        print(f"collect: skipped {path}: {why}", file=sys.stderr)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"collect: {len(df)} runs {counts} -> {args.out}" + (f" ({len(df.attrs['skipped'])} unreadable skipped)"
                                                               if df.attrs["skipped"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
