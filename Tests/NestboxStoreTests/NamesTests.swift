import XCTest
import NestboxSupport
@testable import NestboxStore

/// Names.validateUser / validateDomain / folderLevels / directoryName / folderName, and the
/// address handling of MailStore (parseRecipient, userRoot).
final class NamesTests: XCTestCase {
    static let long255 = String(repeating: "a", count: 255)
    static let long256 = String(repeating: "a", count: 256)

    // MARK: validateUser

    func testValidateUserAccepts() {
        let ok = ["alice", "john.smith", "j.r.r.tolkien", "user-1", "a_b", "x", "Bob", "müller", "a+b", "a.", Self.long255,
                  String(repeating: "ä", count: 127)]  // 254 bytes
        for name in ok {
            XCTAssertNoThrow(try Names.validateUser(name), name)
        }
    }

    func testValidateUserRejects() {
        let bad: [(String, String)] = [
            ("", "empty"),
            (".", "dot"),
            ("..", "dot dot"),
            ("../x", "path traversal"),
            ("a/b", "slash"),
            ("/etc", "absolute path"),
            ("a\u{0}b", "NUL"),
            ("a\u{1}b", "control character"),
            ("a\nb", "newline"),
            ("a\rb", "carriage return"),
            ("a\u{1b}b", "escape"),
            ("a\u{7f}b", "DEL"),
            ("a\u{85}b", "C1 control character"),
            (Self.long256, "256 bytes"),
            (String(repeating: "ä", count: 128), "256 bytes of UTF-8"),
            (".hidden", "leading dot"),
            (".nestbox", "the internal directory"),
            ("~alice", "leading tilde"),
            ("public", "reserved for shared folders"),
            ("Public", "reserved, any case"),
            ("domain", "reserved for the domain areas"),
            ("DOMAIN", "reserved for the domain areas, any case"),
            ("a b", "space"),
            ("a\tb", "tab"),
            (" alice", "leading space"),
            ("alice@example.com", "@"),
            ("a\u{FFFD}b", "replacement character (invalid UTF-8)"),
        ]
        for (name, why) in bad {
            let failure = XCTAssertThrowsFailure(try Names.validateUser(name), why)
            XCTAssertEqual(failure?.outcome.status, "5.1.3", "\(name.debugDescription): \(why)")
        }
    }

    // MARK: validateDomain

    func testValidateDomainAccepts() {
        for name in ["example.com", "EXAMPLE.COM", "mail-1.example.org", "a_b.example", "localhost", "x",
                     String(repeating: "a", count: 255)] {
            XCTAssertNoThrow(try Names.validateDomain(name), name)
        }
    }

    func testValidateDomainRejects() {
        let bad: [(String, String)] = [
            ("", "empty"),
            (".", "dot"),
            ("..", "dot dot"),
            ("../x", "traversal"),
            ("a/b", "slash"),
            ("a\u{0}b.com", "NUL"),
            ("a\u{1}b.com", "control character"),
            ("a\u{7f}b.com", "DEL"),
            (String(repeating: "a", count: 256), "256 bytes"),
            (".example.com", "leading dot"),
            ("-example.com", "leading hyphen"),
            ("a..b", "empty label"),
            ("exa mple.com", "space"),
            ("exa\tmple.com", "tab"),
            ("exämple.com", "non-ASCII"),
            ("a@b.com", "@"),
            ("~x.com", "tilde"),
            ("a*b.com", "*"),
        ]
        for (name, why) in bad {
            let failure = XCTAssertThrowsFailure(try Names.validateDomain(name), why)
            XCTAssertEqual(failure?.outcome.status, "5.1.3", "\(name.debugDescription): \(why)")
        }
    }

    // MARK: folderLevels

    func testFolderLevelsAccepts() throws {
        let slash: [(String, [String])] = [
            ("INBOX", []),
            ("inbox", []),
            ("InBox", []),
            ("Work", ["Work"]),
            ("Work/Sub", ["Work", "Sub"]),
            ("a/b/c/d", ["a", "b", "c", "d"]),
            ("INBOX/Work", ["Work"]),
            ("inbox/Work", ["Work"]),
            ("INBOX/Work/Sub", ["Work", "Sub"]),
            ("Work/INBOX", ["Work", "INBOX"]),
            ("Ärger", ["Ärger"]),
            ("日本語/台北", ["日本語", "台北"]),
            ("My Folder", ["My Folder"]),
            ("a&b", ["a&b"]),
            ("x~", ["x~"]),
            ("Sent-Items_2024", ["Sent-Items_2024"]),
        ]
        for (name, levels) in slash {
            XCTAssertEqual(try Names.folderLevels(name, separator: "/"), levels, name)
        }
        let dot: [(String, [String])] = [
            ("INBOX", []),
            ("Work.Sub", ["Work", "Sub"]),
            ("INBOX.Work", ["Work"]),
            ("Ärger.x", ["Ärger", "x"]),
        ]
        for (name, levels) in dot {
            XCTAssertEqual(try Names.folderLevels(name, separator: "."), levels, name)
        }
    }

    func testFolderLevelsRejects() {
        let slash: [(String, String)] = [
            ("", "empty"),
            (".", "dot"),
            ("..", "dot dot"),
            ("../x", "traversal"),
            ("Work/..", "dot dot level"),
            ("Work/./Sub", "dot level"),
            ("a.b", "a . inside a level cannot be stored with Maildir++"),
            ("Work/v1.2", "a . inside a later level"),
            (".hidden", "leading dot"),
            ("Work/", "empty last level"),
            ("/Work", "empty first level"),
            ("a//b", "empty middle level"),
            ("INBOX/", "INBOX followed by an empty level"),
            ("~peter", "leading tilde"),
            ("Work/~x", "leading tilde in a later level"),
            ("*", "wildcard *"),
            ("a%b", "wildcard %"),
            ("Work/*", "wildcard in a later level"),
            ("a\u{0}b", "NUL"),
            ("a\u{1}b", "control character"),
            ("a\nb", "newline"),
            ("a\u{7f}b", "DEL"),
            ("a\u{85}b", "C1 control"),
            (String(repeating: "a", count: 255), "directory name `.` + 255 bytes is over 255"),
            (String(repeating: "ä", count: 100), "fits as UTF-8 (200 bytes) but not in modified UTF-7 (270)"),
            (String(repeating: "a/", count: 513) + "a", "name over 1024 bytes"),
        ]
        for (name, why) in slash {
            let failure = XCTAssertThrowsFailure(try Names.folderLevels(name, separator: "/"), why)
            XCTAssertEqual(failure?.outcome.status, "5.1.3", "\(name.debugDescription): \(why)")
        }
        // With `.` as the separator a `/` inside a level is refused.
        for name in ["Work/Sub", "a..b", "Work.", ".Work"] {
            XCTAssertThrowsFailure(try Names.folderLevels(name, separator: "."), name)
        }
    }

    func testFolderLevelLengthLimitIsTheDirectoryName() throws {
        XCTAssertEqual(try Names.folderLevels(String(repeating: "a", count: 254), separator: "/").count, 1)
        XCTAssertEqual(try Names.folderLevels("x/" + String(repeating: "a", count: 252), separator: "/").count, 2)  // ".x." + 252
        XCTAssertThrowsFailure(try Names.folderLevels("x/" + String(repeating: "a", count: 253), separator: "/"))
    }

    // MARK: directoryName / folderName

    static let directories: [([String], String)] = [
        ([], ""),
        (["Work"], ".Work"),
        (["Work", "Sub"], ".Work.Sub"),
        (["Ärger"], ".&AMQ-rger"),
        (["a&b"], ".a&-b"),
        (["日本語", "Sub"], ".&ZeVnLIqe-.Sub"),
        (["Entwürfe", "2024", "März"], ".Entw&APw-rfe.2024.M&AOQ-rz"),
        (["My Folder"], ".My Folder"),
    ]

    func testDirectoryName() {
        for (levels, directory) in Self.directories {
            XCTAssertEqual(Names.directoryName(levels), directory, "\(levels)")
        }
    }

    func testFolderNameOfDirectory() {
        for (levels, directory) in Self.directories where !levels.isEmpty {
            XCTAssertEqual(Names.folderName(directory: directory, separator: "/"), levels.joined(separator: "/"), directory)
            XCTAssertEqual(Names.folderName(directory: directory, separator: "."), levels.joined(separator: "."), directory)
        }
        for notAFolder in ["", ".", "Work", "cur", "..Work", ".Work.", ".Work..Sub", ".&AMQ", ".&AGE-", ".Ärger"] {
            XCTAssertNil(Names.folderName(directory: notAFolder, separator: "/"), notAFolder)
        }
    }

    func testFolderNameRoundTrip() throws {
        for name in ["Work", "Work/Sub", "Ärger", "日本語/台北/x", "a&b/&", "Trash", "Sent Items/2024"] {
            let levels = try Names.folderLevels(name, separator: "/")
            let directory = Names.directoryName(levels)
            XCTAssertEqual(Names.folderName(directory: directory, separator: "/"), name, directory)
        }
    }

    // MARK: MailStore.parseRecipient

    static func config(_ settings: [(String, String)]) throws -> Config {
        var c = Config()
        for (i, (k, v)) in settings.enumerated() { try c.set(k, v, file: "t", line: i + 1) }
        return c
    }

    func testParseRecipientDowncasing() throws {
        let store = MailStore(config: try Self.config([("lmtp_downcase_rcpt", "yes")]))
        let table: [(String, String, String?, String?)] = [
            // input, user, detail, domain
            ("<Alice+Work@Example.COM>", "alice", "Work", "example.com"),
            ("Alice+Work@Example.COM", "alice", "Work", "example.com"),
            ("  <bob@x.org>  ", "bob", nil, "x.org"),
            ("alice", "alice", nil, nil),
            ("ALICE", "alice", nil, nil),
            ("alice@example.com", "alice", nil, "example.com"),
            ("alice+@example.com", "alice", nil, "example.com"),
            ("alice+a+b@x", "alice", "a+b", "x"),
            ("alice+Ärger", "alice", "Ärger", nil),
            ("alice+Work/Sub", "alice", "Work/Sub", nil),
            ("alice@", "alice", nil, nil),
            ("john.smith@Example.com", "john.smith", nil, "example.com"),
            ("\"John Doe\"@example.com", "john doe", nil, "example.com"),
            ("\"a@b\"@example.com", "a@b", nil, "example.com"),
            ("\"a@b\"", "a@b", nil, nil),
            ("\"a\\\"b\"@x", "a\"b", nil, "x"),
            ("\"Bob+Detail\"@X", "bob", "Detail", "x"),
        ]
        for (input, user, detail, domain) in table {
            let r = try store.parseRecipient(input)
            XCTAssertEqual(r, Recipient(user: user, domain: domain, detail: detail), input)
        }
    }

    func testParseRecipientWithoutDowncasing() throws {
        let store = MailStore(config: try Self.config([("lmtp_downcase_rcpt", "no")]))
        let table: [(String, String, String?, String?)] = [
            ("<Alice+Work@Example.COM>", "Alice", "Work", "Example.COM"),
            ("ALICE", "ALICE", nil, nil),
            ("\"John Doe\"@Example.com", "John Doe", nil, "Example.com"),
        ]
        for (input, user, detail, domain) in table {
            XCTAssertEqual(try store.parseRecipient(input), Recipient(user: user, domain: domain, detail: detail), input)
        }
    }

    func testParseRecipientRejectsAddressesWithoutUser() {
        let store = MailStore(config: Config())
        for input in ["", "   ", "<>", "@example.com", "+detail@example.com", "<+x>", "\"\"@example.com"] {
            let failure = XCTAssertThrowsFailure(try store.parseRecipient(input), input)
            XCTAssertEqual(failure?.outcome.exitCode, Outcome.badAddress.exitCode, input)
            XCTAssertEqual(failure?.outcome.status, "5.1.3", input)
        }
    }

    func testRecipientAddress() {
        XCTAssertEqual(Recipient(user: "alice", domain: "example.com", detail: "x").address, "alice@example.com")
        XCTAssertEqual(Recipient(user: "alice", domain: nil, detail: nil).address, "alice")
    }

    // MARK: MailStore.userRoot

    func testUserRootVirtdomainsOff() throws {
        let store = MailStore(config: try Self.config([("partition-default", "/srv/mail"), ("virtdomains", "off")]))
        XCTAssertEqual(store.root, "/srv/mail")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@example.com")), "/srv/mail/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@other.org")), "/srv/mail/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("Alice+Work")), "/srv/mail/alice")
        // The domain is ignored entirely, even one that could not be a directory.
        XCTAssertEqual(try store.userRoot(Recipient(user: "alice", domain: "../x", detail: nil)), "/srv/mail/alice")
        XCTAssertEqual(try store.sharedRoot(domain: "example.com"), "/srv/mail/public")
        XCTAssertEqual(store.spoolDirectory, "/srv/mail/.nestbox/spool")
    }

    func testUserRootVirtdomainsUserid() throws {
        for setting in ["userid", "on", "yes"] {
            let store = MailStore(config: try Self.config([("partition-default", "/srv/mail"), ("virtdomains", setting)]))
            XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@example.com")), "/srv/mail/domain/example.com/alice", setting)
            XCTAssertEqual(try store.userRoot(store.parseRecipient("Alice@Example.COM")), "/srv/mail/domain/example.com/alice", setting)
            XCTAssertEqual(try store.userRoot(store.parseRecipient("alice")), "/srv/mail/alice", setting)
            XCTAssertEqual(try store.sharedRoot(domain: "example.com"), "/srv/mail/domain/example.com/public", setting)
            XCTAssertEqual(try store.sharedRoot(domain: nil), "/srv/mail/public", setting)
        }
    }

    func testUserRootWithDefaultDomain() throws {
        let store = MailStore(config: try Self.config([("partition-default", "/srv/mail"), ("virtdomains", "userid"),
                                                       ("defaultdomain", "Example.com")]))
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@example.com")), "/srv/mail/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@EXAMPLE.COM")), "/srv/mail/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@other.org")), "/srv/mail/domain/other.org/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice")), "/srv/mail/alice")
        XCTAssertEqual(try store.sharedRoot(domain: "example.com"), "/srv/mail/public")
        XCTAssertEqual(try store.sharedRoot(domain: "other.org"), "/srv/mail/domain/other.org/public")
    }

    /// Domains are case-insensitive: with lmtp_downcase_rcpt off, a recipient in the default
    /// domain written in another case still lives in the domain-less area.
    func testUserRootDefaultDomainIsCaseInsensitiveWithoutDowncasing() throws {
        let store = MailStore(config: try Self.config([("partition-default", "/srv/mail"), ("virtdomains", "userid"),
                                                       ("defaultdomain", "example.com"), ("lmtp_downcase_rcpt", "no")]))
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@example.com")), "/srv/mail/alice")
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@Example.COM")), "/srv/mail/alice")
        // Another domain's area is named in lower case too: one area per domain, however written.
        XCTAssertEqual(try store.userRoot(store.parseRecipient("alice@Other.ORG")), "/srv/mail/domain/other.org/alice")
        XCTAssertEqual(try store.sharedRoot(domain: "Other.ORG"), "/srv/mail/domain/other.org/public")
    }

    func testUserRootRejectsNamesThatCannotBeOnDisk() throws {
        let off = MailStore(config: try Self.config([("partition-default", "/srv/mail")]))
        let userid = MailStore(config: try Self.config([("partition-default", "/srv/mail"), ("virtdomains", "userid")]))
        for address in ["../x", "a/b@example.com", "public", "public@example.com", "domain", "domain@example.com",
                        "Domain@example.com", ".nestbox", "~root", "\"a b\"@x"] {
            for store in [off, userid] {
                let failure = XCTAssertThrowsFailure(try store.userRoot(store.parseRecipient(address)), address)
                XCTAssertEqual(failure?.outcome.status, "5.1.3", address)
            }
        }
        for address in ["alice@../x", "alice@a/b", "alice@.hidden", "alice@exa mple.com", "alice@a..b"] {
            let failure = XCTAssertThrowsFailure(try userid.userRoot(userid.parseRecipient(address)), address)
            XCTAssertEqual(failure?.outcome.status, "5.1.3", address)
        }
    }
}
