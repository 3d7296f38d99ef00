"""Learning rules, one module each, registered under their ``--rule`` name.

``base`` holds the interface (``AbstractRule``, ``Option``, ``register``, ``RULES``); ``local`` the
vocabulary the membrane-local rules share. This package only imports the rule modules, which
register themselves.
"""

from spikeprop.rules import bptt, dfa, f3, ff, pepita, shallow, sigprop  # noqa: F401  (they register)
from spikeprop.rules.base import RULES, AbstractRule, Option, register

Rule = AbstractRule  # the name the harness uses

__all__ = ["RULES", "AbstractRule", "Option", "Rule", "register"]
