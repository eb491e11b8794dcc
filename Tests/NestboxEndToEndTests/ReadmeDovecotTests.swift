import Foundation
import XCTest

/// The README's Dovecot configuration, taken verbatim from between its markers, on Debian's
/// stock configuration (a copy of /etc/dovecot as the dovecot-core package ships it): a
/// throwaway Dovecot listens on a loopback port, a user of the SASL database (no Unix account)
/// logs in over IMAP through the README's passdb, and the session works: no namespace
/// separator error, LIST, GETQUOTAROOT and MYRIGHTS answer.
final class ReadmeDovecotTests: XCTestCase {
    static let begin = "<!-- dovecot local.conf begin -->"
    static let end = "<!-- dovecot local.conf end -->"

    /// The code blocks between the README's markers, joined.
    static func readmeBlock() throws -> String {
        let readme = Harness.read("\(Harness.packageRoot)/README.md")
        let start = try XCTUnwrap(readme.range(of: begin), "README lacks \(begin)")
        let stop = try XCTUnwrap(readme.range(of: end, range: start.upperBound..<readme.endIndex), "README lacks \(end)")
        var blocks: [String] = [], current: [Substring]? = nil
        for line in readme[start.upperBound..<stop.lowerBound].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") {
                if let c = current { blocks.append(c.joined(separator: "\n")); current = nil } else { current = [] }
            } else if current != nil {
                current!.append(line)
            }
        }
        XCTAssertFalse(blocks.isEmpty, "no code block between the README's Dovecot markers")
        return blocks.joined(separator: "\n") + "\n"
    }

    func testReadmeDovecotConfigurationOnDebiansStockConfiguration() throws {
        for path in ["/usr/sbin/dovecot", "/usr/lib/dovecot/imap", "/etc/dovecot/dovecot.conf"] {
            guard FileManager.default.fileExists(atPath: path) else {
                XCTFail("\(path) is missing (Debian packages dovecot-core, dovecot-imapd)")
                return
            }
        }
        let dir = try Harness.makeTempDir("readme-dovecot")
        defer { Harness.removeTree(dir) }
        let mailRoot = "\(dir)/mail", prefix = "\(dir)/inst/usr/local", etc = "\(dir)/etc/dovecot"

        // Nestbox as the README installs it (programs of this build), a SASL user "alice".
        let inst = try Harness.run("/bin/sh", ["\(Harness.packageRoot)/scripts/install.sh", "--from", Harness.binDir,
                                               "--destdir", "\(dir)/inst"])
        XCTAssertEqual(inst.status, 0, inst.stdout + inst.stderr)
        let sasldb = "\(dir)/sasldb2"
        let conf = try Harness.writeConfig(in: dir, ["partition-default": mailRoot, "mail_owner": Harness.mailOwner,
                                                      "sasl_sasldb_path": sasldb, "defaultdomain": "example.test"])
        let pw = try Harness.run("\(prefix)/bin/nestbox-passwd", ["-C", conf, "-c", "-p", "alice"], input: Data("s3cret pass\n".utf8))
        XCTAssertEqual(pw.status, 0, pw.stderr)
        let deliver = try Harness.run("\(prefix)/bin/nestbox-deliver",
                                      ["-C", conf, "-o", "autocreate_post=yes", "-o", "autocreate_quota=2048", "alice"],
                                      input: Data(sampleMessage.utf8))
        XCTAssertEqual(deliver.status, 0, deliver.stderr)
        try FileManager.default.createDirectory(atPath: "\(mailRoot)/public", withIntermediateDirectories: true)
        try Harness.chownTreeToMailOwner(mailRoot)

        // Debian's stock configuration, the README's local.conf, and only the test's own paths
        // and listener after it.
        try FileManager.default.createDirectory(atPath: "\(dir)/etc", withIntermediateDirectories: true)
        let copy = try Harness.run("/bin/cp", ["-a", "/etc/dovecot", etc])
        XCTAssertEqual(copy.status, 0, copy.stderr)
        // The session is plain text on loopback: the stock certificate, which a minimal
        // install may lack, is not read.
        let ssl = "\(etc)/conf.d/10-ssl.conf"
        try Harness.read(ssl).replacingOccurrences(of: "\nssl_cert = <", with: "\n#ssl_cert = <")
            .replacingOccurrences(of: "\nssl_key = <", with: "\n#ssl_key = <").write(toFile: ssl, atomically: true, encoding: .utf8)
        let port = try Net.freeLoopbackPort()
        let block = try Self.readmeBlock()
            .replacingOccurrences(of: "/var/spool/nestbox", with: mailRoot)
            .replacingOccurrences(of: "/usr/local/lib/nestbox/checkpassword", with: "\(prefix)/lib/nestbox/checkpassword -C \(conf)")
        let testOnly = """
        # the test's own paths and listener
        base_dir = \(dir)/run
        state_dir = \(dir)/state
        log_path = \(dir)/dovecot.log
        ssl = no
        protocols = imap
        listen = 127.0.0.1
        service imap-login {
          inet_listener imap {
            port = \(port)
          }
          inet_listener imaps {
            port = 0
          }
        }
        """
        try (Harness.read("\(etc)/local.conf") + block + testOnly + "\n")
            .write(toFile: "\(etc)/local.conf", atomically: true, encoding: .utf8)
        let doveconf = try Harness.run("/usr/bin/doveconf", ["-c", "\(etc)/dovecot.conf", "-n"])
        XCTAssertEqual(doveconf.status, 0, doveconf.stderr)

        // In the foreground, as a child of the test, its output in a file.
        FileManager.default.createFile(atPath: "\(dir)/start.out", contents: nil)
        let dovecot = Process()
        dovecot.executableURL = URL(fileURLWithPath: "/usr/sbin/dovecot")
        dovecot.arguments = ["-F", "-c", "\(etc)/dovecot.conf"]
        dovecot.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        dovecot.standardOutput = FileHandle(forWritingAtPath: "\(dir)/start.out")
        dovecot.standardError = dovecot.standardOutput
        try dovecot.run()
        defer {
            dovecot.terminate()
            dovecot.waitUntilExit()
        }

        let python = try Python.require()
        let script = #"""
        import imaplib, json, sys, time
        port = int(sys.argv[1])
        for _ in range(100):
            try:
                m = imaplib.IMAP4("127.0.0.1", port); break
            except OSError:
                time.sleep(0.1)
        out = {}
        m.login("alice", "s3cret pass")
        def run(name, *args):
            typ, data = m._simple_command(name, *args)
            lines = []
            for key in ("QUOTA", "QUOTAROOT", "MYRIGHTS", "LIST"):
                lines += [key + " " + (d.decode() if isinstance(d, bytes) else str(d)) for d in m.untagged_responses.pop(key, [])]
            out[name] = {"status": typ, "lines": lines}
        run("LIST", '""', '"*"')
        run("GETQUOTAROOT", "INBOX")
        run("MYRIGHTS", "INBOX")
        typ, data = m.select("INBOX")
        out["SELECT"] = {"status": typ, "lines": [d.decode() for d in data]}
        m.logout()
        print(json.dumps(out))
        """#
        try script.write(toFile: "\(dir)/imap.py", atomically: true, encoding: .utf8)
        let r = try Harness.run(python, ["\(dir)/imap.py", String(port)], timeout: 60)
        let log = Harness.read("\(dir)/dovecot.log")
        XCTAssertFalse(log.contains("must use the same separator"), log)
        XCTAssertEqual(r.status, 0, "IMAP session: \(r.stderr)\nDovecot: \(Harness.read("\(dir)/start.out"))\n\(log)")
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: [String: Any]], r.stdout)
        func lines(_ command: String) -> [String] { (json[command]?["lines"] as? [String]) ?? [] }
        for command in ["LIST", "GETQUOTAROOT", "MYRIGHTS", "SELECT"] {
            XCTAssertEqual(json[command]?["status"] as? String, "OK", "\(command): \(json[command] ?? [:])")
        }
        XCTAssertTrue(lines("LIST").contains { $0.contains("\"/\" INBOX") }, "LIST: \(lines("LIST"))")
        XCTAssertTrue(lines("LIST").contains { $0.contains("\"/\" Public") }, "LIST shows the public namespace: \(lines("LIST"))")
        // The limit the first delivery set (autocreate_quota 2048 KiB), the usage of one message.
        XCTAssertTrue(lines("GETQUOTAROOT").contains { $0.contains("STORAGE") && $0.contains(" 2048)") },
                      "GETQUOTAROOT: \(lines("GETQUOTAROOT"))")
        XCTAssertTrue(lines("MYRIGHTS").contains { $0.hasPrefix("MYRIGHTS INBOX ") && $0.contains("l") && $0.contains("r") },
                      "MYRIGHTS: \(lines("MYRIGHTS"))")
        XCTAssertEqual(json["SELECT"]?["lines"] as? [String], ["1"], "one message in INBOX")
        XCTAssertFalse(log.contains("Error:"), log)
    }
}
