"""System tests: whole processes, driven as a person would."""
