"""The steps' expected output: each check is one line "what: expected ..., got ...: ok",
followed by one indented sentence that reads it.  ``parse`` reads the lines back (the
exercise runs and the tests)."""
import math
import re

RELATIONS = {"=": lambda got, e, tol: abs(got - e) <= tol,
             "<": lambda got, e, tol: got < e + tol,
             ">": lambda got, e, tol: got > e - tol}
LINE = re.compile(r"^(?P<what>[^:\n]+): (?:expected (?P<expected>[^\n]+?), )?got "
                  r"(?P<got>[-+0-9.e]+|nan|inf|-inf)(?P<percent>%?)"
                  r"(?:: (?P<status>ok|FAIL|not checked[^\n]*))?$", re.M)
counts = {"ok": 0, "FAIL": 0}


def check(what, got, expected, tol, why, side="=", fmt=".4f", skip=False):
    """Print whether ``got`` is ``expected`` ± ``tol`` (side "="), or below (above) it,
    "<" (">"), with ``tol`` of slack; ``skip``: a full run's expectation, not checked."""
    ok = math.isfinite(got) and RELATIONS[side](got, expected, tol)
    slack = f"{tol:{fmt}}" if fmt.endswith("%") else f"{tol:.2g}"
    bound = f"{expected:{fmt}} ± {slack}" if side == "=" else (
        f"{side} {expected:{fmt}}" + (f" (tolerance {slack})" if tol else ""))
    status = "not checked in a --quick run" if skip else ("ok" if ok else "FAIL")
    if not skip:
        counts[status] += 1
    print(f"{what}: expected {bound}, got {got:{fmt}}: {status}\n    {why}")
    return ok


def report(what, got, fmt=".4f"):
    """Print a number the exercises quote, with no expectation: "what: got ..."."""
    print(f"{what}: got {got:{fmt}}")


def summary():
    """One line: how many checks held."""
    total = counts["ok"] + counts["FAIL"]
    print(f"checks: {counts['ok']} of {total} ok" + (
        "" if not counts["FAIL"] else " (see the FAIL lines above)"))


def parse(text):
    """{what: (got, status)} of every check and report line in ``text`` (status None for
    a report); a percentage comes back as a fraction."""
    found = {}
    for m in LINE.finditer(text):
        got = float(m["got"]) / (100 if m["percent"] else 1)
        found[m["what"].strip()] = (got, m["status"])
    return found
