import Foundation
import XCTest

/// Runs the real `doveadm` over one user's Maildir with a throwaway configuration: no daemon,
/// no userdb lookup (USER/HOME from the environment), mail_uid = the mail owner. The
/// configuration's directory goes when the last reference does.
final class Dovecot {
    let mailRoot: String
    let configPath: String
    private let directory: String

    init(mailRoot: String, user: String = "alice") throws {
        self.mailRoot = mailRoot
        let dir = Files.temporaryDirectory()
        directory = dir
        configPath = "\(dir)/dovecot.conf"
        let conf = """
        mail_location = maildir:\(mailRoot)
        base_dir = \(dir)/run
        state_dir = \(dir)/state
        log_path = /dev/stderr
        ssl = no
        protocols =
        mail_uid = \(Harness.mailOwner)
        mail_gid = \(Harness.mailOwner)
        first_valid_uid = 1
        mail_plugins = quota acl
        plugin {
          quota = maildir:User quota
          acl = vfile
        }
        namespace inbox {
          inbox = yes
          separator = /
        }
        """
        try conf.write(toFile: configPath, atomically: true, encoding: .utf8)
        self.user = user
    }

    let user: String

    deinit { Harness.removeTree(directory) }

    func doveadm(_ args: [String]) throws -> Harness.Result {
        let r = try Harness.run("/usr/bin/doveadm", ["-c", configPath] + args,
                                environment: ["USER": user, "HOME": mailRoot])
        if r.status != 0 {
            throw NSError(domain: "doveadm", code: Int(r.status),
                          userInfo: [NSLocalizedDescriptionKey: "doveadm \(args) exited \(r.status): \(r.stderr)"])
        }
        return r
    }

    /// `doveadm fetch` of `fields` (space separated) for every message of `mailbox`; one
    /// dictionary per message. Multi-line values (body) are joined with "\n".
    func fetch(_ fields: String, mailbox: String) throws -> [[String: String]] {
        let r = try doveadm(["fetch", fields, "mailbox", mailbox, "all"])
        return Dovecot.parseFetch(r.stdout, fields: fields.split(separator: " ").map(String.init))
    }

    static func parseFetch(_ text: String, fields: [String]) -> [[String: String]] {
        var out: [[String: String]] = []
        var current: [String: String] = [:]
        var key: String? = nil
        var multiline = false
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = String(raw)
            if line == "\u{0C}" || (line.isEmpty && !multiline && !current.isEmpty && key == nil) {
                if !current.isEmpty { out.append(current) }
                current = [:]
                key = nil
                multiline = false
                continue
            }
            if let colon = line.firstIndex(of: ":"), fields.contains(String(line[..<colon])),
               !(multiline && current[String(line[..<colon])] != nil) {
                let k = String(line[..<colon])
                let rest = line[line.index(after: colon)...]
                if rest.isEmpty {
                    key = k
                    multiline = true
                    current[k] = ""
                } else {
                    current[k] = String(rest.dropFirst())
                    key = nil
                    multiline = false
                }
                continue
            }
            if let k = key, multiline {
                current[k] = current[k]!.isEmpty && !(current[k + "#started"] != nil) ? line : current[k]! + "\n" + line
                current[k + "#started"] = "1"
            }
        }
        if !current.isEmpty { out.append(current) }
        return out.map { $0.filter { !$0.key.hasSuffix("#started") } }
    }

    /// Python for test scripts that drive Dovecot's `imap` binary preauthenticated on a pipe:
    /// with `imap`, `conf`, `home` and `imaplog` set, it starts the session as alice (its log
    /// appended to `imaplog`) and defines `cmd(text)`, which sends one tagged command and
    /// returns its untagged lines, raising on EOF or a reply other than OK.
    static let imapPrelude = #"""
    env = {"USER": "alice", "HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    p = subprocess.Popen([imap, "-c", conf], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=open(imaplog, "ab"))
    n = 0
    def cmd(text):
        global n
        n += 1
        tag = b"t%d" % n
        p.stdin.write(tag + b" " + text.encode() + b"\r\n"); p.stdin.flush()
        out = []
        while True:
            line = p.stdout.readline()
            if not line:
                raise EOFError("imap closed during " + text)
            s = line.decode(errors="replace").rstrip("\r\n")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError("%s -> %s" % (text, s))
                return out
            out.append(s)
    """#

    func status(_ field: String, mailbox: String) throws -> String {
        let r = try doveadm(["-f", "flow", "mailbox", "status", field, mailbox])
        let text = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let eq = text.firstIndex(of: "=") else { return text }
        return String(text[text.index(after: eq)...])
    }
}

/// A Python script driving Dovecot's `imap` binary (see `Dovecot.imapPrelude`), run in the
/// background with the binary's path as its first argument: `waitFor` reads its output up to a
/// line, `send` writes a line to its input, `finish` closes the input and returns the JSON
/// object of its last output line starting with "{".
final class IMAPScript {
    static let imapBinary = "/usr/lib/dovecot/imap"
    let process = Process()
    private let toScript = Pipe(), fromScript = Pipe()
    private(set) var output = Data()
    private var finished = false
    var text: String { String(decoding: output, as: UTF8.self) }

    /// Fails the test when Dovecot's imap binary or python3 is missing.
    init(_ source: String, name: String, in dir: String, _ arguments: [String]) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.imapBinary) else {
            XCTFail("Dovecot's imap binary is missing (Debian package dovecot-imapd)")
            throw LMTPTestError("no imap binary")
        }
        let python = try Python.require()
        let path = "\(dir)/\(name)"
        try source.write(toFile: path, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [path, Self.imapBinary] + arguments
        process.standardInput = toScript
        process.standardOutput = fromScript
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
    }

    deinit {
        if !finished {
            process.terminate()
            process.waitUntilExit()
        }
    }

    /// Reads until the script has printed the line `word` (30 s at most); whether it has.
    @discardableResult
    func waitFor(_ word: String) -> Bool {
        let deadline = Date().addingTimeInterval(30)
        while !text.contains(word + "\n") {
            let chunk = fromScript.fileHandleForReading.availableData
            if chunk.isEmpty || Date() > deadline { break }
            output.append(chunk)
        }
        return text.contains(word + "\n")
    }

    func send(_ line: String) {
        toScript.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    func finish() throws -> [String: Any] {
        try toScript.fileHandleForWriting.close()
        output.append(fromScript.fileHandleForReading.readDataToEndOfFile())
        process.waitUntilExit()
        finished = true
        let jsonLine = try XCTUnwrap(text.split(separator: "\n").last { $0.hasPrefix("{") }, text)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(jsonLine.utf8)) as? [String: Any])
    }
}

enum Files {
    static func temporaryDirectory() -> String {
        var template = Array("/tmp/nestbox-dovecot.XXXXXX".utf8CString)
        let p = mkdtemp(&template)!
        return String(cString: p)
    }
}
