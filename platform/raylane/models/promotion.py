"""Promotion with a gate: move an alias to a candidate version only when its eval records say it
is good enough.

A gate is ``METRIC OP BOUND``: ``OP`` one of ``>= > <= <``, ``BOUND`` a number (``accuracy>=0.9``)
or an alias of the same model with an optional margin (``accuracy>=prod-0.01``, ``val_loss<=prod``).
The candidate's newest eval record supplies its value; the version the alias points to supplies the
bound, from its newest eval on the same dataset, so the two are compared on the same rows. A
promotion that fails any gate changes nothing and says why with the numbers; one that passes is
an alias move recorded with the gates and both sides' metrics (``raylane models show`` lists it).

Example:
    >>> parse_gate("accuracy >= prod - 0.01")
    Gate(metric='accuracy', op='>=', alias='prod', number=-0.01)
    >>> parse_gate("auc>0.9").bound({})
    0.9
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

from raylane.artifacts.refs import is_alias, parse_ref
from raylane.db import MetadataStore
from raylane.errors import InvalidRequestError

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_GATE = re.compile(
    r"\s*(?P<metric>[A-Za-z_][\w.]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<alias>[A-Za-z][\w.-]*?)\s*(?:(?P<sign>[+-])\s*(?P<margin>\d+(?:\.\d+)?))?|(?P<number>-?\d+(?:\.\d+)?))\s*"
)


@dataclass(frozen=True)
class Gate:
    """One condition on a candidate's metric: against a number, or an alias's value plus ``number``."""

    metric: str
    op: str
    alias: str | None
    number: float

    def bound(self, incumbent: dict[str, Any]) -> float:
        """The value the candidate is compared with, given the alias's metrics (unused for a number)."""
        if self.alias is None:
            return self.number
        return float(incumbent[self.metric]) + self.number

    def __str__(self) -> str:
        if self.alias is None:
            return f"{self.metric}{self.op}{self.number:g}"
        margin = f"{self.number:+g}" if self.number else ""
        return f"{self.metric}{self.op}{self.alias}{margin}"


def parse_gate(text: str) -> Gate:
    """``accuracy>=prod-0.01`` -> :class:`Gate`; anything else is an :class:`InvalidRequestError`."""
    match = _GATE.fullmatch(text)
    if match is None or (match["alias"] is not None and not is_alias(match["alias"])):
        raise InvalidRequestError(
            f"bad gate {text!r}: expected METRIC OP BOUND, e.g. accuracy>=prod-0.01 or auc>0.9"
        )
    if match["number"] is not None:
        return Gate(match["metric"], match["op"], None, float(match["number"]))
    margin = float(match["margin"] or 0) * (-1 if match["sign"] == "-" else 1)
    return Gate(match["metric"], match["op"], match["alias"], margin)


def promote(db: MetadataStore, target: str, alias: str, gates: list[Gate], *, actor: str) -> dict[str, Any]:
    """Point ``alias`` at ``target`` (``NAME@N``) if every gate passes; the checks and the move.

    Raises :class:`InvalidRequestError` naming each failed gate with its numbers, or a missing eval.
    """
    ref = parse_ref(target, "model")
    if ref.version is None and ref.alias is None:
        raise InvalidRequestError(f"{target!r}: name the version to promote, e.g. {ref.name}@3")
    if not is_alias(alias):
        raise InvalidRequestError(f"bad alias {alias!r}: a name that starts with a letter (prod, staging)")
    version = db.get_model_version(ref.name, ref.version, ref.alias).version
    checks = [_check(db, ref.name, version, gate) for gate in gates]
    failed = [c for c in checks if not c["passed"]]
    if failed:
        raise InvalidRequestError(
            f"{ref.name}@{version} not promoted to {alias}: " + "; ".join(c["why"] for c in failed)
        )
    before = db.set_model_alias(
        ref.name, alias, version, actor=actor, action="promote", details={"gates": checks}
    )
    return {"model": ref.name, "alias": alias, "from": before, "to": version, "checks": checks}


def _check(db: MetadataStore, name: str, version: int, gate: Gate) -> dict[str, Any]:
    evals = db.model_evals(name, version)
    if not evals:
        raise InvalidRequestError(
            f"{name}@{version} has no eval record to gate on: run an eval job with model: {name}@{version}"
        )
    candidate = evals[-1]
    if gate.metric not in candidate.metrics:
        raise InvalidRequestError(
            f"gate {gate}: {name}@{version}'s eval has no {gate.metric!r} ({', '.join(candidate.metrics)})"
        )
    value = float(candidate.metrics[gate.metric])
    check: dict[str, Any] = {
        "gate": str(gate),
        "value": value,
        "eval": candidate.id,
        "dataset": candidate.dataset,
    }
    if gate.alias is not None:
        incumbent = db.model_aliases(name).get(name, {}).get(gate.alias)
        if incumbent is None:  # the first promotion: nothing to beat
            return {**check, "bound": None, "passed": True, "why": f"{name}@{gate.alias} does not exist yet"}
        same_rows = [e for e in db.model_evals(name, incumbent) if e.dataset == candidate.dataset]
        if not same_rows or gate.metric not in same_rows[-1].metrics:
            raise InvalidRequestError(
                f"gate {gate}: {name}@{gate.alias} ({name}@{incumbent}) has no eval on {candidate.dataset} "
                f"with {gate.metric!r} to compare with: run an eval job with model: {name}@{incumbent}"
            )
        check["incumbent"] = {"version": incumbent, "value": same_rows[-1].metrics[gate.metric]}
        bound = gate.bound(same_rows[-1].metrics)
    else:
        bound = gate.bound({})
    passed = OPERATORS[gate.op](value, bound)
    why = f"{gate.metric} {value:.4g} {gate.op if passed else _negated(gate.op)} {bound:.4g} ({gate})"
    return {**check, "bound": bound, "passed": passed, "why": why}


def _negated(op: str) -> str:
    return {">=": "<", ">": "<=", "<=": ">", "<": ">="}[op]
