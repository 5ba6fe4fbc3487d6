"""The checks of the rail pipeline. Pure Python: no Django, no network; each takes a text and gives a Verdict."""
