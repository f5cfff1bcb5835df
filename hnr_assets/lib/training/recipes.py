"""Training recipes: which negative sets an encoder is trained on.

The study's grid (arXiv 2504.21015), derived from the generator list, plus the open question of
filtering LLM negatives with the cross-encoder before using them:

| recipe key                   | negatives                                                     |
|------------------------------|---------------------------------------------------------------|
| `bm25`                       | BM25-mined                                                    |
| `ce`                         | cross-encoder-mined                                           |
| `llm-<g>`                    | written by generator `<g>`                                    |
| `llm-<g>+bm25`, `llm-<g>+ce` | generator `<g>` and a mined set, rows concatenated            |
| `all-llms`                   | every generator (only with two or more generators)            |
| `all-llms+bm25`, `+ce`       | every generator and a mined set                               |
| `llm-<g>-filtered`           | generator `<g>`, minus negatives the cross-encoder scores as  |
|                              | likely positives (beyond the study)                           |
| `all-llms-filtered`          | every generator, filtered the same way (beyond the study)     |

Negative sets are named by their source: `bm25`, `ce`, `llm-<g>`. Keys are valid Dagster partition
keys and path components (no `| , [ ]`, no `/`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import check_safe_name


@dataclass(frozen=True)
class Recipe:
    """One training recipe.

    Attributes:
        key: Partition key, e.g. `llm-qwen3-4b+bm25`.
        sources: Negative sets whose rows are concatenated, e.g. `("llm-qwen3-4b", "bm25")`.
        ce_filtered: LLM negatives are filtered with the cross-encoder before training.
        in_study: The study trained this recipe (its reported average can be shown next to ours).
    """

    key: str
    sources: tuple[str, ...]
    ce_filtered: bool = False
    in_study: bool = True

    @property
    def llm_sources(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if s.startswith("llm-"))


# Systems scored besides the trained encoders: BM25 retrieval and the base encoder without fine-tuning.
BASELINE_SYSTEMS = ("bm25-retrieval", "base-encoder")
# The longest generator key whose recipe keys (`llm-<key>-filtered`) are still valid 128-character names.
GENERATOR_KEY_MAX = 128 - len("llm-") - len("-filtered")


def system_keys(generator_keys: list[str]) -> list[str]:
    """Scored systems: the two baselines, then every recipe's encoder (`derive_recipes` order)."""
    return [*BASELINE_SYSTEMS, *(r.key for r in derive_recipes(generator_keys))]


def llm_source(generator_key: str) -> str:
    """The negative-set name of a generator: `llm-<key>`."""
    return f"llm-{check_safe_name(generator_key, 'generator key')}"


def derive_recipes(generator_keys: list[str], *, include_filtered: bool = True) -> list[Recipe]:
    """The recipe grid for a list of generators, in a stable order.

    Args:
        generator_keys: Generator partition keys from the profile.
        include_filtered: Add the cross-encoder-filtered LLM recipes.

    Returns:
        Recipes with unique keys.
    """
    llms = [llm_source(g) for g in generator_keys]
    recipes = [Recipe("bm25", ("bm25",)), Recipe("ce", ("ce",))]
    for src in llms:
        recipes += [Recipe(src, (src,)), Recipe(f"{src}+bm25", (src, "bm25")), Recipe(f"{src}+ce", (src, "ce"))]
    if len(llms) > 1:
        everything = tuple(llms)
        recipes += [
            Recipe("all-llms", everything),
            Recipe("all-llms+bm25", (*everything, "bm25")),
            Recipe("all-llms+ce", (*everything, "ce")),
        ]
    if include_filtered:
        recipes += [Recipe(f"{src}-filtered", (src,), ce_filtered=True, in_study=False) for src in llms]
        if len(llms) > 1:
            recipes.append(Recipe("all-llms-filtered", tuple(llms), ce_filtered=True, in_study=False))
    for recipe in recipes:
        check_safe_name(recipe.key, "recipe key")
    seen: dict[str, Recipe] = {}
    for recipe in recipes:
        if recipe.key in seen:
            raise ConfigError(
                f"recipe key {recipe.key!r} would mean both {seen[recipe.key].sources} and {recipe.sources}; "
                "rename one of the generators (a key must not end in '+bm25', '+ce' or '-filtered' of another)"
            )
        seen[recipe.key] = recipe
    return recipes
