"""adaptx internals: import from ``adaptx`` (the curated namespace), not from here."""
