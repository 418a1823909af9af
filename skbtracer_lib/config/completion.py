"""Bash completion for skbtracer, generated from config.build_parser() so
the flags are written once. The Debian package runs this at build time;
from a checkout or a venv:

    source <(/usr/bin/python3 -m skbtracer_lib.config.completion)
"""

import argparse
import sys

from .. import __version__, config

# What a flag's value completes to, by its metavar or dest; values we cannot
# guess (addresses, numbers) complete to nothing.
WORDS = {"proto": " ".join(config.L4_PROTOCOLS), "backend": " ".join(config.BACKENDS)}
FILES = {"FILE"}
NETNS = {"NS"}

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


def value_reply(action):
    """The shell that completes action's value ("COMPREPLY=()": nothing to offer)."""
    if action.dest in WORDS:
        return 'COMPREPLY=($(compgen -W "%s" -- "$cur"))' % WORDS[action.dest]
    if action.metavar in FILES:
        return FILE_REPLY
    if action.metavar in NETNS:
        return NETNS_REPLY
    return "COMPREPLY=()"


def bash(parser=None):
    parser = parser or config.build_parser()
    flags, cases = [], []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flags += action.option_strings
        if action.nargs == 0:
            continue                        # a switch (-h and --version too)
        if action.nargs == "?":
            # an optional value only as --flag=VALUE: "--json FILE" is --json and FILE
            cases.append("        %s) [[ $assigned ]] && { %s; return; };;"
                         % ("|".join(action.option_strings), value_reply(action)))
        else:
            cases.append("        %s) %s; return;;"
                         % ("|".join(action.option_strings), value_reply(action)))
    return TEMPLATE % {"version": __version__, "cases": "\n".join(cases),
                       "flags": " ".join(flags)}


if __name__ == "__main__":
    sys.stdout.write(bash())
