"""On-disk formats, one module each: file names, keys, the one reader and writer, and the "bad file" message."""
