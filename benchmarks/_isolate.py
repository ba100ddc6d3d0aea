"""Imported first by the benchmark scripts, which are named like the packages they measure
(pipeline.py, explorer.py): drop this folder from the import path so that ``import pipeline``
finds the package, not the script."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
