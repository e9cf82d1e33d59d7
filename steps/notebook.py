"""Run a step cell by cell, its settings changed as an exercise asks; render steps as Markdown.

    python steps/notebook.py                       # every step in full into docs/steps/
    python steps/notebook.py step3 --set KEEP=0.5 [-- --quick]  # one step, a setting changed

A step is a `# %%` file: markdown cells (`# %% [markdown]`, comment lines) and code cells.
``execute`` runs the code cells in order in one namespace, as a notebook would, and keeps
each cell's printed output. A changed setting is an assignment inserted after the step's
settings cell (before its `ag.set_backend("numpy")` line), as a learner would edit it.
Rendering writes docs/steps/<step>.md (prose, code, output, figure) with the SHA-256 of the
step's source and of steps/checks.py, which tests/test_steps.py compares.
"""
import argparse
import ast
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOCS = os.path.join(ROOT, "docs", "steps")
SETTINGS_END = 'ag.set_backend("numpy")\n'
STEPS = sorted(name[:-3] for name in os.listdir(HERE) if re.match(r"step\d+_\w+\.py$", name))


def step_path(name):
    """steps/<name>.py, where ``name`` is a step's file name or its prefix (``step3``)."""
    matches = [s for s in STEPS if s == name or s.startswith(name + "_")]
    if len(matches) != 1:
        raise ValueError(f"no step {name!r}; the steps: {', '.join(STEPS)}")
    return os.path.join(HERE, matches[0] + ".py")


def source_hash(path):
    """SHA-256 of a step's source and of steps/checks.py: what its rendered output depends on
    beyond the library."""
    digest = hashlib.sha256()
    for part in (path, os.path.join(HERE, "checks.py")):
        with open(part, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def with_settings(source, settings):
    """``source`` with ``NAME = value`` lines after its settings cell, one per setting."""
    if source.count(SETTINGS_END) != 1:
        raise ValueError(f"the step has no single {SETTINGS_END.strip()!r} line after its "
                         "settings")
    lines = "".join(f"{name} = {value!r}\n" for name, value in settings.items())
    return source.replace(SETTINGS_END, lines + SETTINGS_END)


def cells(source):
    """[(kind, text, first line)] of a `# %%` file: kind "markdown" or "code"."""
    found, start = [], 0
    lines = source.splitlines(keepends=True)
    for i, line in enumerate(lines + ["# %%"]):
        if line.startswith("# %%") and i > start:
            text = "".join(lines[start:i])
            kind = "markdown" if lines[start].startswith("# %% [markdown]") else "code"
            found.append((kind, text, start))
            start = i
    return found


class Echo(io.StringIO):
    """Keeps what is printed and shows it as it comes."""

    def write(self, text):
        sys.__stdout__.write(text)
        sys.__stdout__.flush()
        return super().write(text)


def execute(path, settings=None, argv=(), echo=False):
    """Run the code cells of the step at ``path`` in order; [(kind, text, output)];
    ``echo``: show the output as it comes."""
    source = with_settings(open(path, encoding="utf-8").read(), settings or {})
    namespace = {"__name__": "__main__", "__file__": path}
    sys.argv = [path, *argv]
    done = []
    for kind, text, first in cells(source):
        output = Echo() if echo else io.StringIO()
        if kind == "code":
            code = compile("\n" * first + text, path, "exec")   # tracebacks: the file's lines
            with contextlib.redirect_stdout(output):
                exec(code, namespace)
        done.append((kind, text, output.getvalue()))
    return done


def run(name, settings=None, argv=()):
    """``execute`` in a fresh process (no state shared between runs): (cells, CPU seconds)."""
    command = [sys.executable, __file__, name, "--json", "--set",
               *(f"{k}={v!r}" for k, v in (settings or {}).items()), "--", *argv]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{name} {settings or ''} failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout)
    return [tuple(cell) for cell in answer["cells"]], answer["cpu"]


def output(done):
    """The printed output of a run, all cells."""
    return "".join(out for _, _, out in done)


def markdown(name, done, cpu):
    """A step's cells as Markdown: prose, code, its output, the figure it wrote."""
    path = step_path(name)
    parts = [f"<!-- rendered by `python steps/notebook.py` from steps/{name}.py, "
             f"sha256 {source_hash(path)}; do not edit -->\n\n"
             f"*The output of `python steps/{name}.py`, run in full ({cpu:.0f} CPU seconds "
             f"here). The source: [steps/{name}.py](../../steps/{name}.py).*\n\n"]
    for kind, text, out in done:
        if kind == "markdown":
            body = [re.sub(r"^# ?", "", line) for line in text.splitlines()[1:]]
            parts.append("\n".join(body).strip("\n") + "\n\n")
            continue
        title, _, code = text.partition("\n")
        title = title[len("# %%"):].strip()
        parts.append((f"**{title}**\n\n" if title else "") + f"```python\n{code.strip()}\n```\n\n")
        if out:
            parts.append(f"```text\n{out.rstrip()}\n```\n\n")
        for figure in re.findall(r"^wrote (\S+\.png)$", out, re.M):
            parts.append(f"![{name}: the figure]({os.path.basename(figure)})\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def render(names):
    """Run each step in full into docs/steps/ and write its Markdown beside its figure."""
    from autograd_lite.files import atomic_write
    os.makedirs(DOCS, exist_ok=True)
    relative = os.path.relpath(DOCS, ROOT)
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        done, cpu = run(name, argv=["--out", relative])
        target = os.path.join(DOCS, f"{name}.md")
        text = markdown(name, done, cpu)
        atomic_write(target, lambda f: f.write(text), mode="w")
        print(f"    wrote {os.path.relpath(target, ROOT)} ({cpu:.0f} CPU s)", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", nargs="?", help="run one step (e.g. step3) and print its "
                        "output; without it, render every step into docs/steps/")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="settings to change, Python literals (e.g. KEEP=0.5)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)      # after it: the step's own
    args, rest = parser.parse_args(argv[:split]), argv[split + 1:]
    settings = {}
    for item in args.set:
        name, equals, value = item.partition("=")
        if not equals or not name.isidentifier():
            parser.error(f"--set {item}: expected NAME=VALUE")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"--set {item}: {value} is not a Python literal")
    if args.step is None:
        render(STEPS)
        return 0
    try:
        path = step_path(args.step)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.process_time()
    done = execute(path, settings, rest, echo=not args.json)
    if args.json:
        print(json.dumps({"cells": done, "cpu": time.process_time() - started}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
