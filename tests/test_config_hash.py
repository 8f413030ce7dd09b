"""The shipped recipes' stage hashes are pinned: trained products are reused by them.

A run keeps every model under ``DIR/<stage>/model-<hash>`` and reuses it while the
hash holds (:mod:`slimstep.recipes`). A refactor of how configs are read, checked or
defaulted must leave these hashes exactly as they are, or every finished model of
every user retrains. A *deliberate* change to a recipe or a default changes them:
update the table in the same commit, saying why.
"""

import pytest

from slimstep.recipes import config_hash, load_recipe

#: recipe -> stage -> (config_hash of its training config or None, stage hash)
PINNED = {
    "digits/all": {
        "annealing-reflow": ("eec177c7a0", "c5834ac86d"),
        "distill": ("964d54e7e8", "803dceb6b4"),
        "dit-teacher": ("ea556de2a2", "d26f5dbaeb"),
        "flowmap": ("595428d717", "bba135539c"),
        "gdd": ("bacd41c559", "b27ca4754e"),
        "gdd-i": ("2631e1fbf9", "d071a7cb24"),
        "meanflow": ("048e2e5b16", "288e9eb6c3"),
        "pairs": (None, "3c3e2b0252"),
        "slimflow": ("5e64b6c710", "fbdbbb0566"),
        "slt": ("ce7947e83c", "c98cd4f786"),
        "slt-screen": (None, "a05524c2b1"),
        "teacher": ("52737cab01", "a0e2e00dfa"),
    },
    "toy2d/all": {
        "moons-annealing-reflow": ("212be02aa8", "5f55cbe195"),
        "moons-gdd": ("2d4e7f8e28", "ea4e241965"),
        "moons-pairs": (None, "f0eb7c4a70"),
        "moons-slimflow": ("5007cbcb67", "db3173c0da"),
        "moons-teacher": ("a3a57562dd", "42200c0440"),
    },
    "demo": {
        "annealing-reflow": ("0b6cb82a0a", "ff2fd4b7ad"),
        "distill": ("5f6e0edb79", "dceaf16b14"),
        "dit-teacher": ("24e1a91b08", "9400ba3934"),
        "flowmap": ("b0d268c0f6", "ea74a90303"),
        "gdd": ("20f6c8ad3f", "6e7fc2fdd1"),
        "gdd-i": ("dcf2b168d1", "4b0962bce3"),
        "meanflow": ("2c84f3dc8c", "7c2323464f"),
        "moons-annealing-reflow": ("e239efa81c", "fca5486d5b"),
        "moons-gdd": ("2c31fd020f", "c9e32cda1c"),
        "moons-pairs": (None, "3b046814c6"),
        "moons-slimflow": ("cfdecbe526", "cb0c420243"),
        "moons-teacher": ("39f565f91d", "7f2dff7b93"),
        "pairs": (None, "e75e0e27e3"),
        "slimflow": ("43cf120e57", "a7504ed17e"),
        "slt": ("9035f0e02c", "30ea04caf5"),
        "slt-screen": (None, "f429583d13"),
        "teacher": ("639de63407", "70d3f0b408"),
    },
}


@pytest.mark.parametrize("recipe", sorted(PINNED))
def test_stage_hashes_are_unchanged(recipe):
    _, stages = load_recipe(recipe)
    got = {s.name: (config_hash(s.cfg) if s.cfg else None, s.hash) for s in stages}
    assert got == PINNED[recipe]
