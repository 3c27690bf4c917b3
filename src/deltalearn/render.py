"""Rendering primitives shared by the report and the audit: numbers as text, Markdown tables, matplotlib figures
as PNG bytes. A leaf module, so neither of those two needs to import the other."""

from __future__ import annotations

import io
import math
from typing import Any


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or isinstance(x, str):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        if x == 0:
            return "0"
        if abs(x) >= 1e5 or abs(x) < 1e-3:
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return str(x)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _md_table(t: dict) -> str:
    def cell(c):
        return (_fmt(c) if not isinstance(c, str) else c).replace("|", "\\|")

    lines = [f"**{t['title']}**", ""] if t.get("title") else []
    lines.append("| " + " | ".join(cell(c) for c in t["columns"]) + " |")
    lines.append("|" + "---|" * len(t["columns"]))
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in t["rows"]]
    return "\n".join(lines)
