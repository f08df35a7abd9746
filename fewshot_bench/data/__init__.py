"""Task cards and the rows they load."""
