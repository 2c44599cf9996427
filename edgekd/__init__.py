"""edgekd: distil a big teacher into a small, fast student for edge devices.

Follows Hinton, Vinyals & Dean, *Distilling the Knowledge in a Neural Network* (2015).
The stages are plain functions (``train_teachers``, ``distill``, ``evaluate``, ...) that
return frozen result objects; ``edgekd.cli`` is a thin command line over them.
"""

__version__ = "0.1.0"
