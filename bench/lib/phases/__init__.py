"""The benchmark's phases: each ``async def phase(ctx) -> Section | None``."""
