"""The run: the session (screens, contrasts, baseline) that takes a config to report rows."""
