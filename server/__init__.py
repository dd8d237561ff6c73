"""The Flower ServerApp: the task loop, evaluation and results."""
