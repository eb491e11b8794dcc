// Every path below the mail root is built from names that passed these checks, so that no
// input (a recipient from the Internet, a +detail, a -m argument) can name anything outside the
// mail root or anything that is not a mailbox:
// - user names and domains: not empty, at most 255 bytes, no `/`, NUL, control characters or
//   white space, not `.`/`..`, not starting with `.` (the root keeps `.nestbox` there);
//   `public` (shared folders) and `domain` (the domain areas) are reserved, in any case, so
//   that no user's root can be the shared area or hold other domains' mailboxes (see the
//   layout in MailStore.swift);
// - folder levels: not empty, not `.`/`..`, not starting with `~`, no `/`, control characters,
//   NUL, `*` or `%`, and (Maildir++) no `.` inside a level; the directory name they make
//   (`.` + levels in modified UTF-7 joined by `.`) fits in 255 bytes.

import NestboxSupport

public enum Names {
    public static let maxNameBytes = 255
    /// Directory names at the top of the mail root that belong to the store, not to a user.
    public static let reservedUsers: Set<String> = [MailStore.sharedUser, MailStore.domainAreas]

    static func invalid(_ what: String, _ name: String, _ reason: String) -> NestboxFailure {
        NestboxFailure(.badAddress, "invalid \(what) \"\(printable(name))\": \(reason)")
    }

    /// A safe rendering for logs: control characters and non-ASCII as \xNN, cut at 100 bytes.
    public static func printable(_ s: String) -> String { NestboxSupport.printable(s) }

    private static func checkCommon(_ what: String, _ name: String) throws {
        if name.isEmpty { throw invalid(what, name, "empty") }
        if name.utf8.count > maxNameBytes { throw invalid(what, name, "longer than \(maxNameBytes) bytes") }
        if name == "." || name == ".." { throw invalid(what, name, "not a name") }
        for scalar in name.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7f || (scalar.value >= 0x80 && scalar.value < 0xa0) {
                throw invalid(what, name, "control character")
            }
            if scalar == "/" { throw invalid(what, name, "contains /") }
            if scalar == "\u{FFFD}" { throw invalid(what, name, "not valid UTF-8") }
        }
    }

    public static func validateUser(_ name: String) throws {
        try checkCommon("user name", name)
        if name.hasPrefix(".") { throw invalid("user name", name, "starts with .") }
        if name.hasPrefix("~") { throw invalid("user name", name, "starts with ~") }
        if name.unicodeScalars.contains(where: { $0 == " " || $0 == "\t" || $0 == "@" }) {
            throw invalid("user name", name, "contains white space or @")
        }
        if reservedUsers.contains(name.lowercased()) { throw invalid("user name", name, "reserved") }
    }

    public static func validateDomain(_ name: String) throws {
        try checkCommon("domain", name)
        for scalar in name.unicodeScalars {
            let ok = (scalar >= "a" && scalar <= "z") || (scalar >= "A" && scalar <= "Z") || (scalar >= "0" && scalar <= "9")
                || scalar == "-" || scalar == "." || scalar == "_"
            if !ok { throw invalid("domain", name, "only letters, digits, - _ and . are allowed") }
        }
        if name.hasPrefix(".") || name.hasPrefix("-") || name.contains("..") {
            throw invalid("domain", name, "bad label")
        }
    }

    /// Splits a folder name into validated levels. "INBOX" (any case) is the empty list; a
    /// leading "INBOX" level followed by more levels is dropped, as Cyrus's `-m INBOX/Work`.
    public static func folderLevels(_ name: String, separator: Character) throws -> [String] {
        if name.isEmpty { throw invalid("folder", name, "empty") }
        if name.utf8.count > 1024 { throw invalid("folder", name, "longer than 1024 bytes") }
        var levels = name.split(separator: separator, omittingEmptySubsequences: false).map(String.init)
        if levels.first?.uppercased() == "INBOX" {
            levels.removeFirst()
            if levels.isEmpty { return [] }
        }
        for level in levels {
            try checkCommon("folder", level)
            if level.hasPrefix("~") { throw invalid("folder", name, "a level starts with ~") }
            if level.contains(".") {
                throw invalid("folder", name, "a level contains . (Maildir++ cannot store it)")
            }
            if level.contains("*") || level.contains("%") { throw invalid("folder", name, "contains * or %") }
        }
        let dir = directoryName(levels)
        if dir.utf8.count > maxNameBytes { throw invalid("folder", name, "too long for a directory name") }
        return levels
    }

    /// The Maildir++ directory of a folder below its root: `.Work.Sub`; "" for INBOX.
    public static func directoryName(_ levels: [String]) -> String {
        if levels.isEmpty { return "" }
        return "." + levels.map(ModifiedUTF7.encode).joined(separator: ".")
    }

    /// The display name of a Maildir++ directory (`.Work.Sub` -> "Work/Sub"); nil if it is not one.
    public static func folderName(directory: String, separator: Character) -> String? {
        guard directory.hasPrefix("."), directory.count > 1 else { return nil }
        var levels: [String] = []
        for part in directory.dropFirst().split(separator: ".", omittingEmptySubsequences: false) {
            guard let decoded = ModifiedUTF7.decode(String(part)), !decoded.isEmpty else { return nil }
            levels.append(decoded)
        }
        return levels.joined(separator: String(separator))
    }
}
