"""Withheld person x condition pairs: "this person was never recorded in that condition".

``step3 --withhold CONDITION[:FRACTION]`` picks, with the split seed, FRACTION (default one half) of the people
who were recorded in CONDITION and in at least one other condition; every image of theirs in CONDITION goes to
the test split, and nothing trains or tunes on it. A second, disjoint set of about half as many people gets its
CONDITION images in the validation split instead: the stand-in pairs on which every choice about unseen pairs is
made (guidance, amount of generated data, filtering), so the test pairs are only ever tested on. At least one
person keeps CONDITION in training, or the condition could not be learned at all.

CONDITION is a condition name or a prefix of several (``Backpack`` withholds Backpack_free and Backpack_line
alike: "never recorded with a backpack"), matched without regard to case. The manifest's ``withheld`` column
marks the rows ("test" or "val") and user_labels.json records the people; :func:`check_training_rows` refuses a
manifest in which a withheld pair has a training row (a hand-edited or mixed-up manifest).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import DatasetError
from .layouts import natural_key

DEFAULT_FRACTION = 0.5
WITHHELD_ROLES = ("test", "val")


class WithheldPairError(DatasetError):
    """A withheld person x condition pair would be trained on, or the withholding cannot be made."""


@dataclass(frozen=True)
class WithholdSpec:
    condition: str  # a condition name or a prefix of several
    fraction: float = DEFAULT_FRACTION

    @classmethod
    def parse(cls, text: Optional[str]) -> Optional["WithholdSpec"]:
        """``"Backpack"``, ``"Backpack_line:0.5"``; None or "" -> None."""
        if text is None or not str(text).strip():
            return None
        name, _, fraction = str(text).strip().partition(":")
        try:
            value = float(fraction) if fraction else DEFAULT_FRACTION
        except ValueError:
            raise WithheldPairError(f"--withhold {text}: the fraction after ':' must be a number in (0, 1), e.g. "
                                    f"Backpack:0.5.") from None
        if not 0.0 < value < 1.0:
            raise WithheldPairError(f"--withhold {text}: the fraction must be in (0, 1); some people must keep the "
                                    f"condition in training.")
        return cls(name.strip(), value)

    def conditions_in(self, condition_names: Sequence[str]) -> List[str]:
        wanted = self.condition.lower()
        exact = [c for c in condition_names if c.lower() == wanted]
        return exact or [c for c in condition_names if c.lower().startswith(wanted)]


@dataclass(frozen=True)
class Withholding:
    """Who is withheld in which conditions (recorded in user_labels.json under ``withheld``)."""

    spec: str
    conditions: Tuple[str, ...]
    test_people: Tuple[str, ...]
    val_people: Tuple[str, ...]

    def role(self, person: str, condition: str) -> str:
        """"test", "val" or "" for one image's person and condition."""
        if condition not in self.conditions:
            return ""
        return "test" if person in self.test_people else "val" if person in self.val_people else ""

    def to_dict(self) -> dict:
        return {"spec": self.spec, "conditions": list(self.conditions), "test_people": list(self.test_people),
                "val_people": list(self.val_people)}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> Optional["Withholding"]:
        if not data:
            return None
        return cls(str(data["spec"]), tuple(data["conditions"]), tuple(data["test_people"]),
                   tuple(data.get("val_people", ())))


def choose_withheld(spec: WithholdSpec, conditions_of_person: Dict[str, Iterable[str]], condition_names: Sequence[str],
                    *, seed: int) -> Withholding:
    """Pick the withheld people (deterministic in seed, the condition and the people's names)."""
    targets = spec.conditions_in(condition_names)
    if not targets:
        raise WithheldPairError(f"--withhold {spec.condition}: no condition of the data is called that or starts "
                                f"with it (conditions: {', '.join(condition_names) or 'none'}). Use one of those "
                                f"names or a prefix of them.")
    eligible = sorted((p for p, conds in conditions_of_person.items()
                       if set(conds) & set(targets) and set(conds) - set(targets)), key=natural_key)
    if len(eligible) < 2:
        raise WithheldPairError(f"--withhold {spec.condition}: only {len(eligible)} person(s) were recorded both in "
                                f"{'/'.join(targets)} and in another condition; withholding needs at least two (one "
                                f"withheld, one who keeps the condition in training).")
    random.Random(f"withhold:{seed}:{','.join(targets)}").shuffle(eligible)
    n_test = min(len(eligible) - 1, max(1, round(spec.fraction * len(eligible))))
    n_val = max(1, round(n_test / 2)) if len(eligible) - n_test >= 2 else 0
    return Withholding(f"{spec.condition}:{spec.fraction:g}", tuple(targets),
                       tuple(sorted(eligible[:n_test], key=natural_key)),
                       tuple(sorted(eligible[n_test:n_test + n_val], key=natural_key)))


def check_training_rows(entries: Iterable[dict], withholding: Optional[Withholding], source: str) -> None:
    """Refuse ``entries`` (manifest rows) in which a withheld pair is in the training split."""
    if withholding is None:
        return
    bad = [e for e in entries if e["split"] == "train" and withholding.role(e["person"], e["condition"])]
    if bad:
        first = bad[0]
        raise WithheldPairError(
            f"{source}: {len(bad)} training row(s) belong to withheld person x condition pairs (e.g. row "
            f"{first.get('index', 0) + 1}: {first['person']} / {first['condition']}, {first['path']}). Withheld pairs "
            f"are tested on only. The manifest was edited by hand or mixed with another: re-run "
            f"step3_prepare_dataset.py --overwrite with the same --withhold.")


def refuse_withheld_pairs(pairs: Iterable[Tuple[str, str]], withholding: Optional[Withholding], what: str) -> None:
    """Refuse a training set (given as its (person, condition) names) that holds a withheld pair."""
    if withholding is None:
        return
    found = sorted({(p, c) for p, c in pairs if withholding.role(p, c)})
    if found:
        listed = ", ".join(f"{p}/{c}" for p, c in found[:5])
        raise WithheldPairError(f"{what} holds images of withheld person x condition pairs ({listed}); they must "
                                f"never be trained on. Rebuild it from the current manifest.")
