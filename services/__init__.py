"""luffy-async services package."""
