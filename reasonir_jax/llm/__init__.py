"""LLM plumbing shared by evaluation and data generation (prompt files first; backends to follow)."""
