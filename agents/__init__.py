"""Agent programs Unstuck can run through its local-process runtime (demos and tests)."""
