#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// nestbox-quota against the real peers: its numbers equal `doveadm quota get` (Dovecot's
/// quota=maildir over the same maildirsize) after deliveries, Dovecot-side expunges and files
/// removed by hand then -f; -f -n writes nothing; limits it sets are enforced by deliveries
/// (temporary, permanent when configured, -q bypassing) and by Dovecot; its Prometheus output is
/// read by a real parser and its JSON by jq; -f beside concurrent deliveries leaves the usage
/// exact.
final class QuotaCommandTests: XCTestCase {
    var fixture: DeliverFixture!
    var home = ""

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard FileManager.default.isExecutableFile(atPath: Harness.binary("nestbox-quota")) else {
            XCTFail("built program not found: \(Harness.binary("nestbox-quota"))")
            throw LMTPTestError("no binary")
        }
        fixture = try DeliverFixture("quota")
        home = try fixture.makeUser("alice", limits: QuotaLimits(), folders: ["Trash"])
    }

    override func tearDown() {
        fixture = nil
        super.tearDown()
    }

    func message(_ n: Int, padding: Int = 0) -> String {
        "From: a@example.org\nSubject: number \(n)\nMessage-ID: <q\(n)@example.org>\n\nbody \(n)\n"
            + String(repeating: "x", count: padding) + "\n"
    }

    func quota(_ arguments: [String]) throws -> Harness.Result {
        try Harness.run(Harness.binary("nestbox-quota"), ["-C", fixture.configPath] + arguments)
    }

    /// (STORAGE value, STORAGE limit, MESSAGE value, MESSAGE limit) as `doveadm quota get`
    /// prints them ("-" for no limit).
    func dovecotQuota(_ dovecot: Dovecot) throws -> [String] {
        let r = try dovecot.doveadm(["-f", "tab", "quota", "get"])
        var out: [String] = []
        for line in r.stdout.split(separator: "\n").dropFirst() {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            XCTAssertGreaterThanOrEqual(f.count, 4, r.stdout)
            if f.count >= 4 { out += [f[2], f[3]] }
        }
        return out
    }

    /// The same four numbers from our JSON report of user/alice.
    func ourQuota() throws -> [String] {
        let r = try quota(["-J", "user/alice"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let root = try XCTUnwrap((json["roots"] as? [[String: Any]])?.first)
        let storage = try XCTUnwrap(root["storage"] as? [String: Any])
        let messages = try XCTUnwrap(root["messages"] as? [String: Any])
        func text(_ v: Any?) -> String { (v as? NSNumber).map { "\($0)" } ?? "-" }
        return [text(storage["usedKiB"]), text(storage["limitKiB"]), text(messages["used"]), text(messages["limit"])]
    }

    func testReportEqualsDoveadmQuotaGetAfterDeliveriesExpungesAndHandRemovals() throws {
        for n in 1...6 { XCTAssertEqual(try fixture.deliver(["alice"], message(n, padding: 700 * n)).status, 0) }
        XCTAssertEqual(try fixture.deliver(["-m", "Trash", "alice"], message(7, padding: 3000)).status, 0)
        let set = try quota(["--set", "STORAGE=20,MESSAGE=50", "user/alice"])
        XCTAssertEqual(set.status, 0, set.stdout + set.stderr)
        let dovecot = try Dovecot(mailRoot: home)
        XCTAssertEqual(try ourQuota(), try dovecotQuota(dovecot))
        XCTAssertEqual(try dovecotQuota(dovecot)[1], "20", "Dovecot reads the limit written by nestbox-quota")

        // Dovecot expunges two messages (it appends its own negative deltas).
        _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "2:3"])
        _ = try dovecot.doveadm(["expunge", "mailbox", "INBOX", "deleted"])
        XCTAssertEqual(try ourQuota(), try dovecotQuota(dovecot))

        // nestbox-purge expunges what Dovecot flagged \Deleted (negative deltas of its own).
        _ = try dovecot.doveadm(["flags", "add", "\\Deleted", "mailbox", "INBOX", "uid", "4"])
        let purge = try Harness.run(Harness.binary("nestbox-purge"), ["-C", fixture.configPath, "-f", "user/alice"])
        XCTAssertEqual(purge.status, 0, purge.stdout + purge.stderr)
        XCTAssertEqual(try ourQuota(), try dovecotQuota(dovecot))
        XCTAssertEqual(try ourQuota()[2], "4", purge.stdout + purge.stderr)

        // A file removed by hand: maildirsize over-counts until -f.
        let files = try ["new", "cur"].flatMap { sub in
            try FileManager.default.contentsOfDirectory(atPath: "\(home)/\(sub)").map { "\(home)/\(sub)/\($0)" }
        }
        try FileManager.default.removeItem(atPath: try XCTUnwrap(files.sorted().last))
        let before = try ourQuota()
        let fix = try quota(["-f", "user/alice"])
        XCTAssertEqual(fix.status, 0, fix.stdout + fix.stderr)
        XCTAssertTrue(fix.stderr.contains("user/alice: MESSAGE usage was 4, now 3"), fix.stderr)
        let after = try ourQuota()
        XCTAssertNotEqual(before, after)
        XCTAssertEqual(after[2], "3")
        // Dovecot recalculates only when asked; after `quota recalc` it agrees with -f.
        _ = try dovecot.doveadm(["quota", "recalc"])
        XCTAssertEqual(try dovecotQuota(dovecot), after)
        // The text report: Cyrus's layout, same figures.
        let text = try quota(["user/alice"])
        XCTAssertEqual(text.stdout.split(separator: "\n").first, "   Quota   % Used     Used Resource Root")
        XCTAssertTrue(text.stdout.contains("      20 ") && text.stdout.contains(" STORAGE  user/alice"), text.stdout)
        XCTAssertTrue(text.stdout.contains("      50        6        3 MESSAGE  user/alice"), text.stdout)
        // -f again changes nothing and says nothing.
        let again = try quota(["-f", "-q", "user/alice"])
        XCTAssertEqual(again.status, 0)
        XCTAssertEqual(again.stderr, "")
    }

    func testFixDryRunWritesNothing() throws {
        for n in 1...4 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        try fixture.writeFile("\(home)/maildirsize", "0S\n1 1\n")
        func checksum() throws -> String {
            try Harness.sh("cd '\(fixture.root)' && find . -printf '%p %s %T@ %m %i\\n' | sort && find . -type f -exec md5sum {} + | sort").stdout
        }
        let before = try checksum()
        let r = try quota(["-f", "-n", "--all"])
        XCTAssertEqual(r.status, 1, "something would change: \(r.stdout) \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("user/alice: MESSAGE usage was 1, would be 4"), r.stderr)
        XCTAssertEqual(try checksum(), before)
        XCTAssertEqual(try quota(["-f", "user/alice"]).status, 0)
        XCTAssertEqual(try quota(["-f", "-n", "user/alice"]).status, 0, "nothing left to change")
    }

    func testLimitsSetHereAreEnforcedOnDelivery() throws {
        // A limits line alone (usage lines missing) is recalculated: the mailbox is full.
        for n in 1...3 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        try fixture.writeFile("\(home)/maildirsize", "0S\n")
        XCTAssertEqual(try quota(["set", "user/alice", "MESSAGE", "3"]).status, 0)
        let refused = try fixture.deliver(["alice"], message(4))
        XCTAssertEqual(refused.status, 75, refused.stdout + refused.stderr)
        XCTAssertTrue(refused.stdout.hasPrefix("4.2.2"), refused.stdout)
        try fixture.writeFile("\(home)/maildirsize", "0S,3C\n")
        XCTAssertEqual(try fixture.deliver(["alice"], message(4)).status, 75, "a limits-only file is recalculated at delivery")
        try fixture.set("lmtp_over_quota_perm_failure", "yes")
        let permanent = try fixture.deliver(["alice"], message(4))
        XCTAssertEqual(permanent.status, 73, permanent.stdout + permanent.stderr)
        XCTAssertTrue(permanent.stdout.hasPrefix("5.2.2"), permanent.stdout)
        XCTAssertEqual(try fixture.deliver(["-q", "alice"], message(4)).status, 0, "-q ignores the quota")
        // Removing the limit lets mail in again.
        XCTAssertEqual(try quota(["--set", "none", "user/alice"]).status, 0)
        XCTAssertEqual(try fixture.deliver(["alice"], message(5)).status, 0)
        XCTAssertEqual(Harness.read("\(home)/maildirsize").split(separator: "\n").first, "0S")
    }

    func testDomainAndDefaultLimits() throws {
        try fixture.set("virtdomains", "userid")
        try fixture.set("autocreate_post", "yes")
        try fixture.set("autocreate_quota", "0")
        let bob = try fixture.makeUser("bob@example.org")
        XCTAssertEqual(try fixture.deliver(["bob@example.org"], message(1)).status, 0)
        XCTAssertEqual(try quota(["--set", "STORAGE=100", "-d", "example.org"]).status, 0)
        XCTAssertEqual(Harness.read("\(bob)/maildirsize").split(separator: "\n").first, "102400S")
        // A mailbox created later in that domain takes it; elsewhere the default.
        XCTAssertEqual(try fixture.deliver(["carol@example.org"], message(2)).status, 0)
        let carol = try fixture.store.userRoot(try fixture.store.parseRecipient("carol@example.org"))
        XCTAssertEqual(Harness.read("\(carol)/maildirsize").split(separator: "\n").first, "102400S")
        XCTAssertEqual(try quota(["--set", "MESSAGE=7", "--default"]).status, 0)
        XCTAssertEqual(try fixture.deliver(["dave@example.net"], message(3)).status, 0)
        let dave = try fixture.store.userRoot(try fixture.store.parseRecipient("dave@example.net"))
        XCTAssertEqual(Harness.read("\(dave)/maildirsize").split(separator: "\n").first, "0S,7C")
        XCTAssertEqual(Harness.read("\(bob)/maildirsize").split(separator: "\n").first, "102400S,7C", "--default sets every user")
    }

    func testPrometheusAndJSONAreReadByRealParsers() throws {
        for n in 1...3 { XCTAssertEqual(try fixture.deliver(["alice"], message(n)).status, 0) }
        XCTAssertEqual(try quota(["--set", "STORAGE=1,MESSAGE=3", "user/alice"]).status, 0)
        let prom = try quota(["--format", "prometheus"])
        XCTAssertEqual(prom.status, 0, prom.stderr)
        let file = "\(fixture.dir)/quota.prom"
        try prom.stdout.write(toFile: file, atomically: false, encoding: .utf8)
        let parse = try Harness.sh("""
            /usr/bin/python3 -c 'import sys
            from prometheus_client.parser import text_string_to_metric_families as p
            for f in p(open(sys.argv[1]).read()):
                for s in f.samples: print(f.type, s.name, s.labels["root"], int(s.value))' '\(file)'
            """)
        XCTAssertEqual(parse.status, 0, parse.stderr)
        XCTAssertTrue(parse.stdout.contains("gauge nestbox_quota_messages_used user/alice 3"), parse.stdout)
        XCTAssertTrue(parse.stdout.contains("gauge nestbox_quota_storage_limit_bytes user/alice 1024"), parse.stdout)
        let json = try quota(["--json", "--all"])
        let jq = try Harness.run("/usr/bin/jq", ["-e", ".roots[0].root == \"user/alice\" and .roots[0].messages.percent == 100 and .roots[0].warning"],
                                 input: Data(json.stdout.utf8))
        XCTAssertEqual(jq.status, 0, json.stdout + jq.stderr)
        // Above quotawarnpercent: a warning on standard error with the text report.
        XCTAssertTrue(try quota([]).stderr.contains("warning: user/alice: 100% of its quota used"))
    }

    func testUsageAndUnknownUser() throws {
        let usage = try quota(["-n"])
        XCTAssertEqual(usage.status, 64)
        // Said on standard error even when it is no terminal (a cron job, `2>file`).
        XCTAssertTrue(usage.stderr.contains("nestbox-quota: -n goes with -f"), usage.stderr)
        XCTAssertEqual(try quota(["--set", "STORAGE=x", "user/alice"]).status, 64)
        XCTAssertEqual(try quota(["--format", "xml"]).status, 64)
        XCTAssertEqual(try quota(["--set", "STORAGE=1"]).status, 64)
        let unknown = try quota(["user/nobody"])
        XCTAssertEqual(unknown.status, 67)
        XCTAssertTrue(unknown.stderr.contains("user/nobody"), unknown.stderr)
        XCTAssertEqual(try quota(["-u", "alice"]).status, 0)
    }

    func testFixBesideConcurrentDeliveriesLeavesUsageExact() throws {
        let deliveries = 150
        let group = DispatchGroup()
        var failures = 0
        let lock = NSLock()
        for worker in 0..<3 {
            DispatchQueue.global().async(group: group) {
                for n in 0..<(deliveries / 3) {
                    let folder = n % 2 == 0 ? [] : ["-m", "Trash"]
                    let r = try? self.fixture.deliver(folder + ["alice"], self.message(worker * 1000 + n, padding: n))
                    if r?.status != 0 { lock.lock(); failures += 1; lock.unlock() }
                }
            }
        }
        var fixes = 0
        while group.wait(timeout: .now()) == .timedOut {
            let r = try quota(["-f", "-q", "user/alice"])
            XCTAssertEqual(r.status, 0, r.stderr)
            fixes += 1
        }
        XCTAssertEqual(failures, 0)
        XCTAssertGreaterThan(fixes, 1)
        // The file's sum equals the files, without another recalculation.
        let parsed = try XCTUnwrap(MaildirSize.parse(Array(Harness.read("\(home)/maildirsize").utf8)))
        let counted = try QuotaRoot(root: home).countUsage()
        XCTAssertEqual(counted.messages, Int64(deliveries))
        XCTAssertEqual(parsed.usage, counted)
    }
}
