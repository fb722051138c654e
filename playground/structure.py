"""The structure group's ready examples: a constraint each (axw.structured), as the page's boxes hold them."""

from __future__ import annotations

import json

CHARACTER = json.dumps({"type": "object", "additionalProperties": False, "required": ["name", "age"],
                        "properties": {"name": {"type": "string", "maxLength": 20},
                                       "age": {"type": "integer", "minimum": 0, "maximum": 120}}}, indent=1)
# a sum of at most three terms, each a number or a bracketed pair: a grammar whose every sentence ends (one that
# may go on forever can run to the length limit, the model never choosing to stop)
ARITHMETIC = """start: expr
expr: term | term OP term | term OP term OP term
term: NUMBER | "(" NUMBER OP NUMBER ")"
OP: " + " | " - " | " * " | " / "
NUMBER: /[1-9][0-9]{0,2}/"""
DATE = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"

NONE = "none"
EXAMPLES = {  # the example picker: each fills the four boxes (the one it uses, the others emptied)
    NONE: {},
    "yes / no / perhaps (choices)": dict(choices="yes\nno\nperhaps"),
    "a date (regex)": dict(regex=DATE),
    "a character with name and age (JSON schema)": dict(json_schema=CHARACTER),
    "arithmetic (Lark grammar)": dict(grammar=ARITHMETIC),
}
BOXES = ("choices", "regex", "json_schema", "grammar")


def example(name: str) -> list[str]:
    """The four boxes' values for example `name` (ValueError for an unknown one)."""
    if name not in EXAMPLES:
        raise ValueError(f"no structure example {name!r}: the examples are {', '.join(EXAMPLES)}")
    return [EXAMPLES[name].get(box, "") for box in BOXES]
