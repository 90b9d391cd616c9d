"""tdakit 0.2's path of ``tdakit.attribution.unroll_stack``: its names still work here, with a warning, for a
release."""

from . import deprecation

__getattr__ = deprecation.module_moved(__name__, "tdakit.attribution.unroll_stack")
