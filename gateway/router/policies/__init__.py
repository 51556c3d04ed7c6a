"""One routing policy per module; registry.py maps names to them."""
