"""The README's generated tables: each ``<!-- generated: NAME -->`` block filled from
the committed results."""
import os
import re

from experiments.results import read_json
from experiments.tables import (
    PAPER_TABLE2,
    PICKED,
    causes_summary,
    goal_summary,
    listed_paths,
    picked_values,
    table,
)

README_COLUMNS = ("method", "runs", "test LL, S = 10", "test LL, S = 1000",
                  "IOP normalised, S = 10", "IOP normalised, S = 1000", "IOP log Ẑ (AIS)",
                  "paper (S = 10)", "ours − paper, S = 10")


def columns(markdown, names):
    """The columns of a markdown table whose header is in ``names``, in the table's order."""
    rows = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in markdown.splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name in names]
    return "\n".join("|" + "---|" * len(keep) if j == 1 else
                     "| " + " | ".join(row[i] for i in keep) + " |"
                     for j, row in enumerate(rows))


def readme_tables(results):
    """The README's generated tables by name: FreyFaces's Table 2 row at the selected
    settings and whether the goal holds (from the runs that ``PICKED`` lists),
    and the causes, one row each."""
    tables = {"freyfaces-causes": causes_summary(results)}
    path = os.path.join(results, PICKED)
    if os.path.exists(path):  # the table made again from the result files it lists
        listed = {p: read_json(p) for p in listed_paths(path)}
        tables["freyfaces-table2"] = columns(table(listed), README_COLUMNS)
        tables["freyfaces-goal"] = goal_summary(picked_values(results),
                                                PAPER_TABLE2["freyfaces"])
        normalized = picked_values(results, normalized=True)
        if "iop" in normalized:
            tables["freyfaces-goal-normalized"] = goal_summary(normalized,
                                                               PAPER_TABLE2["freyfaces"])
    return tables


README_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end -->)", re.S)
MARKER = re.compile(r"<!-- (?:generated: ([\w-]+)|end) -->")


def check_markers(text):
    """The names of ``text``'s generated blocks, in order; a ValueError naming the block
    unless each has exactly one start marker followed by exactly one end marker (a
    missing end would make the block swallow the text up to the next block's end)."""
    names, open_block = [], None
    for m in MARKER.finditer(text):
        name = m.group(1)
        if name is None and open_block is None:
            raise ValueError("an <!-- end --> marker " + (f"after block {names[-1]!r} "
                             if names else "") + "closes no <!-- generated: NAME --> block")
        if name is not None and open_block is not None:
            raise ValueError(f"block {open_block!r} has no <!-- end --> marker before the "
                             f"next block {name!r}")
        if name is not None and name in names:
            raise ValueError(f"block {name!r} starts twice")
        if name is not None and not text.startswith("\n", m.end()):
            raise ValueError(f"block {name!r}: its start marker must end its line")
        if name is not None:
            names.append(name)
        open_block = name
    if open_block is not None:
        raise ValueError(f"block {open_block!r} has no <!-- end --> marker")
    if not names:
        raise ValueError("it has no <!-- generated: NAME --> ... <!-- end --> block")
    return names


def table_rows(block):
    """The lines of a generated block that hold data: table rows and list items."""
    return [line for line in block.splitlines() if line.startswith(("|", "- "))]


RUN_COUNTS = re.compile(r"(\d+) → (\d+) runs")


def cells(block):
    """The rows of the markdown table in ``block``, each a list of its stripped cells."""
    return [[c.strip() for c in line.strip()[1:-1].split("|")]
            for line in block.splitlines() if line.startswith("|")]


def runs_behind(block):
    """The runs behind each cell of a generated table, by (its row's first cell, its
    column): the number of a ``runs`` column, or the counts of each "N → M runs"."""
    rows = cells(block)
    counts = {}
    for row in rows[2:]:
        for column, cell in zip(rows[0][1:], row[1:]):
            found = ((int(cell),) if column == "runs" and cell.isdigit() else
                     tuple(int(n) for pair in RUN_COUNTS.findall(cell) for n in pair))
            if found:
                counts[row[0], column] = found
    return counts


def fewer_runs(old, new):
    """The cells of the block ``old`` that the block ``new`` computes from fewer runs
    (a result file missing), as "row (column)"; a row that ``new`` lacks is the row
    count's to refuse."""
    now, rows = runs_behind(new), {row[0] for row in cells(new)[2:]}
    return [f"{row[:50]} ({column})" for (row, column), counts in runs_behind(old).items()
            if row in rows and (len(now.get((row, column), ())) < len(counts)
                                or any(n < c for n, c in zip(now[row, column], counts)))]


def fill_readme(text, tables, allow_fewer_rows=False):
    """``text`` with every ``<!-- generated: NAME -->`` block holding ``tables[NAME]``.
    Refused (a ValueError naming the block): markers that do not pair up, a block
    without results, and a block that would lose rows, or compute a cell from fewer
    runs (results missing from the folder), unless ``allow_fewer_rows``."""
    check_markers(text)

    def fill(m):
        name = m.group(2)
        if name not in tables:
            raise ValueError(f"the README asks for table {name!r}, which has no results")
        old, new = table_rows(m.group(3)), table_rows(tables[name])
        if len(new) < len(old) and not allow_fewer_rows:
            def first_cell(row):
                return row.strip("|- ").split("|")[0].strip()[:50]
            lost = [first_cell(row) for row in old
                    if first_cell(row) not in map(first_cell, new)]
            raise ValueError(f"block {name!r} would shrink from {len(old)} to {len(new)} rows: "
                             "the results folder lacks the results of "
                             + (f"{'; '.join(lost[:4])}" if lost else "some rows")
                             + " (use --allow-fewer-rows if that is meant)")
        fewer = [] if allow_fewer_rows else fewer_runs(m.group(3), tables[name])
        if fewer:
            raise ValueError(f"block {name!r} would compute {'; '.join(fewer[:4])} from fewer "
                             "runs: the results folder lacks some of their result files (use "
                             "--allow-fewer-rows if that is meant)")
        return m.group(1) + tables[name] + "\n" + m.group(4)
    return README_BLOCK.sub(fill, text)
