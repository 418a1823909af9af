"""-r FILE ...: read saved JSON lines (--json) back, print their rows and
tell the packets' story exactly as the live run over the same events would:
the events become the same Event objects the live session feeds its
StoryBook with, and the story is told by the same Session code.

No root, no bcc, no kernel: nothing here loads BPF or reads the running
kernel (drop reason names and symbols come from the saved events).

Several files (nodes) make one story: merge.py estimates each node's clock
offset from packets both nodes saw and puts every event on the first
node's clock; a packet that left one node and arrived on another is one
packet (matched by its headers, see merge.py).
"""
