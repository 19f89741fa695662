"""Online side: the recommendation service."""
