"""`notelm serve`: a local web page to generate music, listen to it and look at it (see app.py)."""
