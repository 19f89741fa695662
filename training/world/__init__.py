"""The demo world: a simulated social network whose like probabilities are known."""
