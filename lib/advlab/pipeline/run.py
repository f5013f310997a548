"""The pipeline runner: ``python -m advlab run STAGE [--profile smoke]`` (DVC calls it as
``bash tools/advlab run STAGE``).

Merges ``params.yaml`` (``common`` + the stage's section) with the active profile overlay,
checks every knob, executes ``notebooks/STAGE.ipynb`` with papermill into
``outputs/STAGE/STAGE.ipynb``, renders ``STAGE.html`` beside it, and exits non-zero naming the
failing cell when the notebook fails.  The notebook writes its verdicts and headline metrics to
``results/STAGE/``.  The profile comes from ``--profile``, else ``$ADVLAB_PROFILE``, else
``common.profile``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from ..paths import repo_root
from . import params as params_mod


def _kernel_name() -> str:
    """The project's kernel if installed (``make setup`` installs 'advlab'), else python3."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        return "advlab" if "advlab" in KernelSpecManager().find_kernel_specs() else "python3"
    except Exception:  # noqa: BLE001 - fall back to the interpreter's own kernel
        return "python3"


# $$display$$ before $inline$; a dollar escaped as \$ or inside `code` is not math.
_MATH = re.compile(r"(?<![\\$])\$\$(.+?)\$\$|"
                   r"(?<![\\$])\$(?!\s)((?:(?!\n\s*\n)[^$])+?)(?<!\s)\$(?!\d)", re.S)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def math_to_mathml(markdown: str) -> str:
    """``markdown`` with every ``$...$`` and ``$$...$$`` replaced by MathML, which browsers
    render with no script and no network (the exported HTML would otherwise fetch MathJax from
    a CDN and show raw LaTeX offline).  Code spans and blocks are left alone."""
    from latex2mathml.converter import convert

    def one(m):
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2), "inline")
        try:
            return convert(tex.strip(), display=display)
        except Exception:  # noqa: BLE001 - leave what latex2mathml cannot parse as written
            return m.group(0)

    out, last = [], 0
    for c in _CODE.finditer(markdown):
        out.append(_MATH.sub(one, markdown[last:c.start()]))
        out.append(c.group(0))
        last = c.end()
    out.append(_MATH.sub(one, markdown[last:]))
    return "".join(out)


def render_html(ipynb: Path) -> Path:
    """``STAGE.html`` beside the executed notebook: equations as MathML (markdown cells and
    markdown outputs), no MathJax script, so the file renders offline."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = math_to_mathml(cell.source)
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown")
            if md is not None:
                out["data"]["text/markdown"] = math_to_mathml(md)
    body, _ = HTMLExporter(mathjax_url="").from_notebook_node(nb)
    body = re.sub(r'<script[^>]*src="(?:[^"]*[Mm]ath[Jj]ax[^"]*)?"[^>]*>\s*</script>', "", body)
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


# A text progress bar as tqdm draws it: "desc:  40%|####      | 4/10 [00:01<00:02, 2.9it/s]"
_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/\d+\s*\[|^\s*\d+it \[")


def strip_progress(ipynb: Path) -> int:
    """Remove progress-bar redraws from an executed notebook's stream outputs (they are for
    the live log of `dvc repro`; in the notebook and its HTML they are noise).  Keeps every
    other line; returns how many bar lines were removed."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    removed = 0
    for cell in nb.cells:
        keep = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines = re.split(r"[\r\n]", out["text"])
                kept = [ln for ln in lines if not _BAR.search(ln)]
                removed += len(lines) - len(kept)
                text = "\n".join(ln for ln in kept if ln.strip())
                if not text:
                    continue
                out["text"] = text + "\n"
            keep.append(out)
        if "outputs" in cell:
            cell["outputs"] = keep
    nbformat.write(nb, ipynb)
    return removed


def execute(stage: str, profile: str | None = None, out_dir: str | os.PathLike | None = None,
            html: bool = True, root=None, log_output: bool = True,
            results_dir: str | os.PathLike | None = None) -> Path:
    """Execute one stage's notebook; return the executed notebook's path.

    Raises ``StageFailed`` (with the cell) if a cell raises.
    """
    import papermill as pm

    root = Path(root or repo_root())
    profile = profile or os.environ.get("ADVLAB_PROFILE") or None
    p = params_mod.resolve(stage, profile, root)
    src = root / "notebooks" / f"{stage}.ipynb"
    if not src.exists():
        raise params_mod.ParamsError(f"no notebook {src}")
    out_dir = Path(out_dir) if out_dir else root / "outputs" / stage
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{stage}.ipynb"
    p["out_dir"] = str(out_dir)
    results_dir = Path(results_dir) if results_dir else \
        (root / "results" / stage if out_dir == root / "outputs" / stage else out_dir)
    env_root = os.environ.get("ADVLAB_ROOT")
    os.environ["ADVLAB_ROOT"] = str(root)
    os.environ["ADVLAB_RESULTS_DIR"] = str(results_dir)  # the kernel inherits these
    os.environ.setdefault("ADVLAB_PROGRESS", "text")
    os.environ["ADVLAB_PIPELINE"] = "1"  # notebook.is_live() is False: no widgets
    # OpenMP threads that wait by sleeping, not spinning: beside one busy process a 2-thread
    # PGD-AT step slowed 1.49x with PASSIVE against 2.45x with the default, and was no slower
    # idle (benchmarks/load.py, benchmarks/RESULTS.md).  Read by the kernel at start-up.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        pm.execute_notebook(str(src), str(dest), parameters=p, kernel_name=_kernel_name(),
                            language="python",
                            cwd=str(root), progress_bar=False, log_output=log_output,
                            stdout_file=sys.stdout if log_output else None,
                            stderr_file=sys.stderr if log_output else None)
    except pm.PapermillExecutionError as e:
        raise StageFailed(stage, e.exec_count, e.cell_index, e.ename, e.evalue, dest,
                          _cell_source(dest, e.exec_count)) from None
    finally:
        os.environ.pop("ADVLAB_RESULTS_DIR", None)
        if env_root is None:
            os.environ.pop("ADVLAB_ROOT", None)
        else:
            os.environ["ADVLAB_ROOT"] = env_root
    strip_progress(dest)
    if html:
        render_html(dest)
    return dest


def _cell_source(ipynb: Path, exec_count: int) -> str:
    """First line of the executed cell numbered ``exec_count`` ('' if unreadable).  Looked up
    by execution count: papermill prepends an error banner cell, shifting indices."""
    try:
        import nbformat

        cell = next(c for c in nbformat.read(ipynb, as_version=4).cells
                    if c.get("execution_count") == exec_count)
        lines = cell.source.strip().splitlines()
        return lines[0] if lines else ""
    except Exception:  # noqa: BLE001 - the message is best-effort
        return ""


class StageFailed(RuntimeError):
    """A notebook cell raised; the message names the cell as numbered in the executed
    notebook (papermill's injected-parameters cell included) and quotes its first line."""

    def __init__(self, stage, exec_count, cell_index, ename, evalue, dest, source=""):
        self.stage, self.exec_count, self.cell_index = stage, exec_count, cell_index
        super().__init__(f"notebook {stage} failed in cell [{exec_count}] (cell index "
                         f"{cell_index}: {source!r}): {ename}: {evalue}\n"
                         f"  executed notebook: {dest}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m advlab run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", help="notebook name, e.g. 00_baselines")
    ap.add_argument("--profile", choices=params_mod.PROFILES, default=None)
    ap.add_argument("--out-dir", default=None,
                    help="default outputs/STAGE (results in results/STAGE); anywhere else, "
                         "the results are written beside the notebook")
    ap.add_argument("--no-html", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="do not echo cell outputs")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        dest = execute(args.stage, args.profile, args.out_dir, not args.no_html,
                       log_output=not args.quiet)
    except (params_mod.ParamsError, StageFailed) as e:
        print(f"advlab.run: {e}", file=sys.stderr)
        return 1
    print(f"advlab.run: {args.stage} done in {time.perf_counter() - t0:.0f}s -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
