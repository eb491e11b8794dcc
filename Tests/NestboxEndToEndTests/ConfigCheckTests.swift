import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Configuration errors as the administrator meets them: each names the key as written and its
/// `file:line` (or `-o`), also when found after parsing, on standard error for the server and
/// the tools and on the DSN line for nestbox-deliver; and `--check-config`, every program's
/// `postconf -n`.
final class ConfigCheckTests: XCTestCase {
    static let programs = ["nestbox-deliver", "nestbox-lmtpd", "nestbox-purge", "nestbox-quota", "nestbox-reconstruct", "nestbox-passwd"]

    /// A valid configuration in a fresh directory: a mail root owned by the mail owner.
    func writeConfig(_ dir: String, _ lines: [String]) throws -> String {
        let path = "\(dir)/nestbox.conf"
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func validLines(_ dir: String) throws -> [String] {
        let root = "\(dir)/mail"
        if !FileManager.default.fileExists(atPath: root) {
            XCTAssertEqual(mkdir(root, 0o700), 0)
            try Harness.chownToMailOwner(root)
        }
        return ["# a site's file", "partition-default: \(root)", "", "mail_owner: \(Harness.mailOwner)",
                "lmtpsocket: \(dir)/lmtp", "duplicate_expire: 7d", "servername: mx.example.test"]
    }

    func run(_ program: String, _ arguments: [String]) throws -> Harness.Result {
        try Harness.run(Harness.binary(program), arguments, input: Data(sampleMessage.utf8))
    }

    // MARK: Errors found after parsing

    func testMailOwnerErrorNamesTheKeyAndLineOnTheDSNLineAndStandardError() throws {
        let dir = try Harness.makeTempDir("cfgowner")
        defer { Harness.removeTree(dir) }
        var lines = try validLines(dir)
        lines[3] = "mail_owner: vmial"
        let path = try writeConfig(dir, lines)
        let d = try run("nestbox-deliver", ["-C", path, "alice"])
        XCTAssertEqual(d.status, 78)
        XCTAssertEqual(d.stdout, "4.3.5 Local configuration error: \(path):4: mail_owner vmial: no such user\n")
        let l = try run("nestbox-lmtpd", ["-C", path])
        XCTAssertEqual(l.status, 78)
        XCTAssertTrue(l.stderr.contains("\(path):4: mail_owner vmial: no such user"), l.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/lmtp"), "no socket touched")
        // -o names itself instead of a file and line.
        lines[3] = "mail_owner: \(Harness.mailOwner)"
        let good = try writeConfig(dir, lines)
        let o = try run("nestbox-deliver", ["-C", good, "-o", "servername=x", "-o", "mail_owner=vmial", "alice"])
        XCTAssertEqual(o.status, 78)
        XCTAssertEqual(o.stdout, "4.3.5 Local configuration error: -o:2: mail_owner vmial: no such user\n")
    }

    func testSocketGroupErrorNamesTheKeyAndLine() throws {
        let dir = try Harness.makeTempDir("cfggroup")
        defer { Harness.removeTree(dir) }
        let path = try writeConfig(dir, try validLines(dir) + ["lmtpsocket_group: no-such-group-here"])
        let l = try run("nestbox-lmtpd", ["-C", path])
        XCTAssertEqual(l.status, 78)
        XCTAssertTrue(l.stderr.contains("\(path):8: lmtpsocket_group no-such-group-here: no such group"), l.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/lmtp"), "no socket touched")
    }

    /// A "# comment" after a value is part of the value: the error says so.
    func testTrailingCommentGetsAHint() throws {
        let dir = try Harness.makeTempDir("cfghash")
        defer { Harness.removeTree(dir) }
        var lines = try validLines(dir)
        lines[3] = "mail_owner: \(Harness.mailOwner) # the owner"
        let path = try writeConfig(dir, lines)
        let d = try run("nestbox-deliver", ["-C", path, "alice"])
        XCTAssertEqual(d.status, 78)
        XCTAssertEqual(d.stdout, "4.3.5 Local configuration error: \(path):4: mail_owner \(Harness.mailOwner) # the owner: no such user "
            + "(comments are whole lines starting with #: \"# the owner\" is read as part of the value)\n")
        // Also when the value is checked while the file is read.
        lines[3] = "mail_owner: \(Harness.mailOwner)"
        let parsed = try writeConfig(dir, lines + ["maxmessagesize: 1000 # bytes"])
        let p = try run("nestbox-lmtpd", ["-C", parsed])
        XCTAssertEqual(p.status, 78)
        XCTAssertEqual(p.stderr, "nestbox-lmtpd: \(parsed):8: maxmessagesize: expected a whole number, got \"1000 # bytes\" "
            + "(comments are whole lines starting with #: \"# bytes\" is read as part of the value)\n")
    }

    func testUnknownKeyGetsADidYouMean() throws {
        let dir = try Harness.makeTempDir("cfgkey")
        defer { Harness.removeTree(dir) }
        let path = try writeConfig(dir, try validLines(dir) + ["lmtpsocket_grup: postfix"])
        for program in Self.programs {
            let r = try run(program, ["-C", path])
            XCTAssertEqual(r.status, 78, program)
            let text = program == "nestbox-deliver" ? r.stdout : r.stderr
            XCTAssertTrue(text.contains("\(path):8: unknown key \"lmtpsocket_grup\" (did you mean lmtpsocket_group?)"), "\(program): \(text)")
        }
    }

    // MARK: --check-config

    /// A valid file: exit 0, exactly the keys it sets (in the key table's order), nothing on
    /// standard error; with --all-keys every key once, with its value in force.
    func testCheckConfigPrintsTheKeysSetAndAllKeys() throws {
        let dir = try Harness.makeTempDir("cfgcheck")
        defer { Harness.removeTree(dir) }
        let lines = try validLines(dir)
        let path = try writeConfig(dir, lines)
        let written = lines.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        for program in Self.programs {
            let r = try run(program, ["-C", path, "--check-config"])
            XCTAssertEqual(r.status, 0, "\(program): \(r.stderr)")
            XCTAssertEqual(r.stderr, "", program)
            let printed = r.stdout.split(separator: "\n").map(String.init)
            XCTAssertEqual(printed.first, "# \(path)", program)
            XCTAssertEqual(Set(printed.dropFirst()), Set(written), program)
            XCTAssertEqual(printed.count - 1, written.count, program)
        }
        let all = try run("nestbox-quota", ["-C", path, "--check-config", "--all-keys"])
        XCTAssertEqual(all.status, 0, all.stderr)
        let keys = all.stdout.split(separator: "\n").dropFirst().map { String($0.prefix { $0 != ":" }) }
        XCTAssertEqual(keys, Config.keys.map(\.name))
        XCTAssertTrue(all.stdout.contains("\nduplicate_expire: 7d\n") && all.stdout.contains("\nlmtp_max_recipients: 500\n"), all.stdout)
        // -o counts as set.
        let o = try run("nestbox-lmtpd", ["-C", path, "-o", "lock_timeout=30", "--check-config"])
        XCTAssertEqual(o.status, 0, o.stderr)
        XCTAssertTrue(o.stdout.contains("\nlock_timeout: 30\n"), o.stdout)
        XCTAssertEqual(try run("nestbox-lmtpd", ["-C", path, "--all-keys"]).status, 64, "--all-keys alone is a usage error")
    }

    /// Each kind of error: 78, the key and its file:line on standard error (also for
    /// nestbox-deliver, whose check is run by an administrator, not by pipe(8)).
    func testCheckConfigErrorsNameKeyAndLine() throws {
        let dir = try Harness.makeTempDir("cfgerrors")
        defer { Harness.removeTree(dir) }
        let base = try validLines(dir)
        let rootOwned = "\(dir)/rootowned"
        XCTAssertEqual(mkdir(rootOwned, 0o755), 0)
        chmod(rootOwned, 0o755)
        let rootLog = "\(dir)/root.log"
        XCTAssertTrue(FileManager.default.createFile(atPath: rootLog, contents: nil))
        chmod(rootLog, 0o644)
        let uid = getpwnam(Harness.mailOwner)!.pointee.pw_uid
        let table: [(line: String, wanted: String)] = [
            ("mail_owner: vmial", "mail_owner vmial: no such user"),
            ("lmtpsocket_group: no-such-group-here", "lmtpsocket_group no-such-group-here: no such group"),
            ("lmtpsocket_owner: no-such-user-here", "lmtpsocket_owner no-such-user-here: no such user"),
            ("partition-default: \(rootOwned)",
             "partition-default \(rootOwned): mail root \(rootOwned) not writable by uid \(uid) (vmail): owner root, mode 0755 (mail_owner is vmail)"),
            ("log_file: \(rootLog)", "log_file \(rootLog): not writable by uid \(uid) (vmail) (owner root, mode 0644); mail_owner is vmail"),
            ("mbox_spool_directory: \(dir)/no-such-dir", "mbox_spool_directory \(dir)/no-such-dir: is not a directory"),
            ("maxmessagesize: lots", "maxmessagesize: expected a whole number, got \"lots\""),
            ("mail_ownr: vmail", "unknown key \"mail_ownr\" (did you mean mail_owner?)"),
        ]
        for (line, wanted) in table {
            // The line replaces the same key in the base, else comes last.
            let key = String(line.prefix { $0 != ":" })
            var lines = base
            let number: Int
            if let i = lines.firstIndex(where: { $0.hasPrefix("\(key):") }) {
                lines[i] = line
                number = i + 1
            } else {
                lines.append(line)
                number = lines.count
            }
            let path = try writeConfig(dir, lines)
            for program in ["nestbox-deliver", "nestbox-lmtpd"] {
                let r = try run(program, ["-C", path, "--check-config"])
                XCTAssertEqual(r.status, 78, "\(program) \(line): \(r.stdout) \(r.stderr)")
                XCTAssertTrue(r.stderr.contains("\(program): error: \(path):\(number): \(wanted)\n"), "\(program) \(line): \(r.stderr)")
                XCTAssertFalse(r.stdout.hasPrefix("4."), "no DSN line from a check: \(r.stdout)")
            }
        }
    }

    /// Warnings (the autocreate trap, a "#" in a value) are said, with the key and line, and
    /// leave the exit status 0.
    func testCheckConfigWarningsExitZero() throws {
        let dir = try Harness.makeTempDir("cfgwarn")
        defer { Harness.removeTree(dir) }
        let path = try writeConfig(dir, try validLines(dir) + ["autocreate_post: yes", "postuser: shared # the poster"])
        let r = try run("nestbox-deliver", ["-C", path, "--check-config"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("nestbox-deliver: warning: \(path):8: autocreate_post yes: is on, but autocreate_quota is -1"), r.stderr)
        XCTAssertTrue(r.stderr.contains("nestbox-deliver: warning: \(path):9: postuser shared # the poster: holds a \"#\" after a space"
            + " (comments are whole lines starting with #: \"# the poster\" is read as part of the value)"), r.stderr)
        // Mended, the check is silent.
        let mended = try writeConfig(dir, try validLines(dir) + ["autocreate_post: yes", "autocreate_quota: 0"])
        let m = try run("nestbox-deliver", ["-C", mended, "--check-config"])
        XCTAssertEqual(m.status, 0)
        XCTAssertEqual(m.stderr, "")
    }
}
