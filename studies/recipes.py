"""The features a run config asks for, composed into one recipe for the core loop.

Each feature folder gives `recipe(config) -> Recipe | None` (None when the config does not use
it); the core never imports them, this module is where they meet (train/recipe.py).
"""

import adapt.wrap
import compress
import distill.recipe
import prefs.recipe
from train.recipe import Recipe, compose


def recipe_for(config) -> Recipe:
    """Every feature `config` turns on, composed in a fixed order (adaptation wraps first)."""
    return compose(
        adapt.wrap.recipe(config),
        compress.recipe(config),
        distill.recipe.recipe(config),
        prefs.recipe.recipe(config),
    )


def config_fields() -> dict:
    """The declared fields of a run config: the core's blocks (train.validate.config_fields)
    and those of the feature blocks `experiments.common.base_config` carries (`adapt`, `quant`,
    `prune`)."""
    from adapt.wrap import ADAPT_FIELDS
    from compress import PRUNE_FIELDS, QUANT_FIELDS
    from train.validate import config_fields as core_fields

    return {**core_fields(), "adapt": ADAPT_FIELDS, "quant": QUANT_FIELDS, "prune": PRUNE_FIELDS}
