"""bertology: re-run the classic analyses of what BERT knows and how its attention behaves.

Layers and heads are 0-indexed in code and printed 1-indexed as ``layer-head`` in reports,
as Clark et al. (2019) write them.
"""
__version__ = "0.1.0"
