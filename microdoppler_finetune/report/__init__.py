"""What a run leaves for people to read: report.md / report.json (and the HTML report)."""
