"""What differs between two canvas schemas, in words (for checkpoint refusals).

Works on the dict form of :meth:`CanvasSchema.to_dict` (the JSON a checkpoint stores), so it
needs no torch and reads schemas written by older files as they are.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Dict, List, Optional

__all__ = ["schema_differences", "describe_connection"]

_LAYOUT_WORDS = {"T": "canvas frames T", "spatial_shape": "canvas spatial shape", "d_model": "width d_model",
                 "t_current": "t_current", "allow_overlap": "allow_overlap"}


def describe_connection(c: Dict[str, Any]) -> str:
    """``a -> b (t_src=0, t_dst=-1, fn='linear_attention')``: the connection and its non-default fields."""
    rest = {k: v for k, v in c.items() if k not in ("src", "dst")}
    extra = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(rest.items()))
    return f"{c.get('src')!s} -> {c.get('dst')!s}" + (f" ({extra})" if extra else "")


def _value(d: Dict[str, Any], key: str) -> str:
    return json.dumps(d[key]) if key in d else "unset (default)"


def _canon(c: Dict[str, Any]) -> str:
    return json.dumps(c, sort_keys=True, separators=(",", ":"))


def _topology_differences(saved: Optional[List[dict]], current: Optional[List[dict]], a: str, b: str) -> List[str]:
    if saved is None and current is None:
        return []
    if saved is None or current is None:
        who, other = (a, b) if saved is not None else (b, a)
        return [f"{who} has a topology ({len(saved or current or [])} connections), {other} has none"]
    if not all(isinstance(c, dict) for c in list(saved) + list(current)):
        return [] if saved == current else [f"the connections differ between {a} and {b}"]
    out: List[str] = []
    s_count, c_count = Counter(map(_canon, saved)), Counter(map(_canon, current))
    only_s = [json.loads(k) for k in (s_count - c_count).elements()]
    only_c = [json.loads(k) for k in (c_count - s_count).elements()]
    for cs in list(only_s):  # same pair, other fields: name the fields that differ
        match = next((cc for cc in only_c if (cc.get("src"), cc.get("dst")) == (cs.get("src"), cs.get("dst"))), None)
        if match is None:
            continue
        only_s.remove(cs)
        only_c.remove(match)
        fields = sorted((set(cs) | set(match)) - {"src", "dst"})
        what = ", ".join(f"{k} {_value(cs, k)} in {a} but {_value(match, k)} in {b}"
                         for k in fields if cs.get(k) != match.get(k))
        out.append(f"connection {cs.get('src')} -> {cs.get('dst')}: {what}")
    out += [f"connection {describe_connection(c)} is in {a} only" for c in only_s]
    out += [f"connection {describe_connection(c)} is in {b} only" for c in only_c]
    if not out and list(map(_canon, saved)) != list(map(_canon, current)):
        out.append(f"the same connections are listed in another order in {a} and {b}")
    return out


def schema_differences(saved: Dict[str, Any], current: Dict[str, Any], a: str = "the checkpoint",
                       b: str = "the model's schema") -> List[str]:
    """Sentences naming every difference between the schema dicts ``saved`` (``a``) and
    ``current`` (``b``): canvas size and width, regions added / removed / changed (bounds,
    period, ...), connections added / removed / changed (offsets, fn, weight, fill).  Empty when
    they describe the same structure (metadata and version are not compared)."""
    out: List[str] = []
    saved, current = (d if isinstance(d, dict) else {} for d in (saved, current))
    for key, kind, word in (("layout", dict, "object"), ("regions", dict, "object"), ("topology", list, "array")):
        for who, d in ((a, saved), (b, current)):
            value = d.get(key)
            if value is not None and not isinstance(value, kind):  # not comparable part by part
                return [f"the {key!r} of {who} is a {type(value).__name__}, not a JSON {word}: not a canvas schema"]
    sl, cl = saved.get("layout") or {}, current.get("layout") or {}
    for key in sorted(set(sl) | set(cl)):
        if sl.get(key) != cl.get(key):
            out.append(f"{_LAYOUT_WORDS.get(key, key)} is {json.dumps(sl.get(key))} in {a} but "
                       f"{json.dumps(cl.get(key))} in {b}")
    sr, cr = saved.get("regions") or {}, current.get("regions") or {}
    gone = [n for n in sr if n not in cr]
    new = [n for n in cr if n not in sr]
    if gone:
        out.append(f"region(s) {gone} are in {a} only")
    if new:
        out.append(f"region(s) {new} are in {b} only")
    for name in sr:
        if name in cr and sr[name] != cr[name]:
            if not (isinstance(sr[name], dict) and isinstance(cr[name], dict)):
                out.append(f"region {name!r} differs ({a} vs {b}): {json.dumps(sr[name])} vs {json.dumps(cr[name])}")
                continue
            fields = sorted(set(sr[name]) | set(cr[name]))
            what = ", ".join(f"{k} {_value(sr[name], k)} vs {_value(cr[name], k)}"
                             for k in fields if sr[name].get(k) != cr[name].get(k))
            out.append(f"region {name!r} differs ({a} vs {b}): {what}")
    out += _topology_differences(saved.get("topology"), current.get("topology"), a, b)
    return out
