"""The headless explorers behind the widgets: what a deletion does (``WhatIf``) and how SOURCE turns into the
influence function as its horizon grows (``Spectrum``). Every widget control has a method here, so notebooks,
tests and scripts can drive them without a browser."""

from .spectrum import Spectrum, View
from .whatif import SIDES, Trial, WhatIf

__all__ = ["WhatIf", "Trial", "SIDES", "Spectrum", "View"]
