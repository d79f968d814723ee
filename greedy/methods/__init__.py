"""Training methods: the layer-wise loop, its block trainers (aux, cosine, kl, patchbag, binary) and end to end.

``METHODS`` maps each CLI name to its method object (a ``greedy.methods.base.Method``).
"""
from greedy.methods.binary import BINARY
from greedy.methods.e2e import E2E_METHOD
from greedy.methods.objectives import AUX, COSINE, KL_METHOD
from greedy.methods.patchbag import PATCHBAG

METHODS = {m.name: m for m in (E2E_METHOD, AUX, COSINE, KL_METHOD, PATCHBAG, BINARY)}
