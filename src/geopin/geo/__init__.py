"""Where a client is: its address, and the location that address resolves to."""
