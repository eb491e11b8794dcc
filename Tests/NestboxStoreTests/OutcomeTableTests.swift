import XCTest
import NestboxSupport

/// The one table of outcomes (SysExits.swift): exit codes, RFC 3463 statuses, reply codes.
final class OutcomeTableTests: XCTestCase {
    static let sysexits: [String: Int32] = [
        "EX_OK": 0, "EX_USAGE": 64, "EX_DATAERR": 65, "EX_NOINPUT": 66, "EX_NOUSER": 67, "EX_NOHOST": 68,
        "EX_UNAVAILABLE": 69, "EX_SOFTWARE": 70, "EX_OSERR": 71, "EX_OSFILE": 72, "EX_CANTCREAT": 73, "EX_IOERR": 74,
        "EX_TEMPFAIL": 75, "EX_PROTOCOL": 76, "EX_NOPERM": 77, "EX_CONFIG": 78,
    ]

    func testEveryRowIsConsistent() {
        XCTAssertFalse(Outcome.table.isEmpty)
        for row in Outcome.table {
            // The name is the sysexits(3) name of the code.
            XCTAssertEqual(Self.sysexits[row.name], row.exitCode, "\(row)")
            // Status: class.subject.detail, class 2, 4 or 5.
            let parts = row.status.split(separator: ".", omittingEmptySubsequences: false)
            XCTAssertEqual(parts.count, 3, "\(row)")
            XCTAssertTrue(parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }, "\(row)")
            XCTAssertTrue(["2", "4", "5"].contains(parts.first.map(String.init) ?? ""), "\(row)")
            // The reply code has the status's class.
            XCTAssertEqual(String(row.replyCode).first, row.status.first, "\(row)")
            XCTAssertTrue((200..<600).contains(row.replyCode), "\(row)")
            XCTAssertFalse(row.text.isEmpty, "\(row)")
            XCTAssertEqual(row.dsnLine, "\(row.status) \(row.text)")
            XCTAssertEqual(row.description, "\(row.exitCode) \(row.name) \(row.status) \(row.text)")
            // Success and only success is exit 0 / 2.x.x.
            XCTAssertEqual(row.isSuccess, row.exitCode == 0, "\(row)")
            XCTAssertEqual(row.isSuccess, row.status.hasPrefix("2"), "\(row)")
        }
    }

    func testExitCodeAndStatusAgreeOnTemporary() {
        for row in Outcome.table {
            if row.exitCode == 75 {
                XCTAssertEqual(row.name, "EX_TEMPFAIL", "\(row)")
                XCTAssertTrue(row.isTemporary, "EX_TEMPFAIL must carry a 4.x.x status: \(row)")
            }
            if row.isTemporary {
                XCTAssertTrue([75, 64, 78].contains(row.exitCode), "a 4.x.x status only with 75, or 64/78 (4.3.5): \(row)")
            }
            if row.status.hasPrefix("5") {
                XCTAssertFalse([0, 75, 64, 78].contains(row.exitCode), "a permanent status never with \(row.exitCode): \(row)")
            }
        }
        XCTAssertTrue(Outcome.table.contains { $0.exitCode == 75 })
    }

    func testNoRowExits74() {
        XCTAssertFalse(Outcome.table.contains { $0.exitCode == 74 }, "EX_IOERR is never used: I/O errors are 75")
    }

    func testConfigAndUsageRowsAre435() {
        let rows = Outcome.table.filter { $0.name == "EX_CONFIG" || $0.name == "EX_USAGE" }
        XCTAssertEqual(Set(rows.map(\.exitCode)), [64, 78])
        for row in rows {
            XCTAssertEqual(row.status, "4.3.5", "\(row)")
            XCTAssertTrue(row.isTemporary, "\(row)")
        }
        XCTAssertEqual(Outcome.config.exitCode, 78)
        XCTAssertEqual(Outcome.usage.exitCode, 64)
    }

    func testTableMatchesTheInterface() {
        // exit, status, for each row the interface document lists.
        let expected: [(Outcome, Int32, String)] = [
            (.delivered, 0, "2.0.0"),
            (.usage, 64, "4.3.5"),
            (.dataError, 65, "5.6.0"),
            (.badAddress, 67, "5.1.3"),
            (.userUnknown, 67, "5.1.1"),
            (.tooBig, 73, "5.3.4"),
            (.overQuotaPermanent, 73, "5.2.2"),
            (.overQuota, 75, "4.2.2"),
            (.diskFull, 75, "4.3.1"),
            (.temporary, 75, "4.3.0"),
            (.noPermission, 77, "5.7.1"),
            (.config, 78, "4.3.5"),
        ]
        XCTAssertEqual(Outcome.table.count, expected.count)
        for (row, code, status) in expected {
            XCTAssertTrue(Outcome.table.contains(row), "\(row) in the table")
            XCTAssertEqual(row.exitCode, code, "\(row)")
            XCTAssertEqual(row.status, status, "\(row)")
        }
        XCTAssertEqual(Outcome.overQuota.text, "Mailbox full")
        XCTAssertEqual(Outcome.userUnknown.dsnLine, "5.1.1 User unknown")
    }

    func testTableIsInExitCodeOrder() {
        let codes = Outcome.table.map(\.exitCode)
        XCTAssertEqual(codes, codes.sorted())
    }

    func testSeverityOrdering() {
        for row in Outcome.table {
            let expected = row.isSuccess ? 0 : (row.isTemporary ? 2 : 1)
            XCTAssertEqual(row.severity, expected, "\(row)")
        }
        XCTAssertLessThan(Outcome.delivered.severity, Outcome.userUnknown.severity)
        XCTAssertLessThan(Outcome.userUnknown.severity, Outcome.overQuota.severity)
        XCTAssertLessThan(Outcome.overQuotaPermanent.severity, Outcome.config.severity)
        // The worst of several recipients: temporary beats permanent beats success.
        let worst = [Outcome.delivered, .userUnknown, .overQuota, .tooBig].max { $0.severity < $1.severity }
        XCTAssertEqual(worst, .overQuota)
        let worst2 = [Outcome.delivered, .noPermission, .delivered].max { $0.severity < $1.severity }
        XCTAssertEqual(worst2, .noPermission)
    }

    func testWithTextKeepsTheCodes() {
        let row = Outcome.overQuota.with(text: "Quota exceeded (mailbox for user is full)")
        XCTAssertEqual(row.exitCode, 75)
        XCTAssertEqual(row.status, "4.2.2")
        XCTAssertEqual(row.replyCode, 452)
        XCTAssertEqual(row.name, "EX_TEMPFAIL")
        XCTAssertEqual(row.dsnLine, "4.2.2 Quota exceeded (mailbox for user is full)")
    }

    func testSystemFailureMapping() {
        XCTAssertEqual(NestboxFailure.system("write", "/x", errno: ENOSPC).outcome, .diskFull)
        XCTAssertEqual(NestboxFailure.system("write", "/x", errno: EDQUOT).outcome, .diskFull)
        let io = NestboxFailure.system("fsync", "/x/new", errno: EIO)
        XCTAssertEqual(io.outcome, .temporary)
        XCTAssertEqual(io.detail, "fsync /x/new: \(errnoText(EIO))")
        XCTAssertEqual(io.description, io.detail)
    }
}
