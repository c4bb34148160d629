// hookd dashboard script (filled in by the dashboard work).
