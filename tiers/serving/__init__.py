"""The serving layer: one internal request end to end, whichever wire API it came in on. No HTTP here."""
