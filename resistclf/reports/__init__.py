"""The study commands: each builds its results, then prints or writes a report."""
