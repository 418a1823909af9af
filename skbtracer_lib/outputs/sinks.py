"""The outputs of a run as sinks: the text rows, JSON lines, pcapng (-w) and
the story on stderr, each with the same few methods, called by the run
loop (session.Session) in the order of its list:

    start(start_object)  before the first event: the header row, the JSON
                         start object (None: -r writes none), the pcapng
                         section
    event(event, raw, row, stack, line)
                         one event (only sinks with `needs`): the decoded
                         Event, its raw bytes (None for saved events), and
                         what the sinks need made, before any sink writes:
                         its text row, its kernel stack's symbols (or None)
                         and its JSON line (None where no sink needs them)
    flush()              between the reader's polls: whatever is pending
    story(told, lines)   at exit: the story model and its lines on stderr
    end(end_object)      the JSON end object (None: none), the last flush
    exit_line()          what is said at exit of where it went, or None

A write that fails raises: BrokenPipeError (the reader went, `| head`),
files.OutputError (the rows cannot be written: the trace fails) or
SinkFailed (this sink is done; it says why at exit, the others go on).

A new output format to a file is one sink here and its row in FILE_OUTPUTS,
and its flag (config.flags' table, and its Config field and file check in
config); live tracing and -r then feed it alike.
"""

from collections import namedtuple

from .. import story
from ..events import conntrack
from ..events.compact import rows_layout
from ..events.textrow import HEADER, RowFormatter
from ..story import latency
from . import jsonl, rotate
from .files import OutputError, bytes_writer, line_sink, open_new_file


class SinkFailed(Exception):
    """This sink cannot go on (said at exit by its exit_line(), exit 1);
    the trace stops, the other sinks finish."""


# What stops a sink: see the module's docstring
SINK_ERRORS = (BrokenPipeError, OutputError, SinkFailed)


class Sink:
    """The methods every sink has, doing nothing. needs: what event() reads:
    "event" (the Event and raw bytes only), "row" (the text row too), "line"
    (the JSON line too); empty: event() is not called. (event()'s arguments
    are the event's parts, not an object holding them: it runs per event.)"""

    needs = frozenset()
    closed = False          # set by the loop when a write failed: not called again
    failure = None          # SinkFailed's text, said at exit

    def start(self, start_object):
        pass

    def event(self, event, raw, row, stack, line):
        pass

    def flush(self):
        pass

    def story(self, told, lines):
        pass

    def end(self, end_object):
        self.flush()

    def exit_line(self):
        return None


class StoryText(Sink):
    """The packets' story on stderr."""

    def __init__(self, err):
        self.err = err

    def story(self, told, lines):
        self.err.write("\n".join(lines) + "\n")


class TextRows(Sink):
    """The text rows (the original tool's columns), a header first; rows
    already made (in C, or from the raw bytes) come in through write_bytes()
    and write_text(). compact: a compact.CompactRows (a terminal, --compact):
    the rows are made of their columns (textrow.Row), in its layout."""

    needs = frozenset({"row"})

    def __init__(self, stream, what, said=None, compact=None, rotation=None):
        self.out = line_sink(stream, what, rotation)
        self.write_text = self.out.write        # rows with their newlines
        self.write_bytes = bytes_writer(self.out)
        self.said = said
        self.compact = compact
        self.rotation = rotation

    def start(self, start_object):
        header = (HEADER if self.compact is None else self.compact.header()) + "\n"
        if self.rotation is not None:
            self.out.preamble = header.encode()     # each file begins with it
        self.out.write(header)

    def event(self, event, raw, row, stack, line):
        if self.compact is not None:
            row = self.compact.row(row.columns)
        if stack is None:
            self.out.write(row + "\n")
        else:
            self.out.write("\n".join([row] + RowFormatter.stack_lines(stack)) + "\n")

    def flush(self):
        self.out.flush()

    def exit_line(self):
        return rotated_said(self.said, self.rotation)


def rotated_said(said, rotation):
    """An exit line naming a file, and its older files (--rotate)."""
    if said is None or rotation is None:
        return said
    return said + rotation.said()


def wants_columns(sinks):
    """Does a sink make its rows of their columns (a textrow.Row each, not
    the row's text: compact rows)?"""
    return any(isinstance(sink, TextRows) and sink.compact is not None for sink in sinks)


class JsonLines(Sink):
    """JSON lines: the start object, one object per event, the story's
    objects and the end object (jsonl)."""

    needs = frozenset({"line"})

    def __init__(self, stream, what, said=None, rotation=None):
        self.out = line_sink(stream, what, rotation)
        self.said = said
        self.rotation = rotation

    def start(self, start_object):
        if start_object is not None:
            line = jsonl.dumps(start_object) + "\n"
            if self.rotation is not None:
                # each file begins with it: -r reads any file of the set alone
                self.out.preamble = line.encode()
            self.out.write(line)

    def event(self, event, raw, row, stack, line):
        self.out.write(line + "\n")

    def flush(self):
        self.out.flush()

    def story(self, told, lines):
        self._last_file()
        objects = [jsonl.dumps(latency.with_hops(obj, told)) for obj in story.story_objects(told)]
        self.out.write("\n".join(objects) + "\n")
        self.out.flush()

    def end(self, end_object):
        self._last_file()
        if end_object is not None:
            self.out.write(jsonl.dumps(end_object) + "\n")
        self.out.flush()

    def _last_file(self):
        """The story and the end object go whole into the newest file,
        after the events (--rotate: whatever its size)."""
        self.out.flush()
        if self.rotation is not None:
            self.out.rotation = None

    def exit_line(self):
        return rotated_said(self.said, self.rotation)


class Pcapng(Sink):
    """-w: every event as a packet block (its row the comment, with the
    skb's conntrack entry: conntrack.comment_suffix), the story in the
    section's comment (capture.PcapngWriter). ct_in_row: --ct, the rows
    end in the entry's state and NAT already."""

    needs = frozenset({"row"})

    def __init__(self, file, path, snaplen, probe_names, label, wall_ns, ct_in_row=False,
                 rotation=None):
        from . import capture       # python3-dpkt: needed by -w only (config checks it is there)
        self.path = path
        self.ct_in_row = ct_in_row
        self.rotation = rotation
        self.failed_with = capture.CaptureError
        self.writer = capture.PcapngWriter(file, snaplen, probe_names, label=label,
                                           wall_ns=wall_ns, rotation=rotation)

    def start(self, start_object):
        self._write(self.writer.start)

    def event(self, event, raw, row, stack, line):
        self.writer.add(event, raw, row + conntrack.comment_suffix(event, self.ct_in_row))

    def flush(self):
        self._write(self.writer.flush)

    def story(self, told, lines):
        self._write(lambda: self.writer.write_story(lines))

    def _write(self, write):
        """A failure ends the trace; the file keeps the blocks written before."""
        try:
            write()
        except self.failed_with as e:
            self.failure = ("-w/--write: cannot write %r: %s; it holds the first %d packets, "
                            "complete" % (self.path, e, self.writer.packets))
            raise SinkFailed(self.failure) from None

    def exit_line(self):
        return self.failure or rotated_said("%d packets written to %s" % (
            self.writer.packets, self.path), self.rotation)


# -- the outputs the flags name

FileOutput = namedtuple("FileOutput", "attribute flag binary sink")
FileOutput.__doc__ = """A file a flag names: the Config attribute holding its path
("-": stdout, not a file), the flag as errors name it, whether it takes
bytes, and sink(cfg, file, source, rotation) -> its Sink (None: the rows' own
file; rotation: its rotate.Rotation, or None)."""


def _json_file(cfg, file, source, rotation):
    return JsonLines(file, "--json: cannot write %r" % cfg.json,
                     said="JSON lines written to %s" % cfg.json, rotation=rotation)


def _pcapng_file(cfg, file, source, rotation):
    info = source.loaded.info
    return Pcapng(file, cfg.write, info.capture_bytes, info.probe_names, source.names.label,
                  source.clock.wall_ns, ct_in_row=cfg.ct, rotation=rotation)


FILE_OUTPUTS = (
    FileOutput("output", "-o/--output", False, None),
    FileOutput("json", "--json", False, _json_file),
    FileOutput("write", "-w/--write", True, _pcapng_file),
)


def file_path(cfg, output):
    """The path of output's file, or None (not named, or stdout)."""
    path = getattr(cfg, output.attribute)
    return path if path not in (None, "-") else None


class Opened(dict):
    """{Config attribute: file}; rotations: {Config attribute: rotate.Rotation}
    of the files written under --rotate."""

    def __init__(self):
        super().__init__()
        self.rotations = {}


def open_outputs(cfg, files):
    """Opened: the files the flags name (opened with files.open_new_file:
    created, never through a symlink); every file opened (or its Rotation)
    is appended to files, to be closed. FileError when one cannot be."""
    opened = Opened()
    for output in FILE_OUTPUTS:
        path = file_path(cfg, output)
        if not path:
            continue
        if cfg.rotate and cfg.force:
            rotate.remove_old_set(output.flag, path)
        opened[output.attribute] = f = open_new_file(output.flag, path, cfg.force,
                                                     binary=output.binary)
        files.append(f)
        if cfg.rotate:
            opened.rotations[output.attribute] = rotation = rotate.Rotation(
                output.flag, path, cfg.rotate, cfg.rotate_files, output.binary, f)
            files.append(rotation)
    return opened


def make_sinks(cfg, out, err, files, source):
    """The sinks of a run, in the order the loop calls them: the story on
    stderr (unless --no-summary), the rows (text, or JSON lines with --json)
    on out, then one per file in files ({Config attribute: file}, as
    open_outputs made it). source: the run's source of events (what a sink
    may read of the run: see session.py)."""
    sinks = [StoryText(err)] if cfg.summary else []
    rotations = getattr(files, "rotations", {})
    what = ("-o/--output: cannot write %r" % cfg.output if cfg.output
            else "cannot write to stdout")
    said = "rows written to %s" % cfg.output if cfg.output else None
    rotation = rotations.get("output") if cfg.output else None
    if cfg.json == "-":
        sinks.append(JsonLines(out, what, said, rotation=rotation))
    else:
        sinks.append(TextRows(out, what, said, compact=rows_layout(cfg, out),
                              rotation=rotation))
    for output in FILE_OUTPUTS:
        file = files.get(output.attribute)
        if file is not None and output.sink is not None:
            sinks.append(output.sink(cfg, file, source, rotations.get(output.attribute)))
    return sinks
