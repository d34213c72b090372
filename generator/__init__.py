"""luffy-async generator package."""
