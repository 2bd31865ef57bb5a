"""Rules: the model, the strict loader, Alertmanager-style matchers and the router."""
