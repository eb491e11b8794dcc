// Helpers shared by the unit tests: temporary directories (mkdtemp under /tmp, removed again),
// small file utilities and an assertion for thrown NestboxFailures. No Foundation: NestboxSupport
// has its own `Host`, which Foundation's would shadow.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import XCTest
import NestboxSupport

enum TestFS {
    /// A fresh directory below /tmp; remove it with `removeTree`.
    static func makeTempDir(_ label: String = "nestbox-unit") -> String {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { fatalError("mkdtemp: \(errnoText(errno))") }
        return String(cString: p)
    }

    /// rm -rf, without following symbolic links.
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in (try? Files.list(path)) ?? [] { removeTree("\(path)/\(name)") }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        precondition(fd >= 0, "open \(path): \(errnoText(errno))")
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            precondition(n > 0, "write \(path): \(errnoText(errno))")
            offset += n
        }
        close(fd)
    }

    static func write(_ path: String, _ text: String) { write(path, Array(text.utf8)) }

    static func read(_ path: String) -> [UInt8]? { try? Files.read(path, limit: 1 << 30) }

    static func readText(_ path: String) -> String? { read(path).map { String(decoding: $0, as: UTF8.self) } }

    static func mkdirs(_ path: String) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            mkdir(current, 0o700)
        }
        precondition(Files.isDirectory(path), "mkdir \(path)")
    }

    static func list(_ path: String) -> [String] { ((try? Files.list(path)) ?? []).sorted() }

    static func exists(_ path: String) -> Bool { Files.exists(path) }

    static func inode(_ path: String) -> ino_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_ino : nil
    }

    static func size(_ path: String) -> Int64? {
        var st = stat()
        return lstat(path, &st) == 0 ? Int64(st.st_size) : nil
    }

    /// Sets atime and mtime `seconds` into the past.
    static func age(_ path: String, by seconds: Int) {
        var now = timeval()
        gettimeofday(&now, nil)
        var times = [timeval(tv_sec: now.tv_sec - seconds, tv_usec: 0), timeval(tv_sec: now.tv_sec - seconds, tv_usec: 0)]
        precondition(utimes(path, &times) == 0, "utimes \(path): \(errnoText(errno))")
    }
}

/// A temporary directory for the duration of one test.
class TempDirTestCase: XCTestCase {
    var dir = ""

    override func setUp() {
        super.setUp()
        dir = TestFS.makeTempDir()
    }

    override func tearDown() {
        TestFS.removeTree(dir)
        super.tearDown()
    }
}

/// Runs `body`, which must throw a NestboxFailure; returns it (nil after recording a failure).
@discardableResult
func XCTAssertThrowsFailure<T>(_ body: @autoclosure () throws -> T, _ message: String = "",
                               file: StaticString = #filePath, line: UInt = #line) -> NestboxFailure? {
    do {
        let value = try body()
        XCTFail("expected a NestboxFailure, got \(value) \(message)", file: file, line: line)
        return nil
    } catch let failure as NestboxFailure {
        return failure
    } catch {
        XCTFail("expected a NestboxFailure, got \(type(of: error)): \(error) \(message)", file: file, line: line)
        return nil
    }
}

/// The pid of a process that has exited and been reaped.
func deadPID() -> pid_t {
    var pid: pid_t = 0
    var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
    defer { free(argv[0]) }
    let rc = posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ)
    precondition(rc == 0, "posix_spawn /bin/true: \(errnoText(rc))")
    var status: Int32 = 0
    precondition(waitpid(pid, &status, 0) == pid)
    precondition(kill(pid, 0) != 0 && errno == ESRCH, "pid \(pid) is not dead")
    return pid
}
