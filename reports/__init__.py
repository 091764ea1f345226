"""Charts (DataFrame -> Altair chart) and self-contained HTML pages; no computation."""
