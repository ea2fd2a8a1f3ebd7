"""Small type checks shared by the schema dataclasses (pure Python)."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import ItemsView, KeysView, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Iterable, Optional

from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, did_you_mean


def is_int(value: Any) -> bool:
    """True for real integers (``bool`` is not accepted as an integer)."""
    return isinstance(value, int) and not isinstance(value, bool) or _is_numpy_int(value)


def _is_numpy_int(value: Any) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__.startswith(("int", "uint"))


def as_int(value: Any, what: str) -> int:
    if not is_int(value):
        raise CanvasTypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_float(value: Any, what: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numpy_number(value):
        raise CanvasTypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    try:
        f = float(value)
    except OverflowError:  # an int past the largest float (10**400)
        raise SchemaError(f"{what} must be finite, got an integer of about {int(int(value).bit_length() * 0.30103)} "
                          "digits, past the largest float (about 1.8e308)") from None
    if not math.isfinite(f):
        raise SchemaError(f"{what} must be finite, got {f}")
    if positive and f <= 0:
        raise SchemaError(f"{what} must be > 0, got {f}")
    if nonneg and f < 0:
        raise SchemaError(f"{what} must be >= 0, got {f}")
    return f


def _is_numpy_number(value: Any) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__.startswith(("int", "uint", "float"))


def as_str(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CanvasTypeError(f"{what} must be a string, got {value!r} ({type(value).__name__})")
    if not allow_empty and not value.strip():
        raise SchemaError(f"{what} must be a non-empty string")
    return value


def as_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CanvasTypeError(f"{what} must be True or False, got {value!r}")
    return value


def as_choice(value: Any, choices: Iterable[str], what: str, error: type) -> str:
    """``value`` when it is one of the strings ``choices``.  Anything that is not a string (a
    list, a dict, an array: possibly unhashable) is a ``CanvasTypeError`` listing the choices;
    a string outside them is ``error`` with a did-you-mean."""
    known = sorted(choices)
    if not isinstance(value, str):
        raise CanvasTypeError(
            f"{what} must be one of {known} (a single string), got {value!r:.80} ({type(value).__name__})")
    if value not in known:
        raise error(f"{what} must be one of {known}, got {value!r}" + did_you_mean(value, known))
    return value


def check_ordered(value: Any, what: str, example: str, *, allow_mapping: bool = False) -> None:
    """Refuse a collection that cannot stand for an ordered sequence argument.

    A set (or frozenset) has no defined order: ``tuple({3, 0})`` may come out either way, and
    for strings it changes from one process to the next.  A mapping iterates over its keys
    only, which is never what a bounds tuple or a shape means (``allow_mapping`` accepts it
    where a list of names is wanted, e.g. ``layout.regions``).  Dict key and item views keep
    their dict's order and pass.  Raises ``CanvasTypeError`` naming ``what`` and showing
    ``example``; any other value is left to the caller's own checks.
    """
    if isinstance(value, Mapping):
        if allow_mapping:
            return
        raise CanvasTypeError(
            f"{what} must be an ordered sequence such as {example}, got a {type(value).__name__} "
            f"{value!r:.80}: iterating a mapping yields only its keys; pass a tuple or a list")
    if isinstance(value, AbstractSet) and not isinstance(value, (KeysView, ItemsView)):
        raise CanvasTypeError(
            f"{what} must be an ordered sequence such as {example}, got a {type(value).__name__} "
            f"{value!r:.80}: a set has no defined order, so its entries could come out in any order; "
            "pass a tuple or a list (sorted(...) if sorted order is what you mean)")


# --- closed vocabularies shared by the schema and program layers ---------------------------------
#: What kind of state a region holds (``RegionSpec.family`` / ``Field.family``).
REGION_FAMILIES = frozenset({"observation", "state", "memory", "residual", "action"})
#: Semantic intent of a connection (``Connection.operator`` / ``ConnectionProgram.operator``).
OPERATORS = frozenset({
    "attend", "observe", "predict", "integrate", "write", "retrieve", "act", "intervene",
    "emit_residual", "correct", "compress", "bind",
})


def osa_distance(a: str, b: str) -> int:
    """Edit distance counting an adjacent transposition as one edit."""
    prev2: list = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def looks_like_typo(name: str, known) -> "str | None":
    """The known name that ``name`` (not itself known) is within a small edit distance of."""
    if name in known:
        return None
    low = name.lower()
    for k in sorted(known):
        if k.lower() == low or osa_distance(low, k) <= max(1, len(k) // 5):
            return k
    return None


def check_family_name(value: Any, where: str, error: type) -> str:
    """A region family: a built-in one, or a custom name that does not look like a misspelling
    of a built-in one (``error`` is raised, with a did-you-mean, when it does)."""
    if not isinstance(value, str) or not value.strip():
        raise CanvasTypeError(
            f"{where}: family must be a non-empty string such as {sorted(REGION_FAMILIES)}; got {value!r}")
    typo = looks_like_typo(value, REGION_FAMILIES)
    if typo is not None:
        raise error(
            f"{where}: unknown family {value!r}. Did you mean {typo!r}? Built-in families are "
            f"{sorted(REGION_FAMILIES)}; custom family names are allowed but must not look like a "
            "misspelling of a built-in one (pick a clearly different name, e.g. prefix it).")
    return value


# --- naming the region a spec was written for ----------------------------------------------------
_KEY_BEFORE = None


def caller_dict_key(constructor: str = "__init__") -> "str | None":
    """The key a value is being written under, when the first caller outside canvas-core is
    itself evaluating ``{"name": Spec(...)}`` or ``name=Spec(...)`` (read from its source at the
    exact call position, Python 3.11+; the frame it called must be the spec's ``constructor``,
    so a canvas-core function in between, e.g. ``CanvasSchema.from_dict``, gives None). None when
    that cannot be told. Used only to name the region in an error raised while a ``RegionSpec``
    is built, before any layout knows its name."""
    import linecache
    import re
    import sys

    global _KEY_BEFORE
    if _KEY_BEFORE is None:
        _KEY_BEFORE = re.compile(r"""(?:(["'])((?:(?!\1).){1,200})\1\s*:|[(,]\s*([A-Za-z_]\w*)\s*=)\s*$""", re.S)
    try:
        f = sys._getframe(1)
        below = None
        while f is not None and str(f.f_globals.get("__name__", "")).startswith(("canvas_core.", "dataclasses")):
            below, f = f, f.f_back
        if f is None or below is None or below.f_code.co_name != constructor:
            return None
        positions = list(f.f_code.co_positions())
        lineno, _, col, _ = positions[f.f_lasti // 2]
        if lineno is None or col is None:
            return None
        lines = linecache.getlines(f.f_code.co_filename, f.f_globals)
        if not lines or lineno > len(lines):
            return None
        before = "".join(lines[max(0, lineno - 4):lineno - 1]) + lines[lineno - 1].encode()[:col].decode(errors="ignore")
    except Exception:  # introspection is best effort: never mask the real error
        return None
    m = _KEY_BEFORE.search(before)
    if m is None:
        return None
    return m.group(2) if m.group(2) is not None else m.group(3)


#: Unicode categories refused in a name: controls, format characters (zero-width spaces and joiners,
#: bidi overrides, the BOM, soft hyphens), surrogates and line / paragraph separators
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: letters and marks that draw nothing (Hangul fillers, combining grapheme joiner, Khmer inherent vowels)
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5")
#: variation selectors: kept in a name (emoji such as '\u2764\ufe0f' need them) but not told apart
_VARIATION = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef\u180b-\u180d\u180f]")


def check_name(name: Any, what: str, error: type = RegionError) -> str:
    """``name`` when it can serve as a region (or field) name, the one rule every place that takes
    a name applies: a non-empty string of visible text without spaces at either end.  Refused,
    with ``error``: control and format characters (``'\\x00'``, ``'\\u200b'``, ``'\\u202e'``,
    ``'\\ufeff'``, ...), lone surrogates, line separators, any space but U+0020 and the letters
    that draw nothing; such a name prints like another one.  Letters, digits, marks, punctuation
    and symbols of every script pass (``'café'``, ``'カメラ'``, ``'m²'``, ``'🤖'``)."""
    if not isinstance(name, str):
        raise CanvasTypeError(f"{what} must be a non-empty string, got {name!r} ({type(name).__name__})")
    if not name.strip():
        raise error(f"{what} must be a non-empty string, got {name!r}; give the region a name")
    bad = None if name.isascii() and name.isprintable() else _hidden_char(str(name))
    if bad is not None and unicodedata.category(bad) == "Cs":
        raise error(f"{what} {name!r} is not valid Unicode text (it holds a lone surrogate, e.g. from bytes "
                    "decoded with errors='surrogateescape'); rename it")
    if bad is not None:
        label = unicodedata.name(bad, f"category {unicodedata.category(bad)}")
        raise error(f"{what} {name!r} holds the invisible or control character {ascii(bad)} ({label}), so it "
                    "prints like another name; remove it (names may hold letters, digits, marks, punctuation, "
                    "symbols and plain spaces, of any script; zero width (non-)joiners only between two non-ASCII "
                    "letters or marks, after a virama, or after an emoji before an emoji or non-ASCII symbol)")
    if name[0] == " " or name[-1] == " ":
        raise error(f"{what} {name!r} starts or ends with a space, so it prints like {name.strip(' ')!r}; "
                    "remove the space")
    return name


@functools.lru_cache(maxsize=4096)  # a topology names each region once per connection
def _hidden_char(name: str) -> Optional[str]:
    """The first character of ``name`` that :func:`check_name` refuses, or None."""
    # isprintable() is False for every character refused here but the blank letters
    if name.isprintable() and _BLANK_LETTERS.isdisjoint(name):
        return None
    return next((c for i, c in enumerate(name) if (unicodedata.category(c) in _HIDDEN_CATEGORIES
                 or c in _BLANK_LETTERS or (c.isspace() and c != " ")) and not _joined(name, i)), None)


_SKIN_TONES = "\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff"


def _joined(name: str, i: int) -> bool:
    """Whether the format character ``name[i]`` belongs where it is, so it is no hidden character:
    a zero width joiner after an emoji, before another emoji or a non-ASCII symbol (``'👨\u200d👩'``,
    ``'🙂\u200d↔️'``; category So, or Sm outside ASCII); a zero width (non-)joiner between two
    letters or marks, neither of them ASCII (``'می\u200cخواهم'``, ``'ශ්\u200dරී'``; :func:`name_key`
    leaves it out between letters of scripts that do not shape); one right after a virama, at the
    end too (``'രാമന്\u200d'``, a Malayalam chillu); a tag character of a
    subdivision flag (``'🏴'``, 2 to 6 tag lowercase letters or digits, the cancel tag U+E007F)."""
    c = name[i]
    if c in "\u200c\u200d":
        if i > 1 and unicodedata.combining(name[i - 1]) == 9 and not name[i - 2].isascii() \
                and unicodedata.category(name[i - 2])[0] == "L":  # after a letter's virama: a chillu, half form
            return True
        if 0 < i < len(name) - 1 and not name[i - 1].isascii() and not name[i + 1].isascii() \
                and unicodedata.category(name[i - 1])[0] in "LM" and unicodedata.category(name[i + 1])[0] in "LM":
            return True
        if i + 1 >= len(name) or not _emoji_joiner(name, i):
            return False
        after = unicodedata.category(name[i + 1])
        return after == "So" or (after == "Sm" and not name[i + 1].isascii())
    return _flag_tag(name, i)


def _is_flag_spec(ch: str) -> bool:
    """A tag digit (U+E0030-E0039) or tag lowercase letter (U+E0061-E007A)."""
    return "\U000e0030" <= ch <= "\U000e0039" or "\U000e0061" <= ch <= "\U000e007a"


def _flag_tag(name: str, i: int) -> bool:
    """Whether ``name[i]`` is a tag character of a subdivision flag: U+1F3F4, then 2 to 6 tag
    digits / lowercase letters, then the cancel tag U+E007F (``'🏴'`` + ``gbsct`` + cancel)."""
    c = name[i]
    if c == "\U000e007f":
        end = i
    elif _is_flag_spec(c):
        end = i
        while end < len(name) and _is_flag_spec(name[end]):
            end += 1
    else:
        return False
    start = end
    while start > 0 and _is_flag_spec(name[start - 1]):
        start -= 1
    return 2 <= end - start <= 6 and start > 0 and name[start - 1] == "\U0001f3f4" \
        and end < len(name) and name[end] == "\U000e007f"


#: Cyrillic and Greek letters drawn exactly as a Latin one, which NFKC keeps apart
_LOOKALIKES = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u051b\u051d"
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0406\u0408\u0405\u051a\u051c"
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u03bf",
    "aeopcyxijshdqwABEKMHOPCTXIJSQWABEZHIKMNOPTYXo")


def _emoji_joiner(name: str, i: int) -> bool:
    """Whether ``name[i]`` is a zero width joiner right after an emoji (skin tones and variation
    selectors looked past): part of an emoji sequence."""
    before = _VARIATION.sub("", name[:i]).rstrip(_SKIN_TONES)
    return name[i] == "\u200d" and before != "" and unicodedata.category(before[-1]) == "So"


def _drop_text_joiners(name: str) -> str:
    """``name`` without the zero width (non-)joiners of text: one in a script that shapes with it
    may change what is drawn, or not (Arabic alef never joins to the left), so pairs that differ
    only by them are taken as alike (refusing such a pair costs a rename).  A joiner of an emoji
    sequence (after an emoji: ``'👨\u200d👩'`` is one glyph) is kept."""
    out: list = []
    for i, c in enumerate(name):
        if c in "\u200c\u200d" and not _emoji_joiner(name, i):
            continue
        out.append(c)
    return "".join(out)


def _key(name: str, form: str) -> str:
    if name.isascii():
        return name
    # decomposed first, so that a Cyrillic letter under a mark meets its Latin twin ('ё' / 'ë')
    plain = unicodedata.normalize("NFD", _VARIATION.sub("", name)).translate(_LOOKALIKES)
    return _drop_text_joiners(unicodedata.normalize(form, plain))


def name_key(name: str) -> str:
    """What two names that may print alike share: the NFKC form (``'ﬁ'`` and ``'fi'``, the Kelvin
    sign and ``'K'``, ``'Ⅰ'`` and ``'I'``, ``'ａ'`` and ``'a'``, ``'e'`` + a combining accent and
    ``'é'``) without variation selectors and without the zero width (non-)joiners of text, Cyrillic
    and Greek letters drawn as a Latin one read as it (``'саmera'`` and ``'camera'``, ``'ё'`` and
    ``'ë'``).  Tag characters and the joiners of emoji sequences are kept: they change what is drawn
    (two subdivision flags, ``'👨\u200d👩'`` and ``'👨👩'``).  This merges some names that print a
    little differently (``'x²'`` and ``'x2'``, ``'می\u200cخواهم'`` and ``'میخواهم'``): refusing
    such a pair costs a rename, accepting a look-alike pair would let one name be mistaken for
    the other."""
    return _key(name, "NFKC")


def _alike(a: str, b: str) -> str:
    """How two names with the same :func:`name_key` are alike, for a message."""
    if _key(a, "NFC") == _key(b, "NFC"):
        return "look the same"
    return "may be mistaken for each other (equal after NFKC compatibility normalization)"


def normalization_hint(name: Any, known: Iterable[Any]) -> str:
    """For an unknown region name that prints like a known one (the same :func:`name_key`, e.g.
    ``'é'`` typed as ``e`` + a combining accent): a suffix saying so, with both spellings escaped.
    ``''`` otherwise."""
    if not isinstance(name, str):
        return ""
    want = name_key(name)
    for k in known:
        if isinstance(k, str) and k != name and name_key(k) == want:
            how = "looks the same" if _alike(k, name) == "look the same" else \
                "may be mistaken for it (equal after NFKC compatibility normalization)"
            return (f" The layout's region {k!r} {how} but is spelt with other Unicode code points "
                    f"({ascii(k)} there, {ascii(name)} here); use the layout's spelling.")
    return ""


def check_distinct_after_normalization(names: Iterable[Any], what: str) -> None:
    """Refuse two region names that print alike (the same :func:`name_key`): every message,
    summary and file would show them the same, so one would be mistaken for the other."""
    seen: dict = {}
    for name in names:
        if not isinstance(name, str):
            continue
        key = name_key(name)
        if key in seen and seen[key] != name:
            raise RegionError(
                f"{what}: region names {seen[key]!r} and {name!r} {_alike(seen[key], name)} but are spelt with other Unicode "
                f"code points ({ascii(seen[key])} and {ascii(name)}); rename one of them, or write both alike")
        seen.setdefault(key, name)
