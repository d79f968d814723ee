"""Neural-network core: layers with hand-written backward, models, losses, optimisers, the mini-batch loop."""
