"""The README's generated tables: each ``<!-- generated: NAME -->`` block filled from
the committed results."""
import os
import re

from experiments.results import read_json
from experiments.tables import PAPER_TABLE2, causes_summary, goal_summary, picked_values

README_COLUMNS = ("method", "runs", "test LL, S = 10", "test LL, S = 1000", "IOP log Z",
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
    settings and whether the goal holds (from ``table2/table2.json``), and the causes,
    one row each."""
    tables = {"freyfaces-causes": causes_summary(results)}
    path = os.path.join(results, "table2", "table2.json")
    if os.path.exists(path):
        tables["freyfaces-table2"] = columns(read_json(path)["markdown"], README_COLUMNS)
        tables["freyfaces-goal"] = goal_summary(picked_values(results),
                                                PAPER_TABLE2["freyfaces"])
    return tables


README_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end -->)", re.S)


def fill_readme(text, tables):
    """``text`` with every ``<!-- generated: NAME -->`` block holding ``tables[NAME]``."""
    def fill(m):
        if m.group(2) not in tables:
            raise ValueError(f"the README asks for table {m.group(2)!r}, which has no results")
        return m.group(1) + tables[m.group(2)] + "\n" + m.group(4)
    return README_BLOCK.sub(fill, text)
