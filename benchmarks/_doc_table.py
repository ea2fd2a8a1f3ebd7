"""Put a benchmark's table into a markdown page, between the page's two markers for it:
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (what lies between them is replaced)."""

from __future__ import annotations


def write_between_markers(path: str, name: str, text: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = open(path, encoding="utf-8").read()
    if start not in doc or end not in doc:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    i, j = doc.index(start) + len(start), doc.index(end)
    open(path, "w", encoding="utf-8").write(doc[:i] + "\n" + text + "\n" + doc[j:])
