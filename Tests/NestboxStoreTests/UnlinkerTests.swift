#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport

/// The unlinker with several threads: every file asked for goes, every failure comes back once
/// with its tag, and the caller is held to `ahead` waiting unlinks.
final class UnlinkerTests: TempDirTestCase {
    private func make(_ count: Int) -> Int32 {
        for i in 0..<count {
            let fd = open("\(dir)/f\(i)", O_CREAT | O_WRONLY, 0o600)
            XCTAssertGreaterThanOrEqual(fd, 0)
            close(fd)
        }
        return open(dir, O_RDONLY | O_DIRECTORY)
    }

    private func remaining() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    func testEveryFileGoesAndEveryFailureComesBackByTag() {
        for threads in [1, 4] {
            let fd = make(2000)
            defer { close(fd) }
            let unlinker = Unlinker(ahead: 16, threads: threads)
            var missing: [Int] = []
            for i in 0..<2500 {  // 500 names that are not there
                if i % 5 == 4 { missing.append(i) }
                unlinker.unlink(in: fd, i % 5 == 4 ? "gone\(i)" : "f\(i - i / 5)", tag: i)
            }
            let failures = unlinker.finish()
            XCTAssertEqual(failures.map(\.tag), missing, "threads \(threads)")
            XCTAssertTrue(failures.allSatisfy { $0.code == ENOENT })
            XCTAssertEqual(remaining(), [], "threads \(threads)")
        }
    }

    func testFinishWithNothingAskedAndAFileThatIsADirectory() {
        let fd = make(1)
        defer { close(fd) }
        XCTAssertEqual(mkdir("\(dir)/sub", 0o700), 0)
        let unlinker = Unlinker(threads: 3)
        XCTAssertEqual(Unlinker(threads: 3).finish(), [])
        unlinker.unlink(in: fd, "sub", tag: 7)
        unlinker.unlink(in: fd, "f0", tag: 8)
        let failures = unlinker.finish()
        XCTAssertEqual(failures.map(\.tag), [7])
        XCTAssertEqual(failures.map(\.code), [EISDIR])
        XCTAssertEqual(remaining(), ["sub"])
    }
}
