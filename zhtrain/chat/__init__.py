"""Chat data: its layouts on disk (data), and conversations rendered into ids and labels (format)."""
