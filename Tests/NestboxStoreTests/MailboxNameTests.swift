#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport
@testable import NestboxStore

/// Admin-typed mailbox names and patterns, resolved over MailRootFixture's tree: a table of
/// (typed name, canonical names found) for each configuration.
final class MailboxNameTests: TempDirTestCase {
    typealias Case = (typed: String, expected: [String], line: UInt)

    private func check(_ names: MailboxNames, _ cases: [Case]) throws {
        for c in cases {
            XCTAssertEqual(try names.resolve(c.typed).map(\.name), c.expected, "\(c.typed)", line: c.line)
        }
    }

    func testSlashSeparatorNoDomains() throws {
        MailRootFixture.make(dir)
        let names = MailboxNames(mailRoot: MailRoot(path: dir, virtDomains: .off, separator: "/"))
        try check(names, [
            ("user/alice", ["user/alice"], #line),
            ("User/alice", ["user/alice"], #line),
            ("user/alice/INBOX", ["user/alice"], #line),
            ("user/alice/Lists", ["user/alice/Lists"], #line),
            ("user/alice/Lists/Work", ["user/alice/Lists/Work"], #line),
            ("user/alice/Ärger", ["user/alice/Ärger"], #line),
            ("alice", ["user/alice"], #line),
            ("user/alice/lists", [], #line),
            ("user/nobody", [], #line),
            ("user.alice", [], #line),
            ("News", ["News"], #line),
            ("News/Today", ["News/Today"], #line),
            ("user/*", ["user/alice", "user/alice/Lists", "user/alice/Lists/Work", "user/alice/Ärger", "user/bob"], #line),
            ("user/%", ["user/alice", "user/bob"], #line),
            ("user/alice/%", ["user/alice/Lists", "user/alice/Ärger"], #line),
            ("user/alice/*", ["user/alice/Lists", "user/alice/Lists/Work", "user/alice/Ärger"], #line),
            ("user/a%", ["user/alice"], #line),
            ("%", ["News"], #line),
            ("*", ["user/alice", "user/alice/Lists", "user/alice/Lists/Work", "user/alice/Ärger", "user/bob", "News", "News/Today"], #line),
            ("*/Work", ["user/alice/Lists/Work"], #line),
            ("N*", ["News", "News/Today"], #line),
            ("user/%/Lists", ["user/alice/Lists"], #line),
        ])
    }

    func testDotSeparator() throws {
        MailRootFixture.make(dir)
        let names = MailboxNames(mailRoot: MailRoot(path: dir, virtDomains: .off, separator: "."))
        try check(names, [
            ("user.alice", ["user.alice"], #line),
            ("user.alice.Lists.Work", ["user.alice.Lists.Work"], #line),
            ("user/alice", [], #line),
            ("user.%", ["user.alice", "user.bob"], #line),
            ("user.alice.%", ["user.alice.Lists", "user.alice.Ärger"], #line),
            ("News.Today", ["News.Today"], #line),
            ("%", ["News"], #line),
        ])
    }

    func testVirtualDomains() throws {
        MailRootFixture.make(dir)
        let names = MailboxNames(mailRoot: MailRoot(path: dir, virtDomains: .userid, separator: "/"), defaultDomain: "Example.COM")
        try check(names, [
            ("user/alice", ["user/alice"], #line),
            ("user/alice@example.com", ["user/alice"], #line),
            ("alice@example.com", ["user/alice"], #line),
            ("carol@example.org", ["user/carol@example.org"], #line),
            ("carol@EXAMPLE.org", ["user/carol@example.org"], #line),
            ("carol", [], #line),
            ("user/carol@example.org", ["user/carol@example.org"], #line),
            ("user/carol/Sent@example.org", ["user/carol/Sent@example.org"], #line),
            ("Notices@example.org", ["Notices@example.org"], #line),
            ("user/%", ["user/alice", "user/bob"], #line),
            ("user/%@example.org", ["user/carol@example.org"], #line),
            ("user/%@*", ["user/alice", "user/bob", "user/carol@example.org"], #line),
            ("*@example.org", ["user/carol@example.org", "user/carol/Sent@example.org", "Notices@example.org"], #line),
            ("%@*.org", ["Notices@example.org"], #line),
        ])
    }

    func testMatcher() {
        let table: [(String, String, Bool)] = [
            ("*", "", true), ("%", "", true), ("a*", "a/b/c", true), ("a%", "a/b", false),
            ("a/%/c", "a/b/c", true), ("a/%/c", "a/b/x/c", false), ("a/*/c", "a/b/x/c", true),
            ("%%", "ab", true), ("a", "A", false), ("a*b*c", "axxbyyc", true), ("a*b*c", "axxbyy", false),
        ]
        for (p, n, expected) in table {
            XCTAssertEqual(MailboxNames.matches(pattern: p, n, separator: "/"), expected, "\(p) ~ \(n)")
        }
    }
}

extension MailboxNameTests {
    /// The configuration keys carry through: unixhierarchysep, virtdomains, defaultdomain.
    func testFromConfiguration() throws {
        MailRootFixture.make(dir)
        let config = try NamesTests.config([("partition-default", dir), ("unixhierarchysep", "no"),
                                            ("virtdomains", "userid"), ("defaultdomain", "example.com")])
        let names = MailboxNames(config: config)
        try check(names, [
            ("user.alice.Lists", ["user.alice.Lists"], #line),
            ("user.carol.Sent@example.org", ["user.carol.Sent@example.org"], #line),
            ("alice@example.com", ["user.alice"], #line),
        ])
        let resolved = try XCTUnwrap(try names.resolve("user.carol.Sent@example.org").first)
        XCTAssertEqual(resolved.folder.path, "\(dir)/domain/example.org/carol/.Sent")
        XCTAssertEqual(resolved.folder.mailRoot, "\(dir)/domain/example.org/carol")
        XCTAssertEqual(resolved.owner.address, "carol@example.org")
    }
}
