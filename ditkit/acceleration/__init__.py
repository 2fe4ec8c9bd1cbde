from .registry import REGISTRY, Method, Recipe, parse_recipe, register

__all__ = ["REGISTRY", "Method", "Recipe", "parse_recipe", "register"]
