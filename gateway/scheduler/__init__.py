"""Dispatches ready workflow nodes to workers by priority, runs them, resumes after restarts."""
