"""AST → `Network`: choose the network, bind parameters, apply defaults, evaluate arithmetic,
unroll `repeat` and `for`, and check every value (`binding.resolve` is the entry point).

The resolver is one object built from layers, one module each: `expressions` (exact
arithmetic), `values` (typed settings), `statements` (the body and its unrolling), `stages`
(dense blocks, transitions, head, expect), `binding` (parameters and the whole run).
"""

from .binding import resolve, resolve_all
from .vocabulary import (
                         ACTIVATIONS,
                         DEFAULT_SETTINGS,
                         DENSE_SETTINGS,
                         EMIT_RULES,
                         EXPECT_KEYS,
                         FUNCTIONS,
                         HEAD_SETTINGS,
                         LAYER_KINDS,
                         LINK_RULES,
                         MAX_LIST,
                         NORMS,
                         RANDOM_LINKS,
                         STAGE_STATEMENTS,
                         STATEMENTS,
                         STEM_OPS,
                         STEM_SETTINGS,
                         TASKS,
                         TRANSITION_SETTINGS,
)

__all__ = ["ACTIVATIONS", "DEFAULT_SETTINGS", "DENSE_SETTINGS", "EMIT_RULES", "EXPECT_KEYS", "FUNCTIONS", "HEAD_SETTINGS",
           "LAYER_KINDS", "LINK_RULES", "MAX_LIST", "NORMS", "RANDOM_LINKS", "STAGE_STATEMENTS", "STATEMENTS", "STEM_OPS", "STEM_SETTINGS",
           "TASKS", "TRANSITION_SETTINGS", "resolve", "resolve_all"]
