"""The mod in the game-layout harness under real LÖVE 11.4, against the real jimbus.

Each test starts the jimbus binary ($JIMBUS_BIN) on loopback with free ports and a
temp data dir, plays scripted games with `love mod/tests/game ...` (headless),
and checks what the server stored by reading it back as a subscriber
(`jimbus tail PATTERN --from-start --count N --grpc http://...`). Every wait polls
a condition with a deadline; nothing sleeps to synchronise.

Run: JIMBUS_BIN=target/debug/jimbus python3 -m unittest -v mod/tests/game/test_love.py
Needs: the `love` Debian package (LÖVE 11.4); the disk-full case needs root (tmpfs).
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BIN = os.environ.get("JIMBUS_BIN") or str(ROOT / "target/debug/jimbus")
LOVE = os.environ.get("LOVE_BIN", "love")
PHASES = {"SELECTING_HAND", "HAND_PLAYED", "DRAW_TO_HAND", "GAME_OVER", "SHOP", "PLAY_TAROT", "BLIND_SELECT",
          "ROUND_EVAL", "TAROT_PACK", "PLANET_PACK", "MENU", "TUTORIAL", "SPLASH", "SANDBOX", "SPECTRAL_PACK",
          "DEMO_CTA", "STANDARD_PACK", "BUFFOON_PACK", "NEW_ROUND"}
# Small timings so outages and recoveries take a second, not a minute.
FAST = ["cfg.stats_interval_ms=50", "cfg.breaker_reset_ms=200", "cfg.retry_delay_ms=50",
        "cfg.backoff_max_ms=300", "cfg.request_timeout_ms=3000"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)  # polling interval, not synchronisation: the condition decides
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def field(obj, name):
    """A field of the JSON a subscriber prints (protobuf JSON: lowerCamelCase)."""
    if obj is None:
        return None
    camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
    return obj.get(camel, obj.get(name))


class Server:
    """The real jimbus on loopback; ports are chosen before it starts, so a game
    can be pointed at a server that is not up yet."""

    def __init__(self):
        self.http, self.grpc = free_port(), free_port()
        self.data = tempfile.mkdtemp(prefix="jimbus-love-")
        self.proc = None
        self.url = f"http://127.0.0.1:{self.http}/api/v1/events"

    def start(self):
        with open(os.path.join(self.data, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--http", f"127.0.0.1:{self.http}", "--grpc", f"127.0.0.1:{self.grpc}",
                 "--data-dir", os.path.join(self.data, "d")], stdout=log, stderr=log)
        poll(self._ready, 30, "jimbus /ready")
        return self

    def _ready(self):
        assert self.proc.poll() is None, "jimbus exited: " + self.log()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metric(self, name):
        """The sum of a metric's samples in /metrics; this read is one connection."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + " ", name + "{")))

    def log(self):
        try:
            return Path(self.data, "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    def tail(self, pattern, count, timeout=30):
        """Reads `count` deliveries of `pattern` from the start, as a subscriber."""
        proc = subprocess.Popen([BIN, "tail", pattern, "--from-start", "--count", str(count),
                                 "--grpc", f"http://127.0.0.1:{self.grpc}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(lines) == count, f"tail {pattern}: {len(lines)} of {count} deliveries; stderr: {err[-500:]}"
        return lines

    def hands(self, session, count, timeout=30):
        """The first `count` aggregated messages of a session that hold a hand
        (windows that flushed only game state or legacy triggers are skipped)."""
        proc = subprocess.Popen([BIN, "tail", f"balatro.{session}.aggregated", "--from-start",
                                 "--grpc", f"http://127.0.0.1:{self.grpc}"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = []
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                msg = field(json.loads(line), "aggregated")
                if field(field(msg, "cascade_info"), "hand_type"):
                    found.append(msg)
                if len(found) == count:
                    break
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
        assert len(found) == count, f"{len(found)} of {count} aggregated hands for {session}"
        return found

    def events(self, session, count):
        """The raw events of a session, in stored order."""
        return [field(d, "event") for d in self.tail(f"balatro.{session}.> -balatro.*.aggregated", count)]


class Game:
    """One `love mod/tests/game` process; its "@@ " lines are JSON for the tests."""

    def __init__(self, save_home, *args):
        env = dict(os.environ, XDG_DATA_HOME=str(save_home))
        self.proc = subprocess.Popen([LOVE, str(HERE), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines, self.json = [], []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("@@ "):
                self.json.append(json.loads(line[3:]))

    def find(self, event):
        return next((j for j in self.json if j.get("event") == event), None)

    def wait(self, timeout=120):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the game did not finish:\n" + self.text())
        self.reader.join(5)
        self.proc.stdout.close()
        return rc

    def text(self):
        return "\n".join(self.lines[-60:])

    def finish(self, test, timeout=120):
        rc = self.wait(timeout)
        test.assertEqual(rc, 0, "game exit status\n" + self.text())
        report = self.find("report")
        test.assertIsNotNone(report, self.text())
        test.assertEqual(report["missing_hooks"], [], "every hook found its function")
        test.assertTrue(report["script_done"], "the game played its whole script\n" + self.text())
        return report

    def log_lines(self, needle):
        return [line for line in self.lines if needle in line]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        if not self.proc.stdout.closed:
            self.proc.stdout.close()


def sequences_whole(test, events, session, emitted):
    """Every emitted event arrived once, in order: client sequences 1..N, one session."""
    test.assertEqual(len(events), emitted)
    ids = [field(e, "event_id") for e in events]
    test.assertEqual(len(set(ids)), len(ids), "no event arrived twice")
    test.assertEqual([int(field(e, "client_sequence")) for e in events], list(range(1, emitted + 1)))
    test.assertTrue(all(field(e, "session_id") == session for e in events))
    seqs = [int(field(e, "sequence")) for e in events]
    test.assertEqual(seqs, sorted(seqs), "stored in emission order")


def scoring(e):
    return field(field(e, "scoring"), "joker_trigger") if field(e, "scoring") else None


def hands(test, events):
    """Splits raw events into hands: each START, its triggers, its COMPLETE."""
    out, cur = [], None
    for e in events:
        sub = field(e, "subtype")
        if sub == "HAND_EVAL_START":
            test.assertIsNone(cur, "a hand started inside a hand")
            cur = {"start": e, "triggers": []}
        elif sub == "JOKER_TRIGGER":
            test.assertIsNotNone(cur, "a scoring trigger outside a hand")
            cur["triggers"].append(scoring(e))
        elif sub == "HAND_EVAL_COMPLETE":
            test.assertIsNotNone(cur, "a COMPLETE without START")
            cur["complete"] = field(field(e, "scoring"), "hand_eval_complete")
            out.append(cur)
            cur = None
    test.assertIsNone(cur, "a hand never completed")
    return out


def trigger_view(t):
    joker = field(t, "joker") or {}
    return (field(joker, "name"), int(field(joker, "position") or 0), field(t, "context"), field(t, "parent") or None)


def book_view(t):
    return (t["joker"], t["position"], t["context"], t.get("parent"))


class LoveHarness(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="love-save-"))
        self.servers, self.games = [], []

    def tearDown(self):
        for g in self.games:
            g.kill()
        for s in self.servers:
            s.close()
        subprocess.run(["umount", str(self.tmp / "full")], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def server(self):
        s = Server()
        self.servers.append(s)
        return s

    def small_disk(self):
        """A 64 KiB tmpfs as the save folder (root with CAP_SYS_ADMIN, as in CI)."""
        save = self.tmp / "full"
        save.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(save)],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, f"cannot mount a small tmpfs for the full-disk case: {r.stderr}")
        return save

    def game(self, save, *args):
        g = Game(save, *args)
        self.games.append(g)
        return g

    def test_a_round_arrives_whole_in_order_with_every_hand_bracketed(self):
        srv = self.server().start()
        accepted = srv.metric("jimbus_http_connections_accepted_total")
        g = self.game(self.tmp / "a", "scenario=round", "url=" + srv.url, *FAST)
        report = g.finish(self)
        st, book = report["status"], report["book"]
        # The worker keeps one connection for all its requests (each metric
        # read is a connection of its own).
        self.assertEqual(srv.metric("jimbus_http_connections_accepted_total") - accepted - 1, 1)
        self.assertGreaterEqual(srv.metric("jimbus_ingest_requests_total"), 3)
        self.assertEqual(st["dropped"], 0)
        self.assertEqual(st["worker"]["pending"], 0)
        events = srv.events(st["session"], st["emitted"])
        sequences_whole(self, events, st["session"], st["emitted"])
        types = [field(e, "event_type") for e in events]
        # hands: START, every trigger the game's jokers returned (in order), COMPLETE
        got = hands(self, events)
        self.assertEqual(len(got), 2)
        for hand, want in zip(got, book["hands"]):
            self.assertEqual([trigger_view(t) for t in hand["triggers"]], [book_view(t) for t in want["triggers"]])
            self.assertEqual(int(field(hand["complete"], "triggers")), len(want["triggers"]))
            self.assertEqual(field(hand["complete"], "final_mult"), want["mult"])
            self.assertEqual(field(field(field(hand["start"], "scoring"), "hand_eval_start"), "hand_type"),
                             want["hand_type"])
        contexts = {t[2] for h in got for t in map(trigger_view, h["triggers"])}
        self.assertEqual(contexts, {"before", "repetition", "individual", "joker_main", "other_joker", "after"})
        self.assertTrue(any(trigger_view(t)[3] == "Blueprint" for h in got for t in h["triggers"]))
        self.assertTrue(any(field(t, "x_mult") or (field(t, "extra") or {}).get("x_mult")
                            for h in got for t in h["triggers"]), "x_mult is carried")
        self.assertEqual(types.count("SCORE_CHANGED"), 2)
        self.assertEqual(types.count("HAND_PLAYED"), 2)
        self.assertEqual(types.count("CARDS_DISCARDED"), 1)
        self.assertEqual(types.count("ROUND_COMPLETE"), 1)
        self.assertEqual(types.count("JOKER_TRIGGER"), book["legacy"], "triggers outside a hand: legacy")
        # money: old/new as the game applied them, though several were queued at once
        money = [field(e, "money_changed") for e in events if field(e, "event_type") == "MONEY_CHANGED"]
        self.assertEqual([(m.get("oldValue", 0), m.get("newValue", 0)) for m in money],
                         [(b["old"], b["new"]) for b in book["money"]])
        self.assertGreaterEqual(len(money), 5)
        # phases are names
        phases = [field(e, "phase_changed") for e in events if field(e, "event_type") == "PHASE_CHANGED"]
        self.assertTrue(phases and all(field(p, "new_phase") in PHASES for p in phases), phases)
        self.assertIn("SHOP", [field(p, "new_phase") for p in phases])
        beats = [field(e, "heartbeat") for e in events if field(e, "event_type") == "HEARTBEAT"]
        self.assertTrue(beats and all(field(b, "game_state") in PHASES | {""} for b in beats), beats)
        # GAME_STATE: at start, on state changes, after plays and purchases, with heartbeats
        states = [e for e in events if field(e, "event_type") == "GAME_STATE"]
        reasons = [field(field(field(s, "game_state"), "extra"), "reason").split(",") for s in states]
        for r in ("start", "state_change", "hand_scored", "purchase", "heartbeat"):
            self.assertIn(r, sum(reasons, []))
        self.assertEqual(sum(1 for r in reasons if "start" in r or "state_change" in r), len(phases),
                         "one GAME_STATE for every state change")
        self.assertEqual(sum(1 for r in reasons if "hand_scored" in r), 2, "one after each scored hand")
        bought = next(s for s, r in zip(states, reasons) if "purchase" in r)
        gs = field(bought, "game_state")
        extra = field(gs, "extra")
        self.assertIn("Golden Ticket", [field(j, "name") for j in field(gs, "jokers")])
        self.assertEqual(extra["seed"], "HARNESS1")
        self.assertIn("consumables", extra)
        self.assertIn("shop", extra)
        self.assertGreater(int(field(field(gs, "deck"), "size")), 0)
        self.assertIn("ability", field(field(gs, "jokers")[0], "extra"), "joker properties")
        self.assertEqual(types.count("CARD_PURCHASED"), 1)
        # the field mod's connection test went to /api/v1/events at start
        self.assertEqual(field(field(srv.tail("balatro.*.connection_test", 1)[0], "event"), "source"), "BalatroMCP")
        # the aggregated stream: one message per hand, its triggers in order
        for msg, want in zip(srv.hands(st["session"], 2), book["hands"]):
            self.assertEqual([(field(t, "joker_name"), field(t, "context")) for t in field(msg, "triggers")],
                             [(t["joker"], t["context"]) for t in want["triggers"]])

    def test_a_500_trigger_hand_is_one_aggregated_message(self):
        srv = self.server().start()
        g = self.game(self.tmp / "a", "scenario=cascade", "triggers=500", "url=" + srv.url, *FAST)
        st = g.finish(self)["status"]
        events = srv.events(st["session"], st["emitted"])
        sequences_whole(self, events, st["session"], st["emitted"])
        got = hands(self, events)
        self.assertEqual([len(h["triggers"]) for h in got], [500])
        [msg] = srv.hands(st["session"], 1)
        triggers = field(msg, "triggers")
        self.assertEqual(len(triggers), 500)
        seqs = [int(field(t, "sequence")) for t in triggers]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 500)
        info = field(msg, "cascade_info")
        self.assertEqual(int(field(info, "trigger_count")), 500)
        self.assertTrue(field(info, "complete"))

    def test_server_down_for_a_whole_game_then_everything_arrives_after_a_restart(self):
        srv = self.server()  # not started: its port is closed
        save = self.tmp / "a"
        g1 = self.game(save, "scenario=game", "rounds=2", "wait=none", "url=" + srv.url, *FAST)
        quit1 = g1.finish(self) and g1.find("quit")
        self.assertLess(quit1["quit_ms"], 300, "quitting waits at most ~200 ms")
        first = quit1["status"]
        self.assertEqual(first["dropped"], 0)
        if first["quit"]["answered"]:  # (else the worker's last counters are older than its quit)
            self.assertEqual(first["worker"]["on_disk"] + first["quit"]["saved"], first["emitted"],
                             "everything unsent is on disk")
        srv.start()
        g2 = self.game(save, "scenario=replay", "url=" + srv.url, *FAST)
        second = g2.finish(self)["status"]
        self.assertEqual(second["worker"]["loaded"], first["emitted"])
        events = srv.events(first["session"], first["emitted"])
        sequences_whole(self, events, first["session"], first["emitted"])
        self.assertEqual(len(hands(self, events)), 4)
        self.assertEqual(list((save / "love/BalatroHarness/BalatroMCP/spill").glob("*.q")), [], "the spill is gone")

    def test_a_game_quitting_during_a_hung_request_loses_nothing(self):
        hung = socket.socket()  # accepts connections (backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        self.addCleanup(hung.close)
        save = self.tmp / "a"
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/api/v1/events"
        g1 = self.game(save, "scenario=round", "wait=none", "url=" + url, *FAST, "cfg.request_timeout_ms=10000")
        g1.finish(self)
        quit1 = g1.find("quit")
        self.assertLess(quit1["quit_ms"], 300, "quitting waits at most ~200 ms")
        first = quit1["status"]
        srv = self.server().start()
        g2 = self.game(save, "scenario=replay", "url=" + srv.url, *FAST)
        g2.finish(self)
        events = srv.events(first["session"], first["emitted"])
        sequences_whole(self, events, first["session"], first["emitted"])

    def test_two_games_sharing_a_save_folder_lose_nothing_through_an_outage(self):
        srv = self.server()
        save = self.tmp / "shared"
        games = [self.game(save, "scenario=game", "rounds=2", "url=" + srv.url, "timeout_s=100", *FAST)
                 for _ in range(2)]
        poll(lambda: all(g.find("played") for g in games), 60, "both games to play while the server is down")
        srv.start()
        reports = [g.finish(self, 120) for g in games]
        sessions = [r["status"]["session"] for r in reports]
        self.assertNotEqual(sessions[0], sessions[1])
        for r in reports:
            st = r["status"]
            self.assertEqual(st["dropped"], 0)
            self.assertEqual(st["worker"]["pending"], 0, "the worker did not stall")
            self.assertGreater(st["worker"]["failures"], 0, "it did see the outage")
            events = srv.events(st["session"], st["emitted"])
            sequences_whole(self, events, st["session"], st["emitted"])
            self.assertEqual(len(hands(self, events)), 4)

    def test_two_games_quit_during_an_outage_and_two_restarts_replay_both(self):
        srv = self.server()
        save = self.tmp / "shared"
        first = [self.game(save, "scenario=game", "rounds=1", "wait=none", "url=" + srv.url, *FAST) for _ in range(2)]
        quits = [(g.finish(self), g.find("quit")["status"])[1] for g in first]
        srv.start()
        again = [self.game(save, "scenario=replay", "url=" + srv.url, *FAST) for _ in range(2)]
        for g in again:
            g.finish(self)
        for game, st in zip(first, quits):
            try:
                events = srv.events(st["session"], st["emitted"])
            except AssertionError as missing:
                # Seen once in CI (2026-12-04), never again in runs here: the
                # games' own words are what can tell which side kept the events.
                logs = "\n".join(f"--- {g.text()[-3000:]}" for g in [game, *again])
                raise AssertionError(f"{missing}\nthe quitting game's, then the replays' logs:\n{logs}") from None
            sequences_whole(self, events, st["session"], st["emitted"])

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "mounting a tmpfs needs root (CI runs as root)")
    def test_a_full_disk_never_stops_the_game_and_drops_are_counted(self):
        save = self.small_disk()
        srv = self.server()  # down: everything has to be spilled, and the disk is full
        g = self.game(save, "scenario=cascade", "triggers=3000", "wait=dropped", "url=" + srv.url,
                      "cfg.memory_queue_cap=200", *FAST)
        report = g.finish(self)
        w = report["status"]["worker"]
        self.assertGreater(w["dropped"], 0, "drops are counted")
        self.assertGreater(w["spill_failures"], 0, "the disk refused writes")
        self.assertTrue(report["status"]["worker_alive"])
        self.assertGreater(report["frames"], 3)
        drops = len(g.log_lines("DROP event"))
        final = g.find("quit")["status"]["worker"]["dropped"]
        self.assertTrue(1 <= drops <= 1 + final // 1000, f"the first drop and every 1000th are logged: {drops}, {final}")

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "mounting a tmpfs needs root (CI runs as root)")
    def test_a_full_disk_with_the_server_up_loses_nothing(self):
        save = self.small_disk()
        (save / "love/BalatroHarness/BalatroMCP/spill").mkdir(parents=True)
        fd = os.open(save / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 512):  # until nothing more fits
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        srv = self.server().start()
        g = self.game(save, "scenario=round", "url=" + srv.url, *FAST)
        st = g.finish(self)["status"]
        self.assertGreater(st["worker"]["spill_failures"], 0, "the disk refused the write-ahead")
        self.assertEqual(st["dropped"] + st["worker"]["dropped"], 0)
        events = srv.events(st["session"], st["emitted"])
        sequences_whole(self, events, st["session"], st["emitted"])

    def test_the_game_goes_on_when_its_worker_dies(self):
        srv = self.server().start()
        g = self.game(self.tmp / "a", "scenario=game", "rounds=2", "crash_after=3", "wait=dead",
                      "url=" + srv.url, *FAST)
        report = g.finish(self)
        st = report["status"]
        self.assertFalse(st["worker_alive"])
        self.assertIn("crashed on request", st["worker_error"])
        self.assertGreater(st["dropped"], 0, "events after the worker died are counted as dropped")
        self.assertEqual(report["actions"], 14, "every action of the script ran after the crash")
        self.assertEqual(len(g.log_lines("network worker stopped")), 1, "logged once")
        self.assertEqual(len(g.log_lines("the network worker cannot take events")), 1)
        quit = g.find("quit")
        self.assertLess(quit["quit_ms"], 300)

    def test_events_rejected_inside_a_200_are_logged_with_reasons(self):
        srv = self.server().start()
        g = self.game(self.tmp / "a", "scenario=round", "ante=-3", "url=" + srv.url, *FAST)
        st = g.finish(self)["status"]
        self.assertGreater(st["worker"]["rejected"], 0)
        lines = g.log_lines("rejected by the server")
        self.assertEqual(len(lines), st["worker"]["rejected"])
        self.assertTrue(all("ante" in line for line in lines), lines)


if __name__ == "__main__":
    unittest.main(verbosity=2)
