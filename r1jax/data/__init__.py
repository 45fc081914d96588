"""Prompts: built-in tasks, local data sets, and prompt templates."""
