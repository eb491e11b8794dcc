import Foundation
import NestboxSupport
import XCTest

/// Every program has a manual page in Postfix's section order that groff renders without
/// warnings; the README and nestbox.conf(5) list every configuration key with its default.
final class DocumentationTests: XCTestCase {
    let sections = ["NAME", "SYNOPSIS", "DESCRIPTION", "SECURITY", "DIAGNOSTICS", "CONFIGURATION PARAMETERS", "SEE ALSO"]

    func testEveryProgramHasAManualPageInPostfixOrder() throws {
        let programs = try FileManager.default.contentsOfDirectory(atPath: "\(Harness.packageRoot)/Sources")
            .filter { $0.hasPrefix("nestbox-") }
        XCTAssertFalse(programs.isEmpty)
        for program in programs {
            let path = "\(Harness.packageRoot)/man/\(program).8"
            let text = Harness.read(path)
            XCTAssertFalse(text.isEmpty, "\(path) missing")
            let found = text.split(separator: "\n").filter { $0.hasPrefix(".SH ") }
                .map { $0.dropFirst(4).trimmingCharacters(in: CharacterSet(charactersIn: "\" ")) }
            let wanted = found.filter { sections.contains($0) }
            XCTAssertEqual(wanted, sections, "\(program): sections \(found)")
            try assertRendersCleanly(path)
        }
        try assertRendersCleanly("\(Harness.packageRoot)/man/nestbox.conf.5")
    }

    /// The LMTP sample tells what Debian's own master.cf does: its lmtp service is chrooted
    /// (a "y" in the chroot column), so the sample must say how to turn that off.
    func testLMTPSampleMatchesDebiansMasterCf() throws {
        let master = Harness.read("/usr/share/postfix/master.cf.dist")
        let lmtp = try XCTUnwrap(master.split(separator: "\n").first { $0.hasPrefix("lmtp ") }, "Postfix's master.cf.dist has no lmtp line")
        let columns = lmtp.split(separator: " ", omittingEmptySubsequences: true)
        XCTAssertEqual(columns[4], "y", "Debian chroots lmtp: \(lmtp)")
        let sample = Harness.read("\(Harness.packageRoot)/postfix/main.cf.lmtp")
        XCTAssertFalse(sample.contains("is not chrooted"), "postfix/main.cf.lmtp says the opposite of Debian's master.cf")
        XCTAssertTrue(sample.contains("postconf -F lmtp/unix/chroot=n"), "postfix/main.cf.lmtp must say how to turn the chroot off")
    }

    /// nestbox-deliver puts a configuration error on its DSN line (standard output, which pipe(8)
    /// reports), not on standard error; its manual page says so.
    func testDeliverManualSaysWhereConfigurationErrorsGo() throws {
        let r = try Harness.run(Harness.binary("nestbox-deliver"), ["-o", "no_such_key=1", "alice"], input: Data())
        XCTAssertEqual(r.status, 78)
        XCTAssertTrue(r.stdout.hasPrefix("4.3.5 ") && r.stdout.contains("no_such_key"), r.stdout)
        XCTAssertEqual(r.stderr, "")
        let page = Harness.read("\(Harness.packageRoot)/man/nestbox-deliver.8")
        XCTAssertFalse(page.contains("\\fIfile\\fB:\\fIline\\fR, goes to standard error"), "the manual says standard error")
        XCTAssertTrue(page.contains("is on the DSN line on standard output"))
    }

    private func assertRendersCleanly(_ path: String) throws {
        let r = try Harness.run("/usr/bin/groff", ["-man", "-ww", "-z", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "", "\(path): groff warnings")
    }

    func testReadmeAndManualListEveryKeyWithItsDefault() throws {
        let readme = Harness.read("\(Harness.packageRoot)/README.md")
        let manual = Harness.read("\(Harness.packageRoot)/man/nestbox.conf.5")
        for key in Config.keys {
            let shown = key.defaultValue.isEmpty ? "" : "`\(key.defaultValue)`"
            XCTAssertTrue(readme.contains("| `\(key.name)` | \(shown)"), "README lacks \(key.name) with default \(key.defaultValue)")
            let escaped = key.name.replacingOccurrences(of: "-", with: "\\-")
            XCTAssertTrue(manual.contains("\\fB\(escaped)\\fR"), "nestbox.conf(5) lacks \(key.name)")
        }
        XCTAssertTrue(readme.contains("./scripts/test.sh"), "the README names the test command")
    }
}
