"""Small, runnable examples for agency developers."""
