"""rpclib: the operator's command. Inspect the bus; list, show, replay and purge dead letters.

    rpclib inspect URL [TOPIC]           live servers, versions, caps, queue depths
    rpclib dead-letters URL list         the dead letters, oldest first, with their keys
    rpclib dead-letters URL show KEY     one of them: reason, attempts, decoded header
    rpclib dead-letters URL replay KEY…  send them back to their queues (one more attempt)
    rpclib dead-letters URL purge KEY…   delete them (--all: every one)

``--json`` prints what a script reads; ``--debug`` shows tracebacks. What a
transport cannot tell (queue depths on etcd://, topics without naming one on
a transport that does not list them) is said in one line, never guessed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

import rpclib
from rpclib import envelope
from rpclib.directory import ServerAdvert, TopicView
from rpclib.exceptions import MalformedMessage, MessagingError
from rpclib.transports.base import CannotTell, DeadLetter, Driver

PROG = "rpclib"
_REASON_WIDTH = 60
_HEADER_NAMES = {
    envelope.METHOD: "method",
    envelope.NAMESPACE: "namespace",
    envelope.VERSION: "version",
    envelope.CONTEXT: "context",
    envelope.DEADLINE: "deadline",
    envelope.TIMEOUT: "timeout",
    envelope.REPLY_TO: "reply_to",
    envelope.AT_LEAST_ONCE: "at_least_once",
    envelope.SENT_AT: "sent_at",
    envelope.FAILED: "failed",
    envelope.PRIORITY: "priority",
    envelope.EVENT_TYPE: "event_type",
    envelope.PUBLISHER: "publisher",
}
"""The envelope's short header keys, spelled out for people (unknown keys stay as they are)."""
_RESOLVE_LIMIT = 10_000
"""Dead letters read to find the one a key names (the transports keep at most 10,000)."""


class CommandError(Exception):
    """A one-line failure of the command (printed as ``error: ...``)."""


# --- what the bus says -------------------------------------------------------------------


def operator_driver(driver: Driver) -> Driver:
    """The transport's own driver under wrappers (signing) that add no operator capability."""
    inner = getattr(driver, "inner", None)
    return inner if isinstance(inner, Driver) else driver


def topic_view(transport: rpclib.Transport, exchange: str, topic: str) -> TopicView:
    """The live servers of ``topic`` now (the driver reports them before its watch returns)."""
    view = TopicView(exchange, topic)
    watch = transport.driver.watch_adverts(exchange, topic, view.on_advert)
    watch.close()
    return view


def topic_report(transport: rpclib.Transport, exchange: str, topic: str) -> dict[str, Any]:
    """One topic: its live servers, the cap ``auto`` picks per interface, its queues."""
    view = topic_view(transport, exchange, topic)
    servers = sorted(view.live(), key=lambda a: a.server)
    caps = []
    majors = sorted(
        {(ns or "", v.major) for a in servers for ns, vs in a.interfaces.items() for v in vs}
    )
    for ns, major in majors:
        cap = view.cap(ns or None, major)
        caps.append(
            {
                "namespace": ns or None,
                "major": major,
                "cap": str(cap.version) if cap.version is not None else None,
                "reason": cap.reason,
            }
        )
    report: dict[str, Any] = {
        "topic": topic,
        "servers": [_server(a) for a in servers],
        "caps": caps,
        "objects": view.object_manifest() or {},
    }
    try:
        depths = operator_driver(transport.driver).queue_depths(
            exchange, topic, [a.server for a in servers]
        )
        report["queues"] = [
            {
                "queue": d.queue,
                "messages": d.messages,
                "consumers": d.consumers,
                "unsettled": d.unsettled,
            }
            for d in depths
        ]
    except CannotTell as exc:
        report["queues"] = None
        report["queues_unknown"] = str(exc)
    return report


def _server(advert: ServerAdvert) -> dict[str, Any]:
    return {
        "server": advert.server,
        "host": advert.host or None,
        "pid": advert.pid or None,
        "started_at": advert.started_at,
        "interfaces": {
            ns or "": [str(v) for v in sorted(versions)]
            for ns, versions in sorted(advert.interfaces.items(), key=lambda kv: kv[0] or "")
        },
        "objects": dict(sorted(advert.objects.items())),
    }


def letter_summary(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as ``list`` shows it; ``header`` is the decoded envelope header."""
    summary: dict[str, Any] = {
        "key": letter.key,
        "address": letter.address,
        "attempts": letter.attempts,
        "reason": letter.reason,
        "bytes": len(letter.body),
    }
    try:
        env = envelope.decode(letter.body)
    except (MalformedMessage, MessagingError, ValueError) as exc:
        summary["kind"] = None
        summary["undecodable"] = str(exc)
        return summary
    summary["kind"] = env.kind.name
    summary["message_id"] = env.message_id.hex()
    summary["header"] = {
        _HEADER_NAMES.get(str(k), str(k)): _plain(v) for k, v in env.header.items()
    }
    return summary


def _plain(value: Any) -> Any:
    """A header value as JSON can hold it (bytes as hex)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


# --- rendering ----------------------------------------------------------------------------


def render(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [[str(h) for h in headers]] + [["?" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _since(started_at: float | None, now: float) -> str:
    if started_at is None:
        return "?"
    when = dt.datetime.fromtimestamp(started_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{when} ({_age(now - started_at)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _interfaces(interfaces: dict[str, list[str]]) -> str:
    return " ".join(f"{ns or '(default)'}={','.join(vs)}" for ns, vs in interfaces.items()) or "-"


def print_inspection(report: dict[str, Any], out: TextIO, now: float) -> None:
    for topic in report["topics"]:
        out.write(f"topic {report['exchange']}/{topic['topic']}\n")
        if not topic["servers"]:
            out.write("  no live server\n")
        else:
            rows = [
                (
                    s["server"],
                    s["host"],
                    s["pid"],
                    _since(s["started_at"], now),
                    _interfaces(s["interfaces"]),
                    " ".join(f"{k}={v}" for k, v in s["objects"].items()) or "-",
                )
                for s in topic["servers"]
            ]
            out.write(
                _indent(render(("server", "host", "pid", "since", "interfaces", "objects"), rows))
            )
            caps = [
                (c["namespace"] or "(default)", c["major"], c["cap"] or "none", c["reason"])
                for c in topic["caps"]
            ]
            out.write(
                _indent(render(("namespace", "major", "auto cap", "because"), caps), blank=True)
            )
        if topic["queues"] is None:
            out.write(f"  queues: {topic['queues_unknown']}\n")
        elif topic["queues"]:
            depths = [
                (q["queue"], q["messages"], q["consumers"], q["unsettled"]) for q in topic["queues"]
            ]
            out.write(
                _indent(render(("queue", "ready", "consumers", "unsettled"), depths), blank=True)
            )
        out.write("\n")
    count = report["dead_letters"]
    if count is None:
        out.write(f"dead letters: {report['dead_letters_unknown']}\n")
    else:
        more = "+" if count >= report["dead_letter_limit"] else ""
        out.write(f"dead letters: {count}{more} (rpclib dead-letters URL list)\n")


def _indent(text: str, *, blank: bool = False) -> str:
    body = "\n".join("  " + line for line in text.splitlines()) + "\n"
    return ("\n" + body) if blank else body


# --- commands -----------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    with rpclib.get_transport(args.url) as transport:
        exchange = args.exchange
        if args.topic:
            topics = [args.topic]
        else:
            try:
                topics = operator_driver(transport.driver).advertised_topics(
                    exchange, listen=args.listen
                )
            except CannotTell as exc:
                raise CommandError(f"{exc}; name a topic: rpclib inspect URL TOPIC") from None
        now = time.time()
        report: dict[str, Any] = {
            "exchange": exchange,
            "topics": [topic_report(transport, exchange, t) for t in topics],
            "dead_letter_limit": args.limit,
        }
        try:
            report["dead_letters"] = len(operator_driver(transport.driver).dead_letters(args.limit))
        except NotImplementedError as exc:
            report["dead_letters"] = None
            report["dead_letters_unknown"] = str(exc)
    if args.json:
        json.dump(report, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        if not topics:
            out.write(f"no topic of exchange {exchange!r} has a live server\n")
        print_inspection(report, out, now)
    return 0


def cmd_dead_letters(args: argparse.Namespace, out: TextIO) -> int:
    with rpclib.get_transport(args.url) as transport:
        driver = operator_driver(transport.driver)
        action = args.action
        try:
            if action == "list":
                return _list(driver.dead_letters(args.limit), args, out)
            if action == "show":
                return _show(driver.dead_letters(args.limit), args, out)
            keys = [_resolve(driver, key) for key in args.keys]
            if action == "replay":
                for key in keys:
                    letter = driver.replay_dead_letter(key)
                    out.write(
                        f"replayed {key} to {letter.address} (attempt {letter.attempts + 1})\n"
                    )
                return 0
            if not args.all and not args.keys:
                raise CommandError("purge needs dead-letter keys, or --all")
            if args.all and args.keys:
                raise CommandError("purge takes keys or --all, not both")
            count = driver.purge_dead_letters(None if args.all else keys)
            out.write(f"purged {count} dead letter{'s' if count != 1 else ''}\n")
            return 0
        except CannotTell as exc:
            raise CommandError(f"{exc} (rpclib dead-letters {action})") from None


def _list(letters: list[DeadLetter], args: argparse.Namespace, out: TextIO) -> int:
    summaries = [letter_summary(letter) for letter in letters]
    if args.json:
        json.dump(summaries, out, indent=2, sort_keys=True)
        out.write("\n")
        return 0
    if not summaries:
        out.write("no dead letters\n")
        return 0
    rows = [
        (
            s["key"],
            s["address"],
            s["attempts"],
            _what(s),
            _short(s["reason"]),
        )
        for s in summaries
    ]
    out.write(render(("key", "from", "attempts", "message", "reason"), rows) + "\n")
    return 0


def _what(summary: dict[str, Any]) -> str:
    header = summary.get("header")
    if header is None:
        return f"undecodable, {summary['bytes']} bytes"
    method = header.get("method")
    version = header.get("version")
    kind = str(summary["kind"]).lower()
    return f"{kind} {method} v{version}" if method else kind


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_WIDTH else text[: _REASON_WIDTH - 1] + "…"


def _resolve(driver: Driver, key: str) -> str:
    """The full key of the one dead letter whose key starts with ``key``."""
    return _match(driver.dead_letters(_RESOLVE_LIMIT), key).key


def _match(letters: list[DeadLetter], key: str) -> DeadLetter:
    matches = {letter.key: letter for letter in letters if letter.key.startswith(key)}
    if not key or not matches:
        raise CommandError(f"no dead letter with key {key!r} (rpclib dead-letters URL list)")
    if len(matches) > 1:
        raise CommandError(f"key {key!r} is the start of more than one dead letter's key")
    return next(iter(matches.values()))


def _show(letters: list[DeadLetter], args: argparse.Namespace, out: TextIO) -> int:
    summary = letter_summary(_match(letters, args.key))
    if args.json:
        json.dump(summary, out, indent=2, sort_keys=True)
        out.write("\n")
        return 0
    out.write(f"key:       {summary['key']}\n")
    out.write(f"from:      {summary['address']}\n")
    out.write(f"attempts:  {summary['attempts']}\n")
    out.write(f"reason:    {summary['reason']}\n")
    out.write(f"size:      {summary['bytes']} bytes\n")
    if summary["kind"] is None:
        out.write(f"envelope:  not decodable: {summary['undecodable']}\n")
        return 0
    out.write(f"kind:      {summary['kind']}\n")
    out.write(f"id:        {summary['message_id']}\n")
    out.write("header:\n")
    for name, value in sorted(summary["header"].items()):
        out.write(f"  {name}: {json.dumps(value, sort_keys=True)}\n")
    return 0


# --- the command line ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {rpclib.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = sub.add_parser("inspect", parents=[common], help="show the live servers of the bus")
    inspect.add_argument("url", metavar="URL", help="transport URL (e.g. rabbit://user:pw@host/)")
    inspect.add_argument("topic", metavar="TOPIC", nargs="?", help="default: every topic")
    inspect.add_argument("--exchange", default="rpclib", help="default: %(default)s")
    inspect.add_argument(
        "--listen",
        type=_seconds,
        default=12.0,
        metavar="SECONDS",
        help="without TOPIC, how long rabbit:// listens for advert refreshes (default 12; "
        "servers refresh every 10 s)",
    )
    inspect.add_argument("--limit", type=_count, default=1000, help=argparse.SUPPRESS)
    dead = sub.add_parser("dead-letters", parents=[common], help="list, show, replay, purge")
    dead.add_argument("url", metavar="URL", help="transport URL")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = actions.add_parser("list", parents=[common], help="the dead letters, oldest first")
    show = actions.add_parser("show", parents=[common], help="one dead letter, decoded")
    show.add_argument("key", metavar="KEY", help="its key (or a unique start of it)")
    replay = actions.add_parser(
        "replay", parents=[common], help="send dead letters back to their queues"
    )
    replay.add_argument("keys", metavar="KEY", nargs="+")
    purge = actions.add_parser("purge", parents=[common], help="delete dead letters")
    purge.add_argument("keys", metavar="KEY", nargs="*")
    purge.add_argument("--all", action="store_true", help="every dead letter")
    for p in (lst, show):
        p.add_argument(
            "--limit", type=_count, default=1000, help="read at most this many (default 1000)"
        )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < 3600:
        raise argparse.ArgumentTypeError(f"seconds must be in [0, 3600), got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; 0 on success, 1 on a one-line error, 2 on a usage error."""
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.json = getattr(args, "json", False)
    try:
        if args.command == "inspect":
            return cmd_inspect(args, out)
        return cmd_dead_letters(args, out)
    except (CommandError, MessagingError, NotImplementedError, ValueError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a library or broker error without a class of its own here
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "render", "topic_report", "topic_view"]
