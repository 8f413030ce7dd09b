"""The shipped recipes' stage hashes are pinned: trained products are reused by them.

A run keeps every model under ``DIR/<stage>/model-<hash>`` and reuses it while the
hash holds (:mod:`slimstep.run`). A refactor of how configs are read, checked or
defaulted must leave these hashes exactly as they are, or every finished model of
every user retrains. A *deliberate* change to a recipe or a default changes them:
update the table in the same commit, saying why.
"""

import pytest

from slimstep.run import config_hash, load_recipe

#: recipe -> stage -> (config_hash of its training config or None, stage hash)
PINNED = {
    "digits/all": {
        "annealing-reflow": ("eec177c7a0", "c5834ac86d"),
        "distill": ("964d54e7e8", "803dceb6b4"),
        "dit-teacher": ("ea556de2a2", "d26f5dbaeb"),
        "flowmap": ("0a557f04de", "7914077370"),
        "gdd": ("bacd41c559", "b27ca4754e"),
        "gdd-i": ("eb0dc9c97c", "6b5adcc9b1"),
        "meanflow": ("bd00067c06", "54aaa785b1"),
        "pairs": (None, "3c3e2b0252"),
        "slimflow": ("5e64b6c710", "fbdbbb0566"),
        "slt": ("ce7947e83c", "e47baea6d0"),
        "slt-screen": (None, "3ec70acabb"),
        "teacher": ("52737cab01", "a0e2e00dfa"),
        # issue 25: the baselines on digits (added; the stages above are unchanged)
        "dmd2": ("dc62705ad4", "6893380594"),
        "ect": ("644f303ca1", "4b915a457a"),
        "scd": ("4b8f49fff5", "77b1c7de12"),
    },
    "toy2d/all": {
        "moons-annealing-reflow": ("212be02aa8", "e83a6a9135"),
        "moons-gdd": ("2d4e7f8e28", "772221e471"),
        "moons-pairs": (None, "c5c176397f"),
        "moons-slimflow": ("5007cbcb67", "98a2676092"),
        "moons-teacher": ("2ceba9fe06", "5aa7a4beef"),
        # issue 25: the baselines users pick instead (added; the stages above are unchanged)
        "moons-dmd2": ("c88b03df48", "477f1b0f2c"),
        "moons-scd": ("d68bfe3fa4", "1683057fd9"),
        "moons-ect": ("b200c279f6", "d5b928bfbe"),
    },
    "demo": {
        "annealing-reflow": ("0b6cb82a0a", "ff2fd4b7ad"),
        "distill": ("5f6e0edb79", "dceaf16b14"),
        "dit-teacher": ("24e1a91b08", "9400ba3934"),
        "flowmap": ("dcb452dd30", "d9e14b351a"),
        "gdd": ("20f6c8ad3f", "6e7fc2fdd1"),
        "gdd-i": ("94569f265f", "7ff0dbabb5"),
        "meanflow": ("4da25a9f8f", "1ec37ce0ce"),
        "moons-annealing-reflow": ("e239efa81c", "7d745d6ae9"),
        "moons-gdd": ("2c31fd020f", "b2d5ca47b0"),
        "moons-pairs": (None, "a8b0eb0ec4"),
        "moons-slimflow": ("cfdecbe526", "f698f270b4"),
        "moons-teacher": ("ce2f3ac6d7", "3b1900548c"),
        "pairs": (None, "e75e0e27e3"),
        "slimflow": ("43cf120e57", "a7504ed17e"),
        "slt": ("9035f0e02c", "fcd0acebce"),
        "slt-screen": (None, "6a0bf64c44"),
        "teacher": ("639de63407", "70d3f0b408"),
    },
    # a generic recipe names no data set: pinned with a fixed one (`slimstep run --data`)
    "images/run-16": {
        "gdd": ("804ec7215f", "977ec49880"),
        "teacher": ("0f111d3b10", "d53c0c41a2"),
    },
}
#: the --data of the recipes that need one
DATA = {"images/run-16": "folder:/"}


@pytest.mark.parametrize("recipe", sorted(PINNED))
def test_stage_hashes_are_unchanged(recipe):
    _, stages = load_recipe(recipe, DATA.get(recipe))
    got = {s.name: (config_hash(s.cfg) if s.cfg else None, s.hash) for s in stages}
    assert got == PINNED[recipe]
