"""Explorers for JupyterLab (docs/widgets.md): what-if deletions and the path from influence to SOURCE.

Each explorer is a set of ipywidgets around a headless object that does the work (``tdakit.explore.WhatIf``,
``tdakit.explore.Spectrum``); every control has a method that does what the click does, so notebooks and
tests can drive them without a browser.
"""

from .background import Background, Job, Superseded
from .deletion import DeletionExplorer
from .if_to_source import IFToSourceExplorer
from .views import Units, units_of

__all__ = ["DeletionExplorer", "IFToSourceExplorer", "Background", "Job", "Superseded", "Units", "units_of"]
