"""The article's steps, one module each, in the article's order: ``gap``, ``data``, ``model``, ``fit``
and ``metrics``, ``hook``, ``weighted_sum``, ``zoom``, ``overlay``."""
