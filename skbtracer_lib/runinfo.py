"""The interface between a session and the program it reads events from.

A session's source (live.LiveEvents, replay.session.SavedEvents) needs of
its program only:

    info                RunInfo: probe names, what was attached, the backend
    symbolize(address)  'func+0xoff' of a kernel address
    stack(stack_id)     [symbol] of a kernel stack
    lost_events()       events the kernel could not hand over
    watch_modules()     lines to say about probed modules gone or back
    bpf                 the bcc module the events are read from (live runs)

program.Loaded is the real one, replay.SavedLoaded the saved runs' and the
benchmark has its own; RunInfo is what all of them describe themselves with.
"""

from dataclasses import dataclass, field

from .story.points import LOCAL_POINTS, QUEUE_POINTS, story_name


@dataclass(frozen=True)
class ProbeInfo:
    name: str
    kind: str                 # route / iptable / drop / helper
    extra: bool = False       # from --all/--func rather than the built-in set


@dataclass
class RunInfo:
    """probe_names: probe id -> name (the list events index); planned: the
    ProbeInfo of every planned probe (None: one route probe per name, those
    named in saved_extra from --all/--func: -r, where names come with the
    events); attached: the ProbeInfo of those attached."""
    backend: str
    probe_names: list
    attached: list = field(default_factory=list)
    planned: list = None
    capture_bytes: int = 0
    saved_extra: frozenset = frozenset()

    @property
    def attached_names(self):
        return {p.name for p in self.attached}

    @property
    def extra_names(self):
        """The --all/--func functions, sorted."""
        if self.planned is None:
            return sorted(self.saved_extra)
        return sorted(p.name for p in self.planned if p.extra)

    @property
    def iptable_traced(self):
        return any(p.kind == "iptable" for p in self.attached)

    def story_probes(self):
        """(probe names, the names attached, --all/--func names), as the
        story knows them."""
        if self.planned is None:
            extra = self.saved_extra
            return ([story_name(n, n in extra) for n in self.probe_names],
                    {story_name(n, n in extra) for n in self.attached_names},
                    {story_name(n, True) for n in extra})
        names = [story_name(p.name, p.extra) for p in self.planned]
        visible = {story_name(p.name, p.extra) for p in self.attached}
        extra = {story_name(p.name, True) for p in self.planned if p.extra}
        return names, visible, extra

    def unseen(self, cfg, lost=0, beyond=0, limit=0):
        """What a run with these probes and flags could not see, for the
        story's "vanished" and "arrived" verdicts."""
        attached = self.attached_names
        notes = []
        if "kfree_skb" not in attached or "drop" not in cfg.modes:
            notes.append("drops (not traced without --drop)")
        if "consume_skb" not in attached:
            notes.append("normal frees (no consume_skb probe)")
        if not attached & (LOCAL_POINTS | QUEUE_POINTS):
            notes.append("local delivery after a device's receive point (no ip_local_deliver, "
                         "udp_rcv ... probes on the %s backend)" % self.backend)
        elif not attached & QUEUE_POINTS:
            notes.append("datagrams queued to a socket and not yet read (no socket-queue probe)")
        notes += _filter_notes(cfg)
        if lost:
            notes.append("%d lost events" % lost)
        if beyond:
            notes.append(beyond_note(beyond, limit))
        return notes


def beyond_note(beyond, limit):
    """The caveat for events the story did not keep (StoryBook's limit)."""
    return "%d events after the story's first %d" % (beyond, limit)


def _filter_notes(cfg):
    notes = []
    if (cfg.addr is not None or cfg.port is not None) and not cfg.keep:
        if cfg.matches_connection:      # a packet without an entry: another namespace's copy
            notes.append("packets NAT moved out of the -H/-P filters where they carried no "
                         "conntrack entry (--keep follows them)")
        else:
            notes.append("packets NAT moved out of the -H/-P filters (--keep follows them)")
    if cfg.netns is not None:
        notes.append("other namespaces (-N)")
    if cfg.pid is not None:
        notes.append("events outside process %d's context (-p)" % cfg.pid)
    ct_flags = [flag for flag, given in (("--ct-state", cfg.ct_states),
                                         ("--ct-mark", cfg.ct_mark is not None),
                                         ("--ct-zone", cfg.ct_zone is not None)) if given]
    if ct_flags:
        notes.append("a packet's rows without the conntrack entry %s asks for (before "
                     "conntrack saw it, after it left for another namespace)"
                     % "/".join(ct_flags))
    return notes
