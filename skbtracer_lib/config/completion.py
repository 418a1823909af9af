"""Bash completion for skbtracer, generated from the flag table
(config.flags.FLAGS) so the flags are written once. The Debian package runs this at build time;
from a checkout or a venv:

    source <(/usr/bin/python3 -m skbtracer_lib.config.completion)
"""

import sys

from .. import __version__
from .flags import FILE, FLAGS, NETNS

TEMPLATE = """\
# bash completion for skbtracer(8) %(version)s: generated from its argparse
# flags by skbtracer_lib/completion.py; regenerate it rather than edit it.
_skbtracer()
{
    # $2: the word being completed (after '=' in --flag=VALUE, since bash
    # splits words at the '=' of COMP_WORDBREAKS)
    local cur=$2 option= assigned= i=$COMP_CWORD
    if [[ ${COMP_WORDS[i]} == = ]]; then
        assigned=1
    elif (( i > 1 )) && [[ ${COMP_WORDS[i-1]} == = ]]; then
        assigned=1
        ((i--))
    fi
    (( i > 0 )) && option=${COMP_WORDS[i-1]}
    if [[ $cur == --*=* ]]; then        # '=' not in COMP_WORDBREAKS
        option=${cur%%%%=*}
        cur=${cur#*=}
        assigned=1
    fi
    case $option in
%(cases)s
    esac
    COMPREPLY=($(compgen -W "%(flags)s" -- "$cur"))
}
complete -F _skbtracer skbtracer skbtracer.py
"""

FILE_REPLY = 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
NETNS_REPLY = ('if [[ $cur == /* ]]; then %s; else COMPREPLY=($(compgen -W '
               '"$(ip netns list 2>/dev/null | cut -d" " -f1)" -- "$cur")); fi' % FILE_REPLY)


def value_reply(flag):
    """The shell that completes flag's value ("COMPREPLY=()": nothing to
    guess, as addresses and numbers)."""
    if flag.complete == FILE:
        return FILE_REPLY
    if flag.complete == NETNS:
        return NETNS_REPLY
    if flag.complete:
        return 'COMPREPLY=($(compgen -W "%s" -- "$cur"))' % " ".join(flag.complete)
    return "COMPREPLY=()"


def bash(flags=FLAGS):
    names, cases = [], []
    for flag in flags:
        if flag.hidden or not flag.names[0].startswith("-"):
            continue
        names += flag.names
        if not flag.takes_value:
            continue                        # a switch (-h and --version too)
        pattern = "|".join(flag.names)
        if flag.value_optional:
            # an optional value only as --flag=VALUE: "--json FILE" is --json and FILE
            cases.append("        %s) [[ $assigned ]] && { %s; return; };;"
                         % (pattern, value_reply(flag)))
        else:
            cases.append("        %s) %s; return;;" % (pattern, value_reply(flag)))
    return TEMPLATE % {"version": __version__, "cases": "\n".join(cases),
                       "flags": " ".join(names)}


if __name__ == "__main__":
    sys.stdout.write(bash())
