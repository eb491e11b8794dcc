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
