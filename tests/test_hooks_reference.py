"""The guide's hooks reference says what poel_host/hookspecs.py says.

The hook specifications are written twice: in ``poel_host/hookspecs.py`` (the authority,
what pluggy checks implementations against) and in the "Hooks reference" of
``docs/plugin-authors.md``, which plugin authors read. Each hook there has a heading that
is its signature, ``### `job_finished(ctx: JobContext, outcome: str, ...) -> None` ``;
this test parses those headings and compares them with the specs, so that a hook added,
renamed or changed in one place and not the other fails here rather than misleads an
author. The spec annotates with ``Any`` what it cannot import cheaply (hookspecs.py stays
light to import); there the guide names the type the host passes (``JobContext``,
``Settings``, ``list[Job]``), anything else must be the same.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

from poel_host import hookspecs

GUIDE = Path(__file__).parents[1] / "docs" / "plugin-authors.md"
HEADING = re.compile(r"^### `(?P<signature>.+)`\s*$", re.MULTILINE)


def reference_section(text: str) -> str:
    """The guide from "## Hooks reference" up to its next ``##`` section."""
    start = text.index("\n## Hooks reference\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def guide_signatures(text: str) -> dict[str, ast.FunctionDef]:
    """Each ``### `name(params) -> type` `` heading of the reference, parsed as a def."""
    found: dict[str, ast.FunctionDef] = {}
    for match in HEADING.finditer(reference_section(text)):
        signature = match["signature"]
        try:
            [definition] = ast.parse(f"def {signature}: ...").body
        except SyntaxError as exc:
            raise AssertionError(f"heading `{signature}` is not a signature: {exc}") from None
        assert isinstance(definition, ast.FunctionDef)
        assert definition.name not in found, f"hook {definition.name} is described twice"
        found[definition.name] = definition
    return found


def spec_signatures() -> dict[str, inspect.Signature]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: inspect.signature(value)
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, marker)
    }


def annotation(text: Any) -> ast.expr:
    assert isinstance(text, str), f"expected a string annotation, got {text!r}"
    return ast.parse(text, mode="eval").body


def same_type(spec: Any, guide: Any) -> bool:
    """Whether the guide's annotation says what the spec's does; ``Any`` in the spec stands
    for whatever type the guide names there."""
    if isinstance(spec, ast.Name) and spec.id == "Any":
        return guide is not None
    if type(spec) is not type(guide):
        return False
    if isinstance(spec, list):
        return len(spec) == len(guide) and all(map(same_type, spec, guide))
    if isinstance(spec, ast.AST):
        return all(
            same_type(getattr(spec, name, None), getattr(guide, name, None))
            for name in spec._fields
            if name != "ctx"
        )
    return bool(spec == guide)


def differences(name: str, spec: inspect.Signature, guide: ast.FunctionDef) -> list[str]:
    """What the guide's heading for hook ``name`` gets wrong, as sentences."""
    arguments = guide.args
    problems = []
    if arguments.posonlyargs or arguments.vararg or arguments.kwonlyargs or arguments.kwarg:
        problems.append("the guide's parameters must be plain named parameters")
    spec_names = list(spec.parameters)
    guide_names = [a.arg for a in arguments.args]
    if guide_names != spec_names:
        problems.append(f"parameters {guide_names} in the guide, {spec_names} in the spec")
    for argument in arguments.args:
        parameter = spec.parameters.get(argument.arg)
        if parameter is None:
            continue
        spec_type = annotation(parameter.annotation)
        if argument.annotation is None or not same_type(spec_type, argument.annotation):
            shown = ast.unparse(argument.annotation) if argument.annotation else "(none)"
            problems.append(
                f"{argument.arg}: {shown} in the guide, {ast.unparse(spec_type)} in the spec"
            )
    returns = annotation(spec.return_annotation)
    if guide.returns is None or not same_type(returns, guide.returns):
        shown = ast.unparse(guide.returns) if guide.returns else "(none)"
        problems.append(f"returns {shown} in the guide, {ast.unparse(returns)} in the spec")
    return [f"{name}: {problem}" for problem in problems]


def test_every_hook_is_in_the_guide_with_the_specs_signature() -> None:
    specs = spec_signatures()
    guide = guide_signatures(GUIDE.read_text(encoding="utf-8"))
    assert len(specs) >= 6, f"found only these hook specifications: {sorted(specs)}"

    problems = [
        f"{name}: missing from the guide's hooks reference" for name in specs.keys() - guide.keys()
    ]
    problems += [f"{name}: in the guide but not a hook" for name in guide.keys() - specs.keys()]
    for name in sorted(specs.keys() & guide.keys()):
        problems += differences(name, specs[name], guide[name])

    assert not problems, "docs/plugin-authors.md and poel_host/hookspecs.py differ:\n" + (
        "\n".join(problems)
    )


def test_the_comparison_catches_a_changed_signature() -> None:
    """The checker itself: the kinds of drift it must see, on a made-up spec."""

    def spec(ctx: Any, outcome: str, duration: float) -> None: ...

    def heading(signature: str) -> ast.FunctionDef:
        return guide_signatures(f"\n## Hooks reference\n\n### `{signature}`\n")["hook"]

    signature = inspect.signature(spec)
    good = "hook(ctx: JobContext, outcome: str, duration: float) -> None"
    assert differences("hook", signature, heading(good)) == []
    for drifted in (
        "hook(ctx: JobContext, outcome: str) -> None",
        "hook(ctx: JobContext, duration: float, outcome: str) -> None",
        "hook(ctx: JobContext, result: str, duration: float) -> None",
        "hook(ctx: JobContext, outcome: str, duration: int) -> None",
        "hook(ctx: JobContext, outcome: str | None, duration: float) -> None",
        "hook(ctx, outcome: str, duration: float) -> None",
        "hook(ctx: JobContext, outcome: str, duration: float) -> bool",
        "hook(ctx: JobContext, outcome: str, duration: float)",
    ):
        assert differences("hook", signature, heading(drifted)), drifted
