"""Compact rows: the text rows for a terminal (or --compact), fitted to a
width. The columns a reader can spare give way: DEST_MAC is left out, the
skb address is its low 8 hex digits, a long interface or --names label and
an address too long for PKT_INFO have their middle elided ("~"); TRACE_INFO
wraps under itself; where the width leaves it too little room (narrower
than about 120 columns), TRACE_INFO goes on the lines under the row,
indented by TRACE_INDENT, and in less than about 70 PKT_INFO too. Made
from a row's columns (textrow.RowColumns), in Python only; rows to a pipe
or a file keep the original format (textrow.ROW_FORMAT). The man page's
COMPACT ROWS says the same numbers."""

from ..story.fit import is_terminal, terminal_width, wrap

WIDTH = 120             # --compact's width when neither the terminal nor --width says
TIME_WIDTH = {False: 8, True: 10}   # -T's HH:MM:SS, -t's seconds (up to 999.999999)
NETNS_WIDTH = 10        # an inode: at most 10 digits
SKB_DIGITS = 8          # the low hex digits of the skb address shown
TRACE_INDENT = 9        # lines under the row: under NETWORK_NS, deeper than a stack's 4
TRACE_WIDTH = 37        # one-line layout: TRACE_INFO's room (0a63da00.0:7.filter.PREROUTING.ACCEPT)
PKT_WIDTH = (40, 56)    # one-line layout: PKT_INFO's narrowest and widest
ELIDED = "~"
GAP = " "


def elide(text, width):
    """text in at most width characters: its middle replaced by ELIDED
    (the end kept a little longer: a port, a veth's suffix)."""
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    tail = width // 2
    return text[:width - 1 - tail] + ELIDED + text[-tail:]


def fit_pkt_info(text, width):
    """PKT_INFO in width: the protocol's prefix kept, the middles of the two
    addresses elided, each as little as it can."""
    if len(text) <= width:
        return text
    prefix, colon, rest = text.partition(":")       # a prefix has no ':' (T_ACK,PSH: U: 17:)
    source, arrow, destination = rest.partition("->")
    room = width - len(prefix) - len(colon) - len(arrow)
    if not arrow or room < 8:
        return elide(text, width)
    source_room = max(room // 2, room - len(destination))
    destination_room = room - min(source_room, len(source))
    return (prefix + colon + elide(source, source_room) + arrow
            + elide(destination, destination_room))


class CompactRows:
    """The compact layout for width columns. names: the NETWORK_NS column
    holds --names labels (wider than an inode); relative: -t's times."""

    def __init__(self, width, names=False, relative=False):
        self.width = width
        self.time_width = TIME_WIDTH[relative]
        wide = width >= WIDTH
        self.netns_width = (16 if wide else 12) if names else NETNS_WIDTH
        self.ifname_width = 12 if wide else 10
        front = self.time_width + self.netns_width + self.ifname_width + 3 * len(GAP)
        # one line when TRACE_INFO has its room beside the narrowest PKT_INFO
        self.one_line = width - front - PKT_WIDTH[0] - len(GAP) >= TRACE_WIDTH
        if self.one_line:
            # PKT_INFO takes what TRACE_INFO can spare (TRACE_WIDTH), but at
            # least a TCP row of short addresses (T_ACK,PSH:10.0.0.1:41234->...)
            self.pkt_width = max(PKT_WIDTH[0], min(PKT_WIDTH[1],
                                                    width - front - len(GAP) - TRACE_WIDTH))
        else:
            self.pkt_width = width - front
        # narrower still (under 70 columns or so): PKT_INFO under the row too
        self.pkt_below = self.pkt_width < PKT_WIDTH[0] - 8
        if self.pkt_below:
            self.pkt_width = width - TRACE_INDENT

    def header(self):
        return self.lines("time", "NETWORK_NS", "INTERFACE", "PKT_INFO", "TRACE_INFO")

    def row(self, columns):
        """The lines (joined by newlines) of a row's columns (textrow.RowColumns)."""
        skb = columns.skb[-SKB_DIGITS:].rjust(SKB_DIGITS, "0")
        return self.lines(columns.time, str(columns.netns), columns.ifname, columns.pkt_info,
                          skb + columns.trace)

    def lines(self, time, netns, ifname, pkt_info, trace):
        front = GAP.join((time.ljust(self.time_width), elide(netns, self.netns_width).ljust(
            self.netns_width), elide(ifname, self.ifname_width).ljust(self.ifname_width)))
        indent = " " * TRACE_INDENT
        if self.pkt_below:
            return "\n".join([front.rstrip(), indent + fit_pkt_info(pkt_info, self.pkt_width)]
                             + [indent + line for line in wrap(trace, self.pkt_width, 0)])
        # a time longer than its column (-t past 1000 s) is taken from PKT_INFO's
        pkt_width = self.pkt_width - max(0, len(time) - self.time_width)
        first = front + GAP + fit_pkt_info(pkt_info, pkt_width).ljust(pkt_width)
        room = self.width - len(first) - len(GAP)
        if self.one_line and max(len(word) for word in trace.split(" ")) <= room:
            # TRACE_INFO in its column, wrapped under itself
            pieces = wrap(trace, room, 0)
            at = " " * (len(first) + len(GAP))
            return "\n".join([first + GAP + pieces[0]] + [at + line for line in pieces[1:]])
        # under the row (a word that does not fit the column is not cut there)
        return "\n".join([first.rstrip()] + [indent + line for line in
                                              wrap(trace, self.width - TRACE_INDENT, 0)])


def rows_layout(cfg, stream):
    """The CompactRows for rows written to stream, or None (the original
    format): compact on a terminal or with --compact, --width columns wide
    (default: the terminal's, else WIDTH)."""
    if not (cfg.compact or is_terminal(stream)):
        return None
    width = cfg.width or terminal_width(stream, WIDTH)
    return CompactRows(width, names=cfg.names, relative=cfg.timestamp)
