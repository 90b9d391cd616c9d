"""Attribution methods, one registry for single runs and multi-stage pipelines.

All return ``Scores`` in one convention (docs/conventions.md):

    score[q, i] = d f_q(theta_T(w)) / d w_i at w = 1, in the measurement's units,

the first-order effect of up-weighting training point i on query q. Removing a set S is predicted
as delta f_q ~= -sum_{i in S} score[q, i].

``attribute(run, query, method)`` runs one method; ``attribute_many(run, query, {label: (method,
settings)})`` runs several and makes each per-example gradient once for every method that needs it
at the same parameters (``products``). ``register_method`` adds a method (docs/extending.md).
"""

from .ensemble import ensemble
from .influence import implied_damping
from .methods import METHODS, Registered, attribute, attribute_many, check_method, check_query, plans, register_method
from .products import Plan, Term, evaluate
from .refine import Refine
from .scores import Scores
from .settings import ProductOptions, Settings
from .source import Segment, segment_scores, segments_of
from .tracin import checkpoint_rates

__all__ = ["Scores", "Refine", "Registered", "METHODS", "register_method", "attribute", "attribute_many", "ensemble",
           "check_method", "check_query", "implied_damping", "segments_of", "segment_scores", "Segment",
           "checkpoint_rates", "Plan", "Term", "evaluate", "plans", "ProductOptions", "Settings"]
