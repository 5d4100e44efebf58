"""raylane: a unified AI compute platform on one Ray cluster."""
