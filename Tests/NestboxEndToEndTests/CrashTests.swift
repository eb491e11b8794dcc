#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NestboxStore
import NestboxSupport
import XCTest

/// A delivery killed at every instant: `strace -e inject=<syscall>:signal=KILL:when=<n>` kills
/// nestbox-deliver at the entry of its n-th call of each file system syscall it makes once it
/// touches the mail root (spooling, the duplicate record, the uidlist lock, the rename, the
/// append, the syncs, maildirsize). After each kill Postfix would retry: the retry must leave
/// exactly one copy of the message, whole, numbered once and counted in maildirsize, whatever
/// instant the kill hit.
final class CrashTests: XCTestCase {
    static let strace = "/usr/bin/strace"
    static let syscalls = ["openat", "read", "write", "pread64", "pwrite64", "lseek", "ftruncate", "fstat", "newfstatat",
                           "mkdir", "link", "rename", "unlink", "fsync", "fdatasync", "close", "getdents64", "utimensat"]

    static let message = """
        Message-ID: <crash-every-instant@example.org>
        Date: Mon, 30 Nov 2026 12:00:00 +0000
        From: sender@example.org
        Subject: killed at every syscall

        The same message, delivered again after each kill.

        """

    func testKillAtEverySyscallThenRetryStoresExactlyOneCopy() throws {
        guard Harness.isRoot else {
            XCTFail("runs nestbox-deliver as root, as Postfix's pipe does before it switches users: run the suite as root (as CI does)")
            return
        }
        guard FileManager.default.isExecutableFile(atPath: Self.strace) else {
            XCTFail("strace is needed (Debian package strace)")
            return
        }
        let fixture = try DeliverFixture("crash", settings: ["duplicatesuppression": "yes"])
        let input = Data(Self.message.utf8)

        // The probe: which calls a delivery makes, in order, and which of them touch mail.
        try fixture.makeUser("probe")
        let tracePath = "\(fixture.dir)/probe.trace"
        let probe = try Harness.run(Self.strace, ["-qq", "-o", tracePath, "-e", "trace=" + Self.syscalls.joined(separator: ","),
                                                  Harness.binary("nestbox-deliver"), "-C", fixture.configPath, "-L", "probe"], input: input)
        XCTAssertEqual(probe.status, 0, probe.stderr)
        let calls = Harness.read(tracePath).split(separator: "\n").compactMap { line -> (String, Bool)? in
            guard let paren = line.firstIndex(of: "("), !line.hasPrefix("+++"), !line.hasPrefix("---") else { return nil }
            return (String(line[..<paren]), line.contains(fixture.root))
        }
        guard let first = calls.firstIndex(where: { $0.1 }) else {
            XCTFail("the probe never touched the mail root:\n\(Harness.read(tracePath))")
            return
        }
        // (syscall, n): the n-th call of that syscall, for every call from the first mail access on.
        var seen: [String: Int] = [:]
        var points: [(String, Int)] = []
        for (i, call) in calls.enumerated() {
            seen[call.0, default: 0] += 1
            if i >= first { points.append((call.0, seen[call.0]!)) }
        }
        XCTAssertGreaterThan(points.count, 30, "too few instants to be a delivery")

        var killed = 0
        for (i, point) in points.enumerated() {
            let user = "k\(i)"
            let userRoot = try fixture.makeUser(user, limits: QuotaLimits(bytes: 10_000_000))
            let crash = try Harness.run(Self.strace, ["-qq", "-o", "/dev/null", "-e", "trace=\(point.0)",
                                                      "-e", "inject=\(point.0):signal=KILL:when=\(point.1)",
                                                      Harness.binary("nestbox-deliver"), "-C", fixture.configPath, "-L", user], input: input)
            if crash.status != 0 { killed += 1 }
            let place = "killed at \(point.0) #\(point.1) (exit \(crash.status))"
            // Nothing half-written is ever visible in new/ or cur/.
            for file in MaildirCheck.messageFiles(userRoot).map({ "\(userRoot)/\($0)" }) {
                let name = MaildirName((file as NSString).lastPathComponent)
                let size = try XCTUnwrap(NestboxSupport.Files.status(file)).st_size
                XCTAssertEqual(name.size, Int64(size), "\(place): \(file) is not whole")
            }
            // Postfix retries (twice: a retry may itself be retried).
            for attempt in 1...2 {
                let retry = try fixture.deliver([user], data: input)
                XCTAssertEqual(retry.status, 0, "\(place), retry \(attempt): \(retry.stdout) \(retry.stderr)")
            }
            let copies = MaildirCheck.messageFiles(userRoot).filter { Harness.read("\(userRoot)/\($0)").contains("crash-every-instant@example.org") }
            XCTAssertEqual(copies.count, 1, "\(place): \(copies.count) copies after the retries")
            // maildirsize may over-count a killed delivery (the recalculation rules repair that
            // when it matters), never under-count a stored message (nothing would repair that).
            let quota = try XCTUnwrap(MaildirSize.parse(Array(Harness.read("\(userRoot)/maildirsize").utf8)))
            XCTAssertGreaterThanOrEqual(quota.usage.messages, Int64(copies.count), "\(place): maildirsize under-counts")
            if let list = try UIDListFile(folder: userRoot, mailRoot: userRoot).read() {
                let stems = list.records.map(\.stem)
                XCTAssertEqual(Set(stems).count, stems.count, "\(place): a file numbered twice")
            }
        }
        // The kills happened: most injections stop the process before it could finish.
        XCTAssertGreaterThan(killed, points.count / 2, "only \(killed) of \(points.count) runs were killed")
    }
}
