"""luffy-async verifier package."""
