"""StoryBook: the events kept while tracing, for the story at exit."""

from ..events.decode import EVENT_SIZE, Event
from .points import MAX_EVENTS


class StoryBook:
    """Collects events while tracing; add() is on the per-event path.

    It keeps the raw bytes when it gets them (bytes are not tracked by
    Python's cyclic garbage collector, decoded Event objects are: a hundred
    thousand of them kept alive make every full collection walk them all)
    and decodes them again at exit.
    """

    def __init__(self, names=None, limit=MAX_EVENTS):
        self.kept = []                  # raw bytes (or Event objects)
        self.limit = limit
        self.beyond = 0                 # events not kept (limit reached)
        self.names = names
        self._labels = names.labels if names is not None else _Everything()

    def add(self, event, raw=None):
        """A decoded event, kept as its raw bytes where they are given."""
        if raw is not None:
            self.add_raw(raw, event.netns)
            return
        self.kept.append(event)
        if event.netns not in self._labels:
            self.names.label(event.netns)

    def add_raw(self, raw, netns):
        """Raw bytes of an event in namespace netns; only the event is kept
        (-w's records carry the packet after it)."""
        self.kept.append(raw[:EVENT_SIZE])
        if netns not in self._labels:
            self.names.label(netns)   # name a new namespace while it exists

    def add_batch(self, raws, netns):
        """Events' raw bytes (a list), and the set of their namespaces."""
        self.kept.extend(raws)
        for number in netns:
            if number not in self._labels:
                self.names.label(number)

    def trim(self):
        """Drop what is beyond the limit (called between polls, not per event)."""
        extra = len(self.kept) - self.limit
        if extra > 0:
            self.beyond += extra
            del self.kept[self.limit:]

    def __len__(self):
        return len(self.kept)

    @property
    def events(self):
        """The kept events, decoded."""
        self.trim()
        return [Event(x) if isinstance(x, bytes) else x for x in self.kept]


class _Everything:
    """A set that holds everything (no namespace names to look up)."""

    def __contains__(self, _item):
        return True
