"""Curate: load preference data, score pairs with a reference model, split them easy-to-hard."""
