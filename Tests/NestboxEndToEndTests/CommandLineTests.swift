import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// Both programs' command lines as the tool bootstrap reads them: getopt forms, usage errors
/// and their exit statuses, configuration errors, --help and --version.
final class CommandLineTests: XCTestCase {
    /// Cyrus deliver forms: bundled flags, values attached, options after users, --.
    func testDeliverGetoptForms() throws {
        let f = try DeliverFixture()
        try f.makeUser("alice")
        try f.makeUser("-bob")
        let table: [[String]] = [
            ["-eq", "-rs@example.org", "alice"],
            ["-de", "-r", "s@example.org", "-m", "", "alice"],
            ["alice", "-q"],
            ["-qfs@example.org", "alice"],
            ["--", "-bob"],
        ]
        for args in table {
            let r = try f.deliver(args, sampleMessage)
            XCTAssertEqual(r.status, 0, "\(args): \(r.stdout)\(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
        XCTAssertEqual(try f.messages("alice").count, 4)
        XCTAssertEqual(try f.messages("-bob").count, 1)
        let attached = try Harness.run(Harness.binary("nestbox-deliver"), ["-C\(f.configPath)", "-L", "alice"],
                                       input: Data(sampleMessage.utf8))
        XCTAssertEqual(attached.status, 0, attached.stdout + attached.stderr)
        XCTAssertEqual(try f.messages("alice").count, 5, "-Cfile reads the same file as -C file")
    }

    /// (arguments, the detail after "4.3.5 Command line usage error: ")
    func testDeliverUsageErrors() throws {
        let f = try DeliverFixture()
        let table: [([String], String)] = [
            (["-x", "alice"], "unknown option -x (see --help)"),
            (["-qz", "alice"], "unknown option -z (see --help)"),
            (["--bogus", "alice"], "unknown option --bogus (see --help)"),
            (["alice", "-m"], "option -m needs a value (see --help)"),
            ([], "no user and no -m folder given (see --help)"),
            (["-q", "-m", ""], "no user and no -m folder given (see --help)"),
        ]
        for (args, detail) in table {
            let r = try f.deliver(args, sampleMessage)
            XCTAssertEqual(r.status, 64, "\(args)")
            XCTAssertEqual(r.stdout, "4.3.5 Command line usage error: \(detail)\n", "\(args)")
        }
    }

    func testLMTPDUsageAndConfigErrors() throws {
        let lmtpd = Harness.binary("nestbox-lmtpd")
        let table: [([String], Int32, String)] = [
            (["-x"], 64, "nestbox-lmtpd: unknown option -x (see --help)\n"),
            (["alice"], 64, "nestbox-lmtpd: unexpected argument alice (see --help)\n"),
            (["-C"], 64, "nestbox-lmtpd: option -C needs a value (see --help)\n"),
            (["-Li", "-C", "/nonexistent/n.conf"], 78, "nestbox-lmtpd: /nonexistent/n.conf: cannot read: No such file or directory\n"),
            (["-C/nonexistent/n.conf"], 78, "nestbox-lmtpd: /nonexistent/n.conf: cannot read: No such file or directory\n"),
            (["-o", "lmtp_max_recipients=0"], 78, "nestbox-lmtpd: -o:1: lmtp_max_recipients: must be 1 or more\n"),
        ]
        for (args, status, stderr) in table {
            let r = try Harness.run(lmtpd, args, input: Data())
            XCTAssertEqual(r.status, status, "\(args)")
            XCTAssertEqual(r.stderr, stderr, "\(args)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
    }

    func testHelpAndVersionOfBoth() throws {
        for program in ["nestbox-deliver", "nestbox-lmtpd"] {
            for args in [["--help"], ["-h"], ["-x", "--help"]] {
                let r = try Harness.run(Harness.binary(program), args)
                XCTAssertEqual(r.status, 0, "\(program) \(args)")
                XCTAssertTrue(r.stdout.hasPrefix("usage: \(program) [-C file] [-o key=value]..."), r.stdout)
                XCTAssertTrue(r.stdout.contains("\n  -L "), r.stdout)
                XCTAssertTrue(r.stdout.contains("Exit status: 0 "), r.stdout)
                XCTAssertEqual(r.stderr, "")
            }
            let v = try Harness.run(Harness.binary(program), ["--version"])
            XCTAssertEqual(v.status, 0)
            XCTAssertTrue(v.stdout.hasPrefix("\(program) ") && v.stdout.hasSuffix("\n"), v.stdout)
        }
    }
}
