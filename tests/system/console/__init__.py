"""execbus console in a real headless Chromium."""
