import Foundation
import XCTest

/// Shared helpers of the end-to-end tests: the built binaries, temporary mail roots owned by the
/// mail owner, running programs with input and capturing their output and exit status.
enum Harness {
    /// The directory holding the built programs: $NESTBOX_BIN_DIR, else the directory of the
    /// test bundle (SwiftPM puts the .xctest next to the executables).
    static let binDir: String = {
        if let dir = ProcessInfo.processInfo.environment["NESTBOX_BIN_DIR"], !dir.isEmpty { return dir }
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            return (bundle.bundlePath as NSString).deletingLastPathComponent
        }
        let arg0 = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = arg0.deletingLastPathComponent()
        if dir.path.hasSuffix(".xctest") || arg0.path.contains(".xctest") {
            while dir.path.contains(".xctest") { dir.deleteLastPathComponent() }
        }
        return dir.path
    }()

    static func binary(_ name: String) -> String { "\(binDir)/\(name)" }

    /// The package's top directory (for the samples in postfix/, cron/, man/).
    static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    /// A child that stops reading its input early (as it should on a refused message) must
    /// not kill the test process.
    static let ignoreSigpipe: Void = { signal(SIGPIPE, SIG_IGN) }()

    static var isRoot: Bool { getuid() == 0 }

    /// The account that owns test mail roots when the tests run as root (as in CI).
    static let mailOwner = "vmail"

    /// Makes sure the mail owner account exists (CI runs as root on a fresh machine).
    static func ensureMailOwner() throws {
        guard isRoot, getpwnam(mailOwner) == nil else { return }
        let r = try run("/usr/sbin/useradd", ["-r", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", mailOwner])
        guard r.status == 0 || getpwnam(mailOwner) != nil else {
            throw NSError(domain: "harness", code: 1, userInfo: [NSLocalizedDescriptionKey: "useradd vmail: \(r.stderr)"])
        }
    }

    /// A fresh temporary directory, owned by the mail owner when running as root.
    static func makeTempDir(_ label: String = "nestbox") throws -> String {
        try ensureMailOwner()
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        let dir = String(cString: p)
        chmod(dir, 0o755)
        if isRoot { try chownToMailOwner(dir) }
        return dir
    }

    static func chownToMailOwner(_ path: String) throws {
        guard isRoot, let pw = getpwnam(mailOwner) else { return }
        chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    static func chownTreeToMailOwner(_ path: String) throws {
        guard isRoot else { return }
        _ = try run("/bin/chown", ["-R", "\(mailOwner):\(mailOwner)", path])
    }

    static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var stdoutBytes: Data
    }

    /// Runs a program to completion. `input` goes to its stdin (closed afterwards).
    @discardableResult
    static func run(_ path: String, _ arguments: [String], input: Data? = nil, environment: [String: String]? = nil,
                    inputFile: String? = nil, timeout: TimeInterval = 120) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if let environment {
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment { env[k] = v }
            process.environment = env
        }
        let outPipe = Pipe(), errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        var inPipe: Pipe? = nil
        if let inputFile {
            process.standardInput = FileHandle(forReadingAtPath: inputFile)
        } else if input != nil {
            inPipe = Pipe()
            process.standardInput = inPipe
        } else {
            process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        }
        _ = ignoreSigpipe
        try process.run()
        let group = DispatchGroup()
        var outData = Data(), errData = Data()
        group.enter()
        DispatchQueue.global().async { outData = outPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter()
        DispatchQueue.global().async { errData = errPipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        if let inPipe, let input {
            DispatchQueue.global().async {
                try? inPipe.fileHandleForWriting.write(contentsOf: input)
                try? inPipe.fileHandleForWriting.close()
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(2000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            throw NSError(domain: "harness", code: 2, userInfo: [NSLocalizedDescriptionKey: "\(path) \(arguments) timed out"])
        }
        process.waitUntilExit()
        group.wait()
        return Result(status: process.terminationStatus,
                      stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self),
                      stdoutBytes: outData)
    }

    /// Runs a shell command line (for setting up peers: postfix, doveadm...).
    @discardableResult
    static func sh(_ command: String, timeout: TimeInterval = 120) throws -> Result {
        try run("/bin/sh", ["-c", command], timeout: timeout)
    }

    /// Writes a nestbox.conf into `dir` and returns its path.
    static func writeConfig(in dir: String, _ lines: [String: String]) throws -> String {
        let path = "\(dir)/nestbox.conf"
        var text = "# written by the test\n"
        for (k, v) in lines.sorted(by: { $0.key < $1.key }) { text += "\(k): \(v)\n" }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// All regular files below `dir`, relative paths, sorted.
    static func files(under dir: String) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
        var out: [String] = []
        while let name = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: "\(dir)/\(name)", isDirectory: &isDir), !isDir.boolValue {
                out.append(name)
            }
        }
        return out.sorted()
    }

    static func read(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }
}

