// Why an account cannot use a directory, in one short line an administrator can act on
// ("mail root /var/spool/nestbox not writable by uid 1000 (owner root, mode 0755)"), instead of
// the errno of whichever system call met it first ("mkdir .../.nestbox: Permission denied"
// when the directory exists but cannot be entered).
//
// The answer is worked out from the mode bits, the owner and the account's groups, so that it
// holds for another account than the caller's (the configuration check, run as root, asks for
// `mail_owner`) and says which permission is missing. Only the path asked about is named: a
// directory above it that cannot be searched is described, not named, so that a reason put on a
// DSN line never shows a path outside the mail root.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum Access {
    /// An identity as the kernel checks it: uid and every group.
    public struct Who: Sendable {
        public let uid: uid_t
        public let groups: [gid_t]

        /// The running process (effective uid, effective and supplementary groups).
        public static var current: Who {
            let count = getgroups(0, nil)
            var list = [gid_t](repeating: 0, count: Int(max(count, 0)))
            let n = getgroups(count, &list)
            return Who(uid: geteuid(), groups: [getegid()] + list.prefix(Int(max(n, 0))))
        }

        /// An account as it will be once a program has become it.
        public static func account(_ account: Privileges.Account) -> Who {
            var count: Int32 = 64
            var list = [gid_t](repeating: 0, count: Int(count))
            while getgrouplist(account.name, account.gid, &list, &count) < 0 {
                list = [gid_t](repeating: 0, count: Int(count))
            }
            return Who(uid: account.uid, groups: Array(list.prefix(Int(count))))
        }

        /// "uid 65534" (and its name when it has one).
        public var label: String {
            guard let pw = getpwuid(uid) else { return "uid \(uid)" }
            return "uid \(uid) (\(String(cString: pw.pointee.pw_name)))"
        }
    }

    public static let read: mode_t = 4
    public static let write: mode_t = 2
    public static let search: mode_t = 1

    /// Whether `who` has every bit of `want` (read 4, write 2, search 1) on a file of `st`.
    public static func permits(_ st: stat, _ who: Who, _ want: mode_t) -> Bool {
        if who.uid == 0 { return true }
        let bits: mode_t
        if st.st_uid == who.uid { bits = (st.st_mode >> 6) & 7 }
        else if who.groups.contains(st.st_gid) { bits = (st.st_mode >> 3) & 7 }
        else { bits = st.st_mode & 7 }
        return bits & want == want
    }

    /// "owner root, mode 0755".
    public static func ownerAndMode(_ st: stat) -> String {
        let owner = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(st.st_uid)"
        return "owner \(owner), mode 0\(String(st.st_mode & 0o7777, radix: 8))"
    }

    /// Why `who` cannot use the directory `path` (named `label` in the answer, e.g. "mail
    /// root"): reach it, enter it and, with `writable`, create in it. Nil when it can, and when
    /// it does not exist but `who` can reach where it would be (`missingIsProblem` false).
    public static func directoryProblem(_ path: String, label: String, for who: Who, writable: Bool,
                                        missingIsProblem: Bool = false) -> String? {
        // Every directory above must be searchable.
        let parts = path.split(separator: "/")
        var ancestors: [String] = path.hasPrefix("/") ? ["/"] : []
        for i in parts.indices.dropLast() {
            ancestors.append((path.hasPrefix("/") ? "/" : "") + parts[...i].joined(separator: "/"))
        }
        for dir in ancestors {
            var st = stat()
            if stat(dir, &st) == 0 ? !permits(st, who, search) : errno == EACCES {
                return "\(label) \(path) cannot be reached by \(who.label) (a directory above it is not searchable)"
            }
        }
        var st = stat()
        if stat(path, &st) != 0 {
            let code = errno
            if code == ENOENT { return missingIsProblem ? "\(label) \(path) does not exist" : nil }
            if code == EACCES { return "\(label) \(path) cannot be reached by \(who.label) (a directory above it is not searchable)" }
            return "\(label) \(path): \(errnoText(code))"
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return "\(label) \(path) is not a directory" }
        if !permits(st, who, search) {
            return "\(label) \(path) cannot be entered by \(who.label): \(ownerAndMode(st))"
        }
        if writable && !permits(st, who, write) {
            return "\(label) \(path) not writable by \(who.label): \(ownerAndMode(st))"
        }
        return nil
    }
}
