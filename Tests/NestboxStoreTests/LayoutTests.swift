// The layout of the mail root (MailStore.userRoot / sharedRoot) and the creation of mailboxes:
// every kind of recipient against every virtdomains setting, no mailbox root inside another,
// creation all or nothing (built aside, renamed into place), and autocreate that waits for a
// message (Delivery.resolve creates nothing, Delivery.prepare does).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Results collected from concurrent creators.
final class Outcomes: @unchecked Sendable {
    private let queue = DispatchQueue(label: "outcomes")
    private var created = 0
    private var errors: [String] = []

    func add(created made: Bool) { queue.sync { if made { created += 1 } } }
    func add(error: String) { queue.sync { errors.append(error) } }
    var result: (Int, [String]) { queue.sync { (created, errors) } }
}

final class LayoutTests: TempDirTestCase {
    static func store(_ settings: [(String, String)], root: String = "/srv/mail") throws -> MailStore {
        var c = Config()
        for (i, (k, v)) in ([("partition-default", root)] + settings).enumerated() { try c.set(k, v, file: "t", line: i + 1) }
        return MailStore(config: c)
    }

    static let off: [(String, String)] = [("virtdomains", "off")]
    static let hosted: [(String, String)] = [("virtdomains", "userid"), ("defaultdomain", "example.com")]
    static let hostedOnly: [(String, String)] = [("virtdomains", "userid")]

    // MARK: Where each recipient lives

    func testUserRootOfEveryKindOfRecipient() throws {
        // (settings, address, root below /srv/mail; nil: refused with 5.1.3)
        let table: [([(String, String)], String, String?)] = [
            (Self.off, "alice", "alice"),
            (Self.off, "alice@example.org", "alice"),
            (Self.off, "example.org", "example.org"),
            (Self.off, "cur@example.org", "cur"),
            (Self.off, "x@public", "x"),
            (Self.off, "domain", nil),
            (Self.off, "domain@anything", nil),
            (Self.off, "public@example.org", nil),
            (Self.hosted, "alice", "alice"),
            (Self.hosted, "alice@example.com", "alice"),
            (Self.hosted, "alice@EXAMPLE.com", "alice"),
            (Self.hosted, "example.org", "example.org"),
            (Self.hosted, "example.org@example.com", "example.org"),
            (Self.hosted, "cur@example.org", "domain/example.org/cur"),
            (Self.hosted, "new@example.org", "domain/example.org/new"),
            (Self.hosted, "Alice@Example.ORG", "domain/example.org/alice"),
            (Self.hosted, "x@public", "domain/public/x"),
            (Self.hosted, "x@domain", "domain/domain/x"),
            (Self.hosted, "domain", nil),
            (Self.hosted, "domain@anything", nil),
            (Self.hosted, "domain@example.com", nil),
            (Self.hosted, "public@example.org", nil),
            (Self.hostedOnly, "alice", "alice"),
            (Self.hostedOnly, "alice@example.com", "domain/example.com/alice"),
            (Self.hostedOnly, "domain@anything", nil),
            (Self.hosted + [("lmtp_downcase_rcpt", "no")], "alice@Example.ORG", "domain/example.org/alice"),
            (Self.hosted + [("lmtp_downcase_rcpt", "no")], "Domain@anything", nil),
        ]
        for (settings, address, expected) in table {
            let store = try Self.store(settings)
            let context = "\(address) with \(settings)"
            if let expected {
                XCTAssertEqual(try store.userRoot(store.parseRecipient(address)), "/srv/mail/\(expected)", context)
            } else {
                let failure = XCTAssertThrowsFailure(try store.userRoot(store.parseRecipient(address)), context)
                XCTAssertEqual(failure?.outcome.status, "5.1.3", context)
            }
        }
    }

    func testSharedRootOfEveryDomain() throws {
        let table: [([(String, String)], String?, String)] = [
            (Self.off, nil, "public"),
            (Self.off, "example.org", "public"),
            (Self.hosted, nil, "public"),
            (Self.hosted, "example.com", "public"),
            (Self.hosted, "Example.COM", "public"),
            (Self.hosted, "example.org", "domain/example.org/public"),
            (Self.hosted, "Example.ORG", "domain/example.org/public"),
            (Self.hosted, "public", "domain/public/public"),
            (Self.hostedOnly, "example.com", "domain/example.com/public"),
        ]
        for (settings, domain, expected) in table {
            XCTAssertEqual(try Self.store(settings).sharedRoot(domain: domain), "/srv/mail/\(expected)", "\(domain ?? "no domain") with \(settings)")
        }
    }

    /// No mailbox root (user or shared area) is another one, or lies inside another one: the
    /// names that used to collide (a user named like a domain, a local part named like a Maildir
    /// directory, a domain named `public`) each get a place of their own.
    func testNoMailboxRootLiesInsideAnother() throws {
        for settings in [Self.hosted, Self.hostedOnly, Self.off] {
            let store = try Self.store(settings)
            var roots: [String: String] = [:]
            for address in ["alice", "example.org", "public.example", "cur", "cur@example.org", "new@example.org",
                            "tmp@example.org", "alice@example.org", "x@public", "x@domain", "alice@example.com"] {
                roots[address] = try store.userRoot(store.parseRecipient(address))
            }
            for domain in ["example.org", "public", "domain", "example.com"] {
                roots["shared folders of \(domain)"] = try store.sharedRoot(domain: domain)
            }
            roots["shared folders"] = try store.sharedRoot(domain: nil)
            for (a, pathA) in roots {
                for (b, pathB) in roots where a != b {
                    XCTAssertFalse(pathB.hasPrefix(pathA + "/"), "\(b) (\(pathB)) inside \(a) (\(pathA)) with \(settings)")
                }
            }
        }
        // With virtdomains, two addresses share a root only when they name one mailbox: alice
        // and alice@example.com (the default domain).
        let store = try Self.store(Self.hosted)
        var seen: [String: String] = [:]
        for address in ["alice", "alice@example.com", "example.org", "cur@example.org", "x@public", "alice@example.org"] {
            let path = try store.userRoot(store.parseRecipient(address))
            if let other = seen[path] { XCTAssertEqual([other, address], ["alice", "alice@example.com"], path) }
            seen[path] = address
        }
        XCTAssertEqual(seen.count, 5)
    }

    // MARK: Creating a mailbox

    var mailRoot: String { "\(dir)/mail" }

    func testCreatedMailboxIsCompleteAndNothingIsLeftAside() throws {
        let store = try Self.store(Self.hosted, root: mailRoot)
        let root = try store.userRoot(store.parseRecipient("newbie@example.org"))
        XCTAssertTrue(try store.createUser(root: root, limits: QuotaLimits(bytes: 102_400, messages: 10),
                                           folders: ["Sent", "Archive/2026", "bad.level", "INBOX"]))
        XCTAssertEqual(root, "\(mailRoot)/domain/example.org/newbie")
        for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp", ".Archive.2026/cur"] {
            XCTAssertTrue(Files.isDirectory("\(root)/\(sub)"), sub)
        }
        XCTAssertEqual(TestFS.readText("\(root)/maildirsize"), "102400S,10C\n0 0\n")
        XCTAssertTrue(TestFS.exists("\(root)/.Sent/maildirfolder"))
        XCTAssertTrue(TestFS.exists("\(root)/.Archive.2026/maildirfolder"))
        XCTAssertFalse(TestFS.exists("\(root)/maildirfolder"), "never in the root")
        XCTAssertEqual(TestFS.list(root).filter { $0.hasPrefix(".") }, [".Archive.2026", ".Sent"], "the bad name is skipped")
        XCTAssertEqual(TestFS.readText("\(root)/subscriptions"), "V\t2\n\nSent\nArchive\t2026\n")
        XCTAssertEqual(TestFS.list(store.creationDirectory), [])
        // Once it exists nothing changes, whatever the call asks for.
        XCTAssertFalse(try store.createUser(root: root, limits: QuotaLimits(bytes: 1), folders: ["Other"]))
        XCTAssertEqual(TestFS.readText("\(root)/maildirsize"), "102400S,10C\n0 0\n")
        XCTAssertFalse(TestFS.exists("\(root)/.Other"))
        XCTAssertEqual(TestFS.list(store.creationDirectory), [])
    }

    /// Many creators at once (LMTP sessions, deliver processes): one makes the mailbox, the
    /// others find it, none fails, and no temporary tree stays.
    func testConcurrentCreationsMakeOneMailbox() throws {
        let store = try Self.store(Self.off, root: mailRoot)
        let root = try store.userRoot(store.parseRecipient("race"))
        let outcomes = Outcomes()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do {
                outcomes.add(created: try store.createUser(root: root, limits: QuotaLimits(bytes: 2048), folders: ["Sent", "Trash"]))
            } catch {
                outcomes.add(error: "\(error)")
            }
        }
        let (created, errors) = outcomes.result
        XCTAssertEqual(errors, [])
        XCTAssertEqual(created, 1)
        XCTAssertEqual(TestFS.readText("\(root)/maildirsize"), "2048S\n0 0\n")
        XCTAssertEqual(TestFS.readText("\(root)/subscriptions"), "V\t2\n\nSent\nTrash\n")
        XCTAssertEqual(TestFS.list(store.creationDirectory), [])
    }

    func testSomethingInTheWayIsATemporaryFailureAndStaysUntouched() throws {
        let store = try Self.store(Self.off, root: mailRoot)
        let root = try store.userRoot(store.parseRecipient("bob"))
        TestFS.mkdirs(root)
        TestFS.write("\(root)/notes", "not a mailbox\n")
        let failure = XCTAssertThrowsFailure(try store.createUser(root: root, limits: nil, folders: ["Sent"]))
        XCTAssertEqual(failure?.outcome.status, "4.3.0")
        XCTAssertEqual(TestFS.list(root), ["notes"])
        XCTAssertEqual(TestFS.list(store.creationDirectory), [])
        // An empty directory is no mailbox either, but nothing is lost by replacing it.
        let carol = try store.userRoot(store.parseRecipient("carol"))
        TestFS.mkdirs(carol)
        XCTAssertTrue(try store.createUser(root: carol, limits: nil, folders: []))
        XCTAssertTrue(store.inbox(of: carol).exists)
    }

    func testFailedCreationLeavesNoMailbox() throws {
        let store = try Self.store(Self.off, root: mailRoot)
        TestFS.mkdirs("\(mailRoot)/.nestbox")
        TestFS.write(store.creationDirectory, "in the way\n")
        let root = try store.userRoot(store.parseRecipient("dave"))
        XCTAssertThrowsFailure(try store.createUser(root: root, limits: QuotaLimits(bytes: 1024), folders: ["Sent"]))
        XCTAssertFalse(TestFS.exists(root))
    }

    /// Trees of creations that died stay until they are 36 hours old; the next creation
    /// removes them, and leaves younger ones (a creation in progress) alone.
    func testLeftoverCreationTreesAreRemovedAfter36Hours() throws {
        let store = try Self.store(Self.off, root: mailRoot)
        for name in ["old", "young"] {
            TestFS.mkdirs("\(store.creationDirectory)/\(name)/cur")
            TestFS.write("\(store.creationDirectory)/\(name)/maildirsize", "0S\n")
        }
        TestFS.age("\(store.creationDirectory)/old", by: 37 * 3600)
        TestFS.age("\(store.creationDirectory)/young", by: 35 * 3600)
        XCTAssertTrue(try store.createUser(root: try store.userRoot(store.parseRecipient("erin")), limits: nil, folders: []))
        XCTAssertEqual(TestFS.list(store.creationDirectory), ["young"])
        XCTAssertEqual(store.cleanCreations(olderThan: -1), 1)
        XCTAssertEqual(TestFS.list(store.creationDirectory), [])
    }

    // MARK: Autocreate waits for a message

    func testResolvingCreatesNothingAndPrepareCreatesTheInbox() throws {
        let store = try Self.store([("autocreate_post", "yes"), ("autocreate_quota", "100"),
                                    ("autocreate_quota_messages", "5"), ("autocreate_inbox_folders", "Sent")], root: mailRoot)
        try store.prepare()
        let delivery = Delivery(store: store)
        let targets = try ["ann", "ben", "cid+Sent"].map { try delivery.resolve($0, folderName: nil, identity: nil) }
        for t in targets { XCTAssertEqual(t.inboxToCreate, QuotaLimits(bytes: 102_400, messages: 5), t.recipient) }
        XCTAssertEqual(targets[2].label, "cid", "a folder that does not exist yet is not chosen")
        XCTAssertEqual(TestFS.list(mailRoot), [".nestbox"], "resolving created nothing")
        XCTAssertNil(try delivery.quotaRefusal(targets[0], incomingSize: 10))
        try delivery.prepare(targets[0])
        try delivery.prepare(targets[0])
        XCTAssertEqual(TestFS.list(mailRoot), [".nestbox", "ann"])
        XCTAssertEqual(TestFS.readText("\(mailRoot)/ann/maildirsize"), "102400S,5C\n0 0\n")
        XCTAssertTrue(Files.isDirectory("\(mailRoot)/ann/.Sent/cur"))
        XCTAssertNil(try delivery.resolve("ann", folderName: nil, identity: nil).inboxToCreate)
        // Without autocreate an unknown user stays unknown, and nothing is made.
        let plain = Delivery(store: try Self.store([], root: mailRoot))
        let failure = XCTAssertThrowsFailure(try plain.resolve("ben", folderName: nil, identity: nil))
        XCTAssertEqual(failure?.outcome.status, "5.1.1")
        try plain.prepare(DeliveryTarget(recipient: "ann", folder: store.inbox(of: "\(mailRoot)/zed"),
                                          quota: QuotaRoot(root: "\(mailRoot)/zed"), label: "zed"))
        XCTAssertEqual(TestFS.list(mailRoot), [".nestbox", "ann"])
    }
}
