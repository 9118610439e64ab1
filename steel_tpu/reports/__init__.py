"""Pages: a workdir's or system's report, the preset comparison, the figures and the HTML page they share."""
