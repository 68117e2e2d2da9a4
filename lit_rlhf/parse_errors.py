"""One line from a jsonargparse error: which option, what was given, what is accepted.

jsonargparse reports a bad value inside a ``class_path``/``init_args`` option as a tree of every type it tried
("Does not validate against any of the Union subtypes ... Given value: Namespace(...)"). :func:`condense_parse_error`
keeps the deepest real error of that tree and names the option as the command line spells it
(``--model.init_args.learning_rate: expected a float, got 'abc'``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable

_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Expected a <class 'NoneType'>",
    "Expected a path but ",
    "Not a valid subclass of ",
    "Subclass types expect one of:",
    "a class path (str)",
    "a dict with ",
    "a dict without ",
)


def condense_parse_error(message: str, options: Iterable[str] = ()) -> str:
    """The one line that matters in a jsonargparse error ``message``.

    Args:
        message: what jsonargparse passed to ``ArgumentParser.error``.
        options: the parser's option strings (``--trainer.max_steps``...), to suggest one for a misspelt option.

    Returns:
        ``--<option>: <what is wrong>`` (with a suggestion where one is close), or the first line of ``message`` when
        it has no known shape.
    """
    options = list(options)
    leaves, given = _leaves(message)
    if not leaves:
        return message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    depth = max(len(stack) for stack, _ in leaves)
    deepest = [(stack, text) for stack, text in leaves if len(stack) == depth]
    stack, text = deepest[0]
    option, cls = _option_name(stack), _last_class(stack)
    expected = [t for s, t in deepest if re.fullmatch(r"Expected an? .+", t) and "Got value" not in t]
    if len(expected) == len(deepest) and option:  # alternatives of one union, none matched
        kinds = " or ".join(_type_name(re.sub(r"^Expected an? ", "", t)) for t in expected)
        value = given.get(tuple(stack))
        return f"--{option}: expected {kinds}" + (f", got {value!r}" if value is not None else "")
    return _rewrite(text, option, cls, options)


def _leaves(message: str) -> tuple[list[tuple[list[tuple[str, str]], str]], dict[tuple, str]]:
    """The error lines of ``message`` with the keys and classes above each, and the given values per stack."""
    stack: list[tuple[int, str, str]] = []
    leaves: list[tuple[list[tuple[str, str]], str]] = []
    given: dict[tuple, str] = {}
    for raw in message.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        text = raw.strip()
        if text.startswith("- "):
            text = text[2:].strip()  # an item: its children are indented past its dash
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)$', text)
        cls = re.match(r"Problem with given class_path '([^']+)':\s*(.*)$", text)
        if key or cls:
            match = key or cls
            stack.append((indent, "key" if key else "class", match.group(1)))
            if match.group(2):
                leaves.append(([(k, v) for _, k, v in stack], match.group(2)))
            continue
        if text.startswith("Given value:"):
            given[tuple((k, v) for _, k, v in stack)] = text[len("Given value:") :].strip()
            continue
        if text.startswith(_NOISE):
            continue
        leaves.append(([(k, v) for _, k, v in stack], text))
    return leaves, given


def _option_name(stack: list[tuple[str, str]], extra: str | None = None) -> str:
    """``model.init_args.learning_rate`` from the keys and classes above an error (``extra``: one more key)."""
    parts: list[str] = []
    after_class = False
    for kind, value in [*stack, *([("key", extra)] if extra else [])]:
        if kind == "class":
            after_class = True
            continue
        if after_class:
            parts.append("init_args")
        parts.append(value)
        after_class = False
    return ".".join(parts)


def _last_class(stack: list[tuple[str, str]]) -> str | None:
    classes = [value for kind, value in stack if kind == "class"]
    return classes[-1] if classes else None


def _type_name(text: str) -> str:
    """``a float`` from ``<class 'float'>``, ``one of a, b`` from ``typing.Literal['a', 'b']``."""
    text = text.strip()
    simple = re.fullmatch(r"<class '([\w.]+)'>", text)
    if simple:
        name = simple.group(1).rsplit(".", 1)[-1]
        return "null" if name == "NoneType" else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return "one of " + ", ".join(v.strip().strip("'\"") for v in literal.group(1).split(","))
    return text


def _rewrite(text: str, option: str, cls: str | None, options: list[str]) -> str:
    prefix = f"--{option}: " if option else ""
    not_accepted = re.fullmatch(r"Option '([\w.]+)' is not accepted", text)
    if not_accepted:
        name = not_accepted.group(1)
        full = f"{option}.init_args.{name}" if cls else (f"{option}.{name}" if option else name)
        owner = cls or option or "this command"
        close = difflib.get_close_matches(name, _init_parameters(cls), n=1, cutoff=0.75)
        hint = f"; did you mean --{full[: -len(name)]}{close[0]}?" if close else ""
        return f"--{full}: {owner} takes no option {name!r}{hint}"
    required = re.fullmatch(r"the following arguments are required: (.+)", text)
    if required:
        names = [n.strip() for n in required.group(1).split(",")]
        where = f"{option}.init_args" if cls else option
        flags = ", ".join(f"--{where}.{n}" if where else f"--{n}" for n in names)
        owner = f" by {cls}" if cls else ""
        return f"{flags}: required{owner} and not given; set it in the config file or on the command line"
    group = re.fullmatch(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
    if group:
        full = f"{group.group(1)}.{group.group(2)}"
        return f"--{full}: no such option" + _suggest(f"--{full}", options, "")
    expected = re.fullmatch(r"Expected an? (.+?)\. Got value: (.*)", text, flags=re.S)
    if expected:
        return f"{prefix}expected {_type_name(expected.group(1))}, got {expected.group(2).strip()!r}"
    if cls and re.match(r"(module '.*' has no attribute|No module named)", text):
        return f"{prefix}cannot import {cls} ({text})"
    unrecognized = re.fullmatch(r"unrecognized arguments: (.*)", text)
    if unrecognized:
        first = unrecognized.group(1).split()[0]
        return f"unrecognized arguments: {unrecognized.group(1)}" + _suggest(first, options, "--")
    return prefix + text


def _init_parameters(class_path: str | None) -> list[str]:
    """The ``__init__`` parameter names of ``class_path`` (empty when it cannot be imported)."""
    if not class_path or "." not in class_path:
        return []
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # a suggestion is optional: never fail the error message on it
        return []


def _suggest(given: str, candidates: Iterable[str], option_prefix: str) -> str:
    """``; did you mean X?`` for the candidate closest to ``given`` (same last dotted part first), else ``""``."""
    candidates = [c for c in candidates if c.startswith(option_prefix)]
    if not given.startswith(option_prefix) or not candidates:
        return ""
    last = given[len(option_prefix) :].rsplit(".", 1)[-1]
    same_name = [c for c in candidates if c.rsplit(".", 1)[-1] == last and c != given]
    close = same_name or difflib.get_close_matches(given, candidates, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""
