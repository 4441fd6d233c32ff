"""Dramatiq workers: the actors, and what they need set up on their loop."""
