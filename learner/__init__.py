"""luffy-async learner package."""
