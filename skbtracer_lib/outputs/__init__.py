"""Where the rows go: whole lines to files (files), the outputs as sinks of
the run loop (sinks: text rows, JSON lines, pcapng, the story), JSON lines
(jsonl), pcapng blocks (capture), files put aside by size (rotate: --rotate)
and the names of namespaces (names)."""
