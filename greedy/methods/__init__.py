"""Training methods: the layer-wise loop, its block trainers (aux, cosine, kl, patchbag, binary) and end to end."""
