"""Write dvc.yaml (and the README's "what editing a module re-runs" table) from the stage
registry (lib/advlab/pipeline/stages.py) and the import graph.

    python tools/gen_dvc.py          # rewrite both
    python tools/gen_dvc.py --check  # exit 1 if either is out of date (the tests do this)
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from advlab.pipeline.stages import readme_with_blast_radius, render_text  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    readme = ROOT / "README.md"
    wanted = {ROOT / "dvc.yaml": render_text(ROOT)}
    if readme.exists():
        wanted[readme] = readme_with_blast_radius(readme.read_text(), ROOT)
    stale = [p for p, text in wanted.items() if p.read_text() != text]
    if "--check" in argv:
        if stale:
            print(f"{', '.join(p.name for p in stale)} out of date: run "
                  "`python tools/gen_dvc.py`", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
