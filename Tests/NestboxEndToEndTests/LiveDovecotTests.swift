#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest

/// Nestbox delivering into a mailbox while real Dovecot IMAP sessions work on it: Dovecot's
/// `imap` binary (preauthenticated, on a pipe) polls, sets flags and expunges while several
/// LMTP clients deliver through nestbox-lmtpd. Dovecot syncs the Maildir whenever it likes, so
/// a file that appears in new/ before the uidlist names it is numbered by Dovecot and then a
/// second time by the deliverer: Dovecot logs "Duplicate file entry" and the message changes
/// UID under the client's feet. Checked here while it happens, not after the fact.
final class LiveDovecotTests: XCTestCase {
    static let imapBinary = "/usr/lib/dovecot/imap"

    /// Drives everything from one script: delivering LMTP clients, two IMAP sessions (one
    /// polling with NOOP every 20 ms, one setting \Seen and expunging every tenth message) and a
    /// doveadm loop. Prints JSON: the LMTP replies that were not 250, every UID each
    /// Message-ID was seen under, which Message-IDs were expunged, and each session's errors.
    /// Usage: live.py <port> <imap> <dovecot.conf> <home> <clients> <per-client> <imap-log>
    static let script = #"""
    import json, os, re, socket, subprocess, sys, threading, time

    port, imap, conf, home = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    clients, per, imaplog = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    env = {"USER": "alice", "HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    log = open(imaplog, "ab")
    lock = threading.Lock()
    seen = {}          # Message-ID -> set of UIDs
    expunged = set()
    failures = []
    delivering = threading.Event()
    delivering.set()

    def lmtp(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            f = s.makefile("rb")
            def reply():
                while True:
                    line = f.readline().decode()
                    if not line:
                        raise EOFError("server closed")
                    if len(line) < 4 or line[3] != "-":
                        return line.strip()
            reply()
            s.sendall(b"LHLO live.test\r\n"); reply()
            for i in range(per):
                mid = "<live-%d-%d@test>" % (n, i)
                s.sendall(("MAIL FROM:<s@test>\r\nRCPT TO:<alice>\r\nDATA\r\n").encode())
                for want in ("250", "250", "354"):
                    r = reply()
                    if not r.startswith(want):
                        with lock: failures.append("lmtp %s: %s" % (mid, r))
                body = "Message-ID: %s\r\nSubject: live %d %d\r\n\r\nbody\r\n.\r\n" % (mid, n, i)
                s.sendall(body.encode())
                r = reply()
                if not r.startswith("250"):
                    with lock: failures.append("lmtp %s: %s" % (mid, r))
            s.sendall(b"QUIT\r\n"); reply()
        except Exception as e:
            with lock: failures.append("lmtp client %d: %r" % (n, e))

    class Imap:
        def __init__(self):
            self.p = subprocess.Popen([imap, "-c", conf], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=log)
            self.n = 0
            self.p.stdout.readline()  # * PREAUTH
        def cmd(self, text):
            self.n += 1
            tag = b"t%d" % self.n
            self.p.stdin.write(tag + b" " + text.encode() + b"\r\n")
            self.p.stdin.flush()
            out = b""
            while True:
                line = self.p.stdout.readline()
                if not line:
                    raise EOFError("imap closed")
                m = re.search(rb"\{(\d+)\}\r\n$", line)
                if m:
                    line += self.p.stdout.read(int(m.group(1)))
                    out += line
                    continue
                out += line
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise RuntimeError("%s -> %s" % (text, line.decode(errors="replace").strip()))
                    return out
        def fetch(self):
            out = self.cmd("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            found = []
            for m in re.finditer(rb"UID (\d+) FLAGS \(([^)]*)\) BODY\[HEADER\.FIELDS \(MESSAGE-ID\)\] \{\d+\}\r\nMessage-ID: (<[^>]*>)", out):
                uid, flags, mid = int(m.group(1)), m.group(2).decode(), m.group(3).decode()
                with lock: seen.setdefault(mid, set()).add(uid)
                found.append((uid, flags, mid))
            return found
        def close(self):
            try: self.cmd("LOGOUT")
            except Exception: pass
            self.p.wait(timeout=10)

    def poller():
        try:
            s = Imap(); s.cmd("SELECT INBOX")
            i = 0
            while delivering.is_set():
                s.cmd("NOOP")
                i += 1
                if i % 5 == 0: s.fetch()
                time.sleep(0.02)
            s.cmd("NOOP"); s.fetch(); s.close()
        except Exception as e:
            with lock: failures.append("poller: %r" % e)

    def flagger():
        try:
            s = Imap(); s.cmd("SELECT INBOX")
            while True:
                last = not delivering.is_set()
                doomed = []
                for uid, flags, mid in s.fetch():
                    if "\\Seen" not in flags:
                        s.cmd("UID STORE %d +FLAGS.SILENT (\\Seen)" % uid)
                    if int(mid.split("-")[2].split("@")[0]) % 10 == 3:
                        doomed.append((uid, mid))
                for uid, mid in doomed:
                    s.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
                if doomed:
                    s.cmd("EXPUNGE")
                    with lock: expunged.update(mid for _, mid in doomed)
                if last: break
                time.sleep(0.02)
            s.close()
        except Exception as e:
            with lock: failures.append("flagger: %r" % e)

    def doveadm():
        while delivering.is_set():
            subprocess.run(["doveadm", "-c", conf, "mailbox", "status", "messages", "INBOX"],
                           env=env, stdout=subprocess.DEVNULL, stderr=log)
            time.sleep(0.05)

    watchers = [threading.Thread(target=t) for t in (poller, flagger, doveadm)]
    for t in watchers: t.start()
    senders = [threading.Thread(target=lmtp, args=(n,)) for n in range(clients)]
    for t in senders: t.start()
    for t in senders: t.join()
    delivering.clear()
    for t in watchers: t.join(timeout=120)
    print(json.dumps({"failures": failures, "seen": {k: sorted(v) for k, v in seen.items()},
                      "expunged": sorted(expunged)}))
    """#

    func testDovecotSessionsWhileDeliveringSeeEveryMessageUnderOneUID() throws {
        guard Harness.isRoot else {
            XCTFail("needs root (nestbox-lmtpd binds, then becomes vmail): run the suite as root (as CI does)")
            return
        }
        guard FileManager.default.isExecutableFile(atPath: Self.imapBinary) else {
            XCTFail("Dovecot's imap binary is missing (Debian package dovecot-imapd)")
            return
        }
        let port = try Net.freeLoopbackPort()
        let fixture = try DeliverFixture("live")
        try fixture.set("servername", "live.example.test")
        try fixture.set("lmtp_listen", "127.0.0.1:\(port)")
        try fixture.set("duplicatesuppression", "yes")
        let home = try fixture.makeUser("alice")
        let server = LMTPDaemon(configPath: fixture.configPath, logPath: "\(fixture.dir)/lmtpd.log", socketPath: nil, port: port)
        try server.start()
        defer { server.stop() }
        let dovecot = try Dovecot(mailRoot: home)
        let imapLog = "\(fixture.dir)/imap.log"
        let clients = 3, perClient = 100
        let r = try Python.run(Self.script, name: "live.py", in: fixture.dir,
                               [String(port), Self.imapBinary, dovecot.configPath, home, String(clients), String(perClient), imapLog],
                               timeout: 300)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let failures = json["failures"] as? [String], let seen = json["seen"] as? [String: [Int]],
              let expunged = json["expunged"] as? [String] else {
            XCTFail("no report from the script: \(r.stdout) \(r.stderr)")
            return
        }
        XCTAssertEqual(failures, [])
        // Dovecot's own verdict, from its log: every complaint about the uidlist.
        let complaints = Harness.read(imapLog).split(separator: "\n").filter {
            $0.contains("dovecot-uidlist") || $0.contains("Duplicate file entry") || $0.contains("Error") || $0.contains("Panic")
        }
        XCTAssertEqual(complaints.count, 0, "Dovecot complained:\n" + complaints.prefix(20).joined(separator: "\n"))
        // Every message the sessions saw, under exactly one UID.
        let twice = seen.filter { $0.value.count != 1 }
        XCTAssertEqual(twice.count, 0, "messages seen under several UIDs: " + twice.prefix(10).map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        XCTAssertEqual(seen.count, clients * perClient, "messages the IMAP sessions saw")
        // The expunges hit their messages; every other message is there once.
        let left = try dovecot.fetch("uid hdr.message-id", mailbox: "INBOX")
        let ids = left.compactMap { $0["hdr.message-id"]?.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(Set(ids).count, ids.count, "a message is stored twice")
        XCTAssertEqual(ids.count, clients * perClient - expunged.count)
        XCTAssertTrue(Set(ids).isDisjoint(with: Set(expunged)), "an expunged message is still there")
        XCTAssertEqual(expunged.count, clients * perClient / 10)
        // And the list itself names each file once.
        let list = Harness.read("\(home)/dovecot-uidlist").split(separator: "\n").dropFirst()
        let stems = list.compactMap { $0.split(separator: ":", maxSplits: 1).last.map { $0.split(separator: ":").first ?? $0 } }
        XCTAssertEqual(Set(stems).count, stems.count, "dovecot-uidlist names a file twice")
    }
}
