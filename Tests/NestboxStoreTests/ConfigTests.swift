import XCTest
import NestboxSupport

/// The configuration file: keys, defaults, parse errors with file:line, load order, -o overrides.
final class ConfigTests: TempDirTestCase {
    func testEveryDefaultIsAcceptedBySet() throws {
        var c = Config()
        for (i, key) in Config.keys.enumerated() {
            XCTAssertNoThrow(try c.set(key.name, key.defaultValue, file: "defaults", line: i + 1), key.name)
            XCTAssertEqual(c.string(key.name), key.defaultValue, key.name)
            XCTAssertFalse(key.summary.isEmpty, key.name)
        }
        XCTAssertEqual(Set(Config.keys.map(\.name)).count, Config.keys.count, "no key listed twice")
    }

    func testDefaults() {
        let c = Config()
        XCTAssertEqual(c.source, "built-in defaults")
        XCTAssertEqual(c.partition, "/var/spool/nestbox")
        XCTAssertTrue(c.unixHierarchySep)
        XCTAssertEqual(c.hierarchySeparator, "/")
        XCTAssertEqual(c.virtDomains, .off)
        XCTAssertEqual(c.defaultDomain, "")
        XCTAssertEqual(c.mailOwner, "vmail")
        XCTAssertEqual(c.serverName, Host.name, "empty servername means gethostname")
        XCTAssertEqual(c.postUser, "")
        XCTAssertTrue(c.downcaseRecipient)
        XCTAssertFalse(c.overQuotaIsPermanent)
        XCTAssertFalse(c.strictQuota)
        XCTAssertEqual(c.maxMessageSize, 0)
        XCTAssertFalse(c.autocreatePost)
        XCTAssertEqual(c.autocreateQuota, -1)
        XCTAssertEqual(c.autocreateQuotaMessages, -1)
        XCTAssertEqual(c.autocreateInboxFolders, [])
        XCTAssertEqual(c.syslogFacility, Log.facility(named: "mail"))
    }

    static let fullFile = """
    # Nestbox configuration
    partition-default: /srv/mail

    unixhierarchysep: no
    virtdomains: userid
    defaultdomain: Example.COM
    mail_owner: mailer
    servername: mx1.example.com
    postuser: bb
    lmtp_downcase_rcpt: off
    lmtp_over_quota_perm_failure: true
    lmtp_strict_quota: 1
    maxmessagesize: 52428800
    autocreate_post: yes
    autocreate_quota: 102400
    autocreate_quota_messages: 5000
    autocreate_inbox_folders: Sent | Drafts|Trash |  | Archive/2024
    \tsyslog_facility :  local3\u{20}\u{20}
    # end
    """

    func testParseFullValidFile() throws {
        var c = Config()
        try c.parse(Self.fullFile, file: "/etc/nestbox/nestbox.conf")
        XCTAssertEqual(c.source, "/etc/nestbox/nestbox.conf")
        XCTAssertEqual(c.partition, "/srv/mail")
        XCTAssertFalse(c.unixHierarchySep)
        XCTAssertEqual(c.hierarchySeparator, ".")
        XCTAssertEqual(c.virtDomains, .userid)
        XCTAssertEqual(c.defaultDomain, "example.com")
        XCTAssertEqual(c.mailOwner, "mailer")
        XCTAssertEqual(c.serverName, "mx1.example.com")
        XCTAssertEqual(c.postUser, "bb")
        XCTAssertFalse(c.downcaseRecipient)
        XCTAssertTrue(c.overQuotaIsPermanent)
        XCTAssertTrue(c.strictQuota)
        XCTAssertEqual(c.maxMessageSize, 52_428_800)
        XCTAssertTrue(c.autocreatePost)
        XCTAssertEqual(c.autocreateQuota, 102_400)
        XCTAssertEqual(c.autocreateQuotaMessages, 5000)
        XCTAssertEqual(c.autocreateInboxFolders, ["Sent", "Drafts", "Trash", "Archive/2024"])
        XCTAssertEqual(c.syslogFacility, Log.facility(named: "local3"))
    }

    func testParseAcceptsEmptyValues() throws {
        var c = Config()
        try c.parse("servername:\npostuser: \t\nvirtdomains: On\n", file: "f")
        XCTAssertEqual(c.string("servername"), "")
        XCTAssertEqual(c.postUser, "")
        XCTAssertEqual(c.virtDomains, .userid)
    }

    /// A file written with CRLF line endings (edited on Windows) reads like the LF one.
    func testParseAcceptsCRLFLineEndings() throws {
        var c = Config()
        try c.parse("# crlf\r\npartition-default: /srv/crlf\r\nmaxmessagesize: 1000\r\nvirtdomains: On\r\n", file: "f")
        XCTAssertEqual(c.partition, "/srv/crlf")
        XCTAssertEqual(c.maxMessageSize, 1000)
        XCTAssertEqual(c.virtDomains, .userid)

        var bad = Config()
        XCTAssertThrowsError(try bad.parse("servername: a\r\nbogus: 1\r\n", file: "f")) { error in
            XCTAssertEqual((error as? Config.ParseError)?.line, 2, "\(error)")
            XCTAssertEqual((error as? Config.ParseError)?.reason.contains("unknown key"), true, "\(error)")
        }
    }

    func testVirtdomainsValues() throws {
        let table: [(String, Config.VirtDomains)] = [
            ("off", .off), ("OFF", .off), ("no", .off), ("false", .off), ("0", .off),
            ("userid", .userid), ("on", .userid), ("yes", .userid), ("true", .userid), ("1", .userid),
        ]
        for (value, expected) in table {
            var c = Config()
            try c.set("virtdomains", value, file: "t", line: 1)
            XCTAssertEqual(c.virtDomains, expected, value)
        }
    }

    func testBoolValues() {
        for v in ["yes", "on", "true", "1", "t", "y", "YES", "True"] { XCTAssertEqual(Config.parseBool(v), true, v) }
        for v in ["no", "off", "false", "0", "f", "n", "NO", "Off"] { XCTAssertEqual(Config.parseBool(v), false, v) }
        for v in ["", "maybe", "2", "yess", " yes"] { XCTAssertNil(Config.parseBool(v), v) }
    }

    /// (file text, line of the error, a word the reason must contain)
    static let badFiles: [(String, Int, String)] = [
        ("# ok\npartition-default: /srv\nfrobnicate: 1\n", 3, "unknown key"),
        ("\n\n\n\nlmtp_strict_quota: maybe\n", 5, "yes/no"),
        ("unixhierarchysep: 2\n", 1, "yes/no"),
        ("maxmessagesize: 10k\n", 1, "whole number"),
        ("maxmessagesize: 1.5\n", 1, "whole number"),
        ("maxmessagesize: -1\n", 1, "0 or more"),
        ("autocreate_quota: -2\n", 1, "-1 or more"),
        ("autocreate_quota_messages: -2\n", 1, "-1 or more"),
        ("maxmessagesize: 99999999999999999999\n", 1, "whole number"),
        ("lmtp_max_recipients: 0\n", 1, "1 or more"),
        ("lock_timeout: -1\n", 1, "1 or more"),
        ("lmtp_listen: 127.0.0.1:24 [::1]:24 10.0.0.1:24\n", 1, "10.0.0.1:24 is not a loopback"),
        ("autocreate_quota: \n", 1, "whole number"),
        ("servername: a\n#\nservername: b\n", 3, "already set on line 1"),
        ("mail_owner: vmail\nmail_owner vmail\n", 2, "key: value"),
        ("just some words\n", 1, "key: value"),
        ("partition-default: var/spool/nestbox\n", 1, "absolute"),
        ("partition-default: \n", 1, "absolute"),
        ("virtdomains: maybe\n", 1, "off, userid or on"),
        ("syslog_facility: kern7\n", 1, "facility"),
        ("servername: a\u{1}b\n", 1, "control character"),
        ("postuser: a\u{7f}\n", 1, "control character"),
        ("Servername: x\n", 1, "unknown key"),
        (": x\n", 1, "unknown key"),
        ("duplicate_expire: soon\n", 1, "duration"),
        ("lmtpsocket_mode: 0999\n", 1, "octal"),
        ("lmtp_listen: 192.0.2.1:24\n", 1, "loopback"),
        ("lmtp_listen: nonsense\n", 1, "host:port"),
    ]

    func testParseErrorsNameTheLine() {
        for (text, line, reason) in Self.badFiles {
            var c = Config()
            XCTAssertThrowsError(try c.parse(text, file: "/etc/nb.conf"), text.debugDescription) { error in
                guard let e = error as? Config.ParseError else { return XCTFail("\(text.debugDescription): \(error)") }
                XCTAssertEqual(e.file, "/etc/nb.conf", text.debugDescription)
                XCTAssertEqual(e.line, line, text.debugDescription)
                XCTAssertTrue(e.reason.contains(reason), "\(text.debugDescription): \(e.reason)")
                XCTAssertTrue(e.description.hasPrefix("/etc/nb.conf:\(line): "), e.description)
            }
        }
    }

    /// The rules live in the key table: every key with a minimum takes it and refuses one less,
    /// every absolute-path key refuses a relative path, every word list takes its words.
    func testRulesComeFromTheKeyTable() throws {
        XCTAssertFalse(Config.keys.allSatisfy { $0.rules.isEmpty })
        for key in Config.keys {
            for rule in key.rules {
                var c = Config()
                switch rule {
                case .minimum(let m):
                    XCTAssertEqual(key.kind, .integer, key.name)
                    XCTAssertNoThrow(try c.set(key.name, "\(m)", file: "t", line: 1), key.name)
                    XCTAssertThrowsError(try c.set(key.name, "\(m - 1)", file: "t", line: 1), key.name) { error in
                        XCTAssertEqual((error as? Config.ParseError)?.reason, "\(key.name): must be \(m) or more")
                    }
                case .absolutePath:
                    XCTAssertNoThrow(try c.set(key.name, "/srv/x", file: "t", line: 1), key.name)
                    XCTAssertThrowsError(try c.set(key.name, "srv/x", file: "t", line: 1), key.name) { error in
                        XCTAssertEqual((error as? Config.ParseError)?.reason, "\(key.name): must be an absolute path, got \"srv/x\"")
                    }
                case .oneOf(let words, let shown):
                    for word in words + words.map { $0.uppercased() } {
                        XCTAssertNoThrow(try c.set(key.name, word, file: "t", line: 1), "\(key.name) \(word)")
                    }
                    XCTAssertThrowsError(try c.set(key.name, "neither", file: "t", line: 1), key.name) { error in
                        XCTAssertEqual((error as? Config.ParseError)?.reason, "\(key.name): expected \(shown), got \"neither\"")
                    }
                case .loopbackOnly:
                    XCTAssertNoThrow(try c.set(key.name, "127.0.0.1:24 localhost:2424 [::1]:24", file: "t", line: 1), key.name)
                    XCTAssertThrowsError(try c.set(key.name, "192.0.2.1:24", file: "t", line: 1), key.name)
                case .absolutePathOrEmpty:
                    XCTAssertNoThrow(try c.set(key.name, "", file: "t", line: 1), key.name)
                    XCTAssertNoThrow(try c.set(key.name, "/srv/x", file: "t", line: 1), key.name)
                    XCTAssertThrowsError(try c.set(key.name, "srv/x", file: "t", line: 1), key.name)
                case .wordsFrom(let words):
                    XCTAssertNoThrow(try c.set(key.name, words.joined(separator: " ").uppercased(), file: "t", line: 1), key.name)
                    XCTAssertThrowsError(try c.set(key.name, "\(words[0]) neither", file: "t", line: 1), key.name)
                case .retentionRules:
                    XCTAssertNoThrow(try c.set(key.name, "Trash=30d Junk=14d+flagged Lists/*=1w12h Old=90", file: "t", line: 1), key.name)
                    for bad in ["Trash", "=30d", "Trash=", "Trash=30x", "Trash=-1d"] {
                        XCTAssertThrowsError(try c.set(key.name, bad, file: "t", line: 1), "\(key.name) \(bad)")
                    }
                case .logFile:
                    for good in ["", "stderr", "/var/log/nestbox.log"] {
                        XCTAssertNoThrow(try c.set(key.name, good, file: "t", line: 1), "\(key.name) \(good)")
                    }
                    XCTAssertThrowsError(try c.set(key.name, "nestbox.log", file: "t", line: 1), key.name)
                }
            }
        }
    }

    func testLockPolicyFollowsLockTimeout() throws {
        XCTAssertEqual(Config().lockPolicy.timeout, 122)
        var c = Config()
        try c.set("lock_timeout", "7", file: "t", line: 1)
        XCTAssertEqual(c.lockPolicy.timeout, 7)
        XCTAssertEqual(c.lockPolicy.staleAfter, DotLock.Options().staleAfter)
    }

    func testFailedSetKeepsOldValue() {
        var c = Config()
        XCTAssertThrowsError(try c.set("maxmessagesize", "big", file: "t", line: 1))
        XCTAssertEqual(c.maxMessageSize, 0)
        XCTAssertThrowsError(try c.set("partition-default", "relative", file: "t", line: 1))
        XCTAssertEqual(c.partition, "/var/spool/nestbox")
    }

    // MARK: Config.load

    private func writeConf(_ name: String, _ text: String) -> String {
        let path = "\(dir)/\(name)"
        TestFS.write(path, text)
        return path
    }

    func testLoadExplicitPath() throws {
        let path = writeConf("a.conf", "partition-default: /srv/a\nmaxmessagesize: 1000\n")
        let c = try Config.load(explicitPath: path, environment: ["NESTBOX_CONF": "/nonexistent/b.conf"])
        XCTAssertEqual(c.partition, "/srv/a", "-C wins over NESTBOX_CONF")
        XCTAssertEqual(c.maxMessageSize, 1000)
        XCTAssertEqual(c.source, path)
    }

    func testLoadFromEnvironment() throws {
        let path = writeConf("env.conf", "partition-default: /srv/env\n")
        let c = try Config.load(explicitPath: nil, environment: ["NESTBOX_CONF": path])
        XCTAssertEqual(c.partition, "/srv/env")
        XCTAssertEqual(c.source, path)
    }

    func testLoadWithOverrides() throws {
        let path = writeConf("o.conf", "partition-default: /srv/file\nmaxmessagesize: 1000\n")
        let c = try Config.load(explicitPath: nil, environment: ["NESTBOX_CONF": path],
                                overrides: ["maxmessagesize=2000", " servername = mx.test ", "postuser=a=b",
                                            "partition-default=/srv/override"])
        XCTAssertEqual(c.maxMessageSize, 2000, "-o wins over the file")
        XCTAssertEqual(c.serverName, "mx.test")
        XCTAssertEqual(c.postUser, "a=b", "only the first = splits")
        XCTAssertEqual(c.partition, "/srv/override")
        // -o may also set a key twice: the last one wins.
        let twice = try Config.load(explicitPath: path, environment: [:], overrides: ["maxmessagesize=1", "maxmessagesize=2"])
        XCTAssertEqual(twice.maxMessageSize, 2)
    }

    func testLoadOverrideErrors() {
        let path = writeConf("o.conf", "")
        let table: [([String], Int, String)] = [
            (["maxmessagesize=1", "nokeyvalue"], 2, "key=value"),
            (["bogus=1"], 1, "unknown key"),
            (["servername=a", "maxmessagesize=lots"], 2, "whole number"),
            (["partition-default=relative"], 1, "absolute"),
        ]
        for (overrides, line, reason) in table {
            XCTAssertThrowsError(try Config.load(explicitPath: path, environment: [:], overrides: overrides), "\(overrides)") { error in
                guard let e = error as? Config.ParseError else { return XCTFail("\(error)") }
                XCTAssertEqual(e.file, "-o")
                XCTAssertEqual(e.line, line, "\(overrides)")
                XCTAssertTrue(e.reason.contains(reason), e.reason)
            }
        }
    }

    func testLoadErrorInFileNamesFileAndLine() {
        let path = writeConf("bad.conf", "partition-default: /srv\n\nlmtp_strict_quota: perhaps\n")
        XCTAssertThrowsError(try Config.load(explicitPath: nil, environment: ["NESTBOX_CONF": path])) { error in
            XCTAssertEqual((error as? Config.ParseError)?.description.hasPrefix("\(path):3: "), true, "\(error)")
        }
    }

    func testLoadMissingFileIsAnError() {
        let missing = "\(dir)/missing.conf"
        for (explicit, env) in [(missing, [String: String]()), (nil, ["NESTBOX_CONF": missing])] {
            XCTAssertThrowsError(try Config.load(explicitPath: explicit, environment: env)) { error in
                guard let e = error as? Config.ParseError else { return XCTFail("\(error)") }
                XCTAssertEqual(e.file, missing)
                XCTAssertEqual(e.line, 0)
                XCTAssertTrue(e.reason.contains("cannot read"), e.reason)
                XCTAssertEqual(e.description, "\(missing): \(e.reason)")
            }
        }
    }

    func testLoadIgnoresEmptyNESTBOX_CONF() throws {
        // With NESTBOX_CONF empty the default path is tried; on a machine without it, the defaults.
        let c = try Config.load(explicitPath: nil, environment: ["NESTBOX_CONF": ""], overrides: ["postuser=x"])
        XCTAssertEqual(c.postUser, "x")
        if !Files.exists(Config.defaultPath) {
            XCTAssertEqual(c.source, "built-in defaults")
            XCTAssertEqual(c.partition, "/var/spool/nestbox")
        }
    }

    /// An unknown key names the nearest known one; nothing when none is near.
    func testUnknownKeySuggestsTheNearestKey() {
        let table: [(String, String?)] = [
            ("mail_ower", "mail_owner"), ("partition_default", "partition-default"), ("Mail_Owner", "mail_owner"),
            ("lmtpsocketgroup", "lmtpsocket_group"), ("duplicate_expiry", "duplicate_expire"),
            ("no_such_key", nil), ("x", nil), ("sasl_pwcheck_method", nil),
        ]
        for (key, wanted) in table {
            XCTAssertEqual(Config.suggestion(for: key), wanted, key)
            var c = Config()
            XCTAssertThrowsError(try c.parse("\(key): 1\n", file: "/etc/nb.conf")) { error in
                let reason = (error as? Config.ParseError)?.reason ?? ""
                if let wanted {
                    XCTAssertEqual(reason, "unknown key \"\(key)\" (did you mean \(wanted)?)")
                } else {
                    XCTAssertEqual(reason, "unknown key \"\(key)\"")
                }
            }
        }
    }

    /// A "# comment" after a value is part of it: an error about such a value says so.
    func testTrailingCommentGetsAHint() {
        var c = Config()
        XCTAssertThrowsError(try c.parse("lmtp_strict_quota: yes # strict\n", file: "/etc/nb.conf")) { error in
            XCTAssertEqual("\(error)", "/etc/nb.conf:1: lmtp_strict_quota: expected yes/no, on/off, true/false or 1/0, got \"yes # strict\" "
                           + "(comments are whole lines starting with #: \"# strict\" is read as part of the value)")
        }
        XCTAssertEqual(Config.commentHint("a#b"), "", "a # inside a word is no comment")
        XCTAssertEqual(Config.commentHint("plain"), "")
    }

    /// Errors found after parsing name the key as written and where: file:line, -o, or the
    /// built-in default; keysSet lists what the file and -o set.
    func testLaterErrorsNameTheKeyAndWhereItWasSet() throws {
        let path = writeConf("later.conf", "# owner\n\nmail_owner: vmial\nservername: mx.test\n")
        let c = try Config.load(explicitPath: path, environment: [:], overrides: ["lock_timeout=5", "lmtpsocket_group=nosuch"])
        XCTAssertEqual(c.failure("mail_owner", "no such user").detail, "\(path):3: mail_owner vmial: no such user")
        XCTAssertEqual(c.failure("mail_owner", "x").outcome, .config)
        XCTAssertEqual(c.describe("lmtpsocket_group", "no such group"), "-o:2: lmtpsocket_group nosuch: no such group")
        XCTAssertEqual(c.describe("lmtpsocket_owner", "no such user"), "lmtpsocket_owner (empty) (built-in default): no such user")
        XCTAssertEqual(c.origin(of: "servername")?.description, "\(path):4")
        XCTAssertNil(c.origin(of: "maxmessagesize"))
        XCTAssertEqual(c.keysSet.map(\.name), ["mail_owner", "servername", "lmtpsocket_group", "lock_timeout"])
        let hinted = try Config.load(explicitPath: writeConf("hash.conf", "mail_owner: vmail # the owner\n"), environment: [:])
        XCTAssertTrue(hinted.describe("mail_owner", "no such user").hasSuffix(
            ": mail_owner vmail # the owner: no such user (comments are whole lines starting with #: \"# the owner\" is read as part of the value)"))
    }
}
