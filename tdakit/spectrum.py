"""tdakit 0.2's path of ``tdakit.explore.spectrum``: its names still work here, with a warning, for one release."""

from . import deprecation

__getattr__ = deprecation.module_moved(__name__, "tdakit.explore.spectrum")
