import Foundation
import XCTest

/// Runs the real `doveadm` over one user's Maildir with a throwaway configuration: no daemon,
/// no userdb lookup (USER/HOME from the environment), mail_uid = the mail owner.
struct Dovecot {
    let mailRoot: String
    let configPath: String

    init(mailRoot: String, user: String = "alice") throws {
        self.mailRoot = mailRoot
        let dir = Files.temporaryDirectory()
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

    func status(_ field: String, mailbox: String) throws -> String {
        let r = try doveadm(["-f", "flow", "mailbox", "status", field, mailbox])
        let text = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let eq = text.firstIndex(of: "=") else { return text }
        return String(text[text.index(after: eq)...])
    }
}

enum Files {
    static func temporaryDirectory() -> String {
        var template = Array("/tmp/nestbox-dovecot.XXXXXX".utf8CString)
        let p = mkdtemp(&template)!
        return String(cString: p)
    }
}
