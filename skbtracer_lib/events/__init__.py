"""The event path: events read in batches from the BPF ring buffer (reader),
their fields described once (fields) and decoded (decode), the names of
their numbers (vocabulary), and the text row made of them (textrow, and the
same rows in C: _rows.c)."""
