#!/usr/bin/python3
"""Documents generated at build time from snapstore's own argparse parser, so
they cannot drift from the command: the man page snapstore(1), a section per
command, and the bash completion of the commands and their options.

    PYTHONPATH=. python3 debian/gendocs.py OUTDIR

writes OUTDIR/snapstore.1 and OUTDIR/completions/snapstore. The page's date
is the changelog's (SOURCE_DATE_EPOCH, which dpkg-buildpackage sets), so a
rebuild gives the same bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from snapstore import __version__, config
from snapstore.cli import build_parser, common

# What the page says besides the options (DESIGN §4 and §6).
EXIT_STATUS = [
    ("0", "success (also: nothing to change)"),
    ("1", "problems found or operation refused; nothing was changed "
          "(check: warnings only)"),
    ("2", "usage or environment error: bad option, unknown domain, unusable folder, bad settings"),
    ("3", "check: errors found"),
]
DESCRIPTION = [
    "libvirt's qemu driver keeps one XML file per snapshot and marks the current one inside it, "
    "so a crash while the current snapshot changes can leave zero or two current snapshots. "
    "snapstore keeps every snapshot of a domain in one file, replaced atomically (temporary file, "
    "fsync, rename, folder fsync), and converts between the two layouts both ways, losslessly. "
    "Checkpoints are kept the same way (--checkpoints).",
    "The snapstore service (snapstore.service, \"snapstore daemon\") keeps the consolidated files "
    "in step with libvirt's folders. Every error is one line on stderr, "
    "\"snapstore: <file or domain>: <what> (<code>)\"; -v adds the debug log.",
]


def roff(text: str) -> str:
    """Text for a roff line: backslashes and minus signs escaped, and no line
    that starts with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {action.dest: action.help or "" for action in subparsers._choices_actions}


def nested(command: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The actions of a command that has them (``fleet init``, ``fleet list``…), else {}."""
    found = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def sections(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each command, or each action of a command that has actions: its parser and summary."""
    found = {}
    for name, command in commands_of(parser).items():
        actions = nested(command)
        if not actions:
            found[name] = (command, summaries(parser)[name])
        found.update((f"{name} {action}", (sub, summaries(command)[action])) for action, sub in actions.items())
    return found


def global_dests() -> set[str]:
    return {action.dest for action in common.global_options(suppress=True)._actions}


def own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's own arguments: not the global options every command repeats, nor -h."""
    shared = global_dests()
    return [a for a in parser._actions if a.dest not in shared and not isinstance(a, argparse._HelpAction)]


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


def invocation(action: argparse.Action) -> str:
    """``\\fB\\-c\\fR, \\fB\\-\\-connect\\fR \\fIURI\\fR``, argparse's way of naming an argument."""
    if not action.option_strings:
        return f"\\fI{roff(action.metavar or action.dest)}\\fR"
    names = ", ".join(f"\\fB{roff(name)}\\fR" for name in action.option_strings)
    if action.nargs == 0:
        return names
    return f"{names} \\fI{roff(action.metavar or action.dest.upper())}\\fR"


def synopsis_word(action: argparse.Action) -> str:
    if not action.option_strings:
        word = f"\\fI{roff(action.metavar or action.dest)}\\fR"
        return f"[{word} ...]" if action.nargs in ("*", "+") else word
    # The long name where there is one: the option as scripts spell it.
    name = f"\\fB{roff(max(action.option_strings, key=len))}\\fR"
    if action.nargs != 0:
        name += f" \\fI{roff(action.metavar or action.dest.upper())}\\fR"
    return name if action.required else f"[{name}]"


def synopsis_order(actions: list[argparse.Action]) -> list[argparse.Action]:
    """Options first, then the positional arguments, as argparse's usage line has them."""
    return [a for a in actions if a.option_strings] + [a for a in actions if not a.option_strings]


def options_list(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    lines = []
    for action in actions:
        text = expanded_help(parser, action)
        if text:  # a bare DOMAIN is in the synopsis
            lines += [".TP", invocation(action), roff(text)]
    return lines


def man_page(parser: argparse.ArgumentParser, date: str) -> str:
    commands = commands_of(parser)
    summary = summaries(parser)
    top = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    lines = [
        f'.TH SNAPSTORE 1 "{date}" "snapstore {__version__}" "User Commands"',
        ".SH NAME",
        "snapstore \\- " + roff((parser.description or "").rstrip(".")).lower(),
        ".SH SYNOPSIS",
        ".B snapstore",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
    ]
    for paragraph in DESCRIPTION:
        lines += [".PP", roff(paragraph)]
    lines += [".PP", "Commands (each has its section under COMMANDS):"]
    for name in commands:
        lines += [".TP 14", f"\\fB{roff(name)}\\fR", roff(summary[name])]
    lines += [".SH GLOBAL OPTIONS", "Accepted before or after the command."]
    lines += options_list(parser, top)
    lines += [".SH COMMANDS"]
    for name, (command, said) in sections(parser).items():
        actions = own_actions(command)
        lines += [f".SS {name}", ".PP",
                  " ".join([f"\\fBsnapstore {roff(name)}\\fR"] + [synopsis_word(a) for a in synopsis_order(actions)]),
                  ".PP", roff(command.description or said)]
        lines += options_list(command, actions)
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    defaults = config.Config()
    lines += [
        ".SH FILES",
        ".TP", f"\\fI{roff(str(config.DEFAULT_PATH))}\\fR",
        roff("Settings (TOML), read when it exists; the installed file lists every setting, commented out, "
             "with its default. Unknown keys are an error."),
        ".TP", f"\\fI{roff(str(defaults.state_dir))}\\fR",
        roff("The state folder (the service's StateDirectory=): snapshots/ and checkpoints/ (one consolidated "
             "file per domain), history/, locks/ and attic/ (files set aside, never deleted by snapstore)."),
        ".TP", f"\\fI{roff(str(defaults.libvirt_dir))}\\fR, \\fI{roff(str(defaults.checkpoint_dir))}\\fR",
        roff("libvirt's per-snapshot and per-checkpoint files, which snapstore reads (and expand writes)."),
        ".SH SEE ALSO",
        "\\fBvirsh\\fR(1), \\fBsystemctl\\fR(1); "
        + roff("the unit snapstore.service; /usr/share/doc/snapstore/README.md (every command in detail)."),
    ]
    return "\n".join(lines) + "\n"


def bash_words(words: list[str]) -> str:
    for word in words:
        assert word.replace("-", "").replace("_", "").isalnum(), word  # nothing bash would read as syntax
    return " ".join(words)


def completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion: command names, each command's options, and files or
    folders after an option whose value is a FILE or DIR."""

    def kinds(actions: list[argparse.Action]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {"options": [], "files": [], "dirs": [], "valued": [], "actions": []}
        for action in actions:
            for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else []:
                for kind, words in kinds(sub._actions).items():  # a command's actions: their options, merged
                    found[kind] += [word for word in words if word not in found[kind]]
            if isinstance(action, argparse._SubParsersAction):
                found["actions"] += list(action.choices or {})
                continue
            found["options"] += action.option_strings
            if action.option_strings and action.nargs != 0:
                kind = {"FILE": "files", "DIR": "dirs"}.get(action.metavar or "", "valued")
                found[kind] += action.option_strings
        return found

    def case_arm(name: str, found: dict[str, list[str]]) -> str:
        return (f"        {name})\n"
                + "".join(f"            {kind}=\"{bash_words(words)}\"\n" for kind, words in found.items())
                + "            ;;\n")

    commands = commands_of(parser)
    arms = case_arm('""', kinds(parser._actions))
    arms += "".join(case_arm(name, kinds(command._actions)) for name, command in commands.items())
    global_valued = kinds(common.global_options(suppress=True)._actions)
    skip = bash_words(global_valued["files"] + global_valued["dirs"] + global_valued["valued"])
    return f"""\
# bash completion for snapstore(1): generated at build time from its parser (debian/gendocs.py).
_snapstore() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local command="" word i options files dirs valued actions
    # The command: the first word that is neither an option nor a global option's value.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case " {skip} " in
            *" $word "*) ((i++)); continue ;;
        esac
        [[ $word == -* ]] && continue
        command=$word
        break
    done
    case $command in
{arms.rstrip()}
        *) return 0 ;;
    esac
    COMPREPLY=()
    if [[ " $dirs " == *" $prev "* ]]; then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
    elif [[ " $files " == *" $prev "* ]]; then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    elif [[ " $valued " == *" $prev "* ]]; then
        return 0  # a URI or a generation: nothing to offer
    elif [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
    elif [[ -n $actions && $prev == "$command" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$actions" -- "$cur")
    elif [[ -z $command ]]; then
        mapfile -t COMPREPLY < <(compgen -W "{bash_words(list(commands))}" -- "$cur")
    fi
    return 0
}}
complete -F _snapstore snapstore
"""


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: PYTHONPATH=. python3 debian/gendocs.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    (out / "completions").mkdir(parents=True, exist_ok=True)
    os.environ["COLUMNS"] = "80"  # argparse's formatting must not depend on the build's terminal
    parser = build_parser()
    when = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))
    (out / "snapstore.1").write_text(man_page(parser, time.strftime("%Y-%m-%d", when)), encoding="utf-8")
    (out / "completions" / "snapstore").write_text(completion(parser), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
