// One Maildir folder: its directories, its messages with their UIDs, flags and keywords.
//
// A folder exists when its `cur/` directory does. Creating one makes tmp/, new/ and cur/ (0700)
// and, below a user's root, the empty `maildirfolder` file (never in the root itself: it breaks
// quota lookups). Listing joins the files of new/ and cur/ with dovecot-uidlist by stem; files
// the list does not know yet get their UIDs from `assignUIDs()`, under the lock, in Dovecot's
// order (seconds, then microseconds, then the name).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

public struct StoredMessage: Equatable, Sendable {
    public var uid: UInt32?
    /// "new" or "cur".
    public var subdirectory: String
    public var name: MaildirName
    /// Flags by IMAP name (\Seen, \Deleted...), keywords by their names.
    public var flags: [String]
    public var keywords: [String]
    public var size: Int64
    public var virtualSize: Int64?
    public var path: String
}

public struct Folder: Sendable {
    /// The folder's directory.
    public let path: String
    /// The user's (or the shared area's) root, where dovecot-uidvalidity and maildirsize live.
    public let mailRoot: String
    /// Display name ("INBOX", "Work/Sub").
    public let name: String

    /// The mail root (`partition-default`) the folder lies below, when known: no level between
    /// it and the folder may be a symbolic link (`checkLinks`, and the moves into new/).
    public let partition: String?

    public init(path: String, mailRoot: String, name: String, partition: String? = nil) {
        self.path = path
        self.mailRoot = mailRoot
        self.name = name
        self.partition = partition
    }

    public var isRoot: Bool { path == mailRoot }
    public var exists: Bool { Files.isDirectory("\(path)/cur") }
    public var uidList: UIDListFile { UIDListFile(folder: path, mailRoot: mailRoot) }

    /// Creates the folder (and its root's directories when needed). Idempotent.
    public func create() throws {
        if !isRoot {
            try Folder(path: mailRoot, mailRoot: mailRoot, name: "INBOX", partition: partition).create()
        }
        try Files.makeDirectory(path)
        for sub in ["tmp", "new", "cur"] { try Files.makeDirectory("\(path)/\(sub)") }
        if !isRoot {
            let marker = "\(path)/maildirfolder"
            if !Files.exists(marker) {
                let fd = open(marker, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, Files.fileMode)
                if fd < 0 { throw NestboxFailure.system("create", marker) }
                close(fd)
            }
        }
        try Files.fsyncDirectory(path)
        try Files.fsyncDirectory(Files.directoryName(path))
    }

    // MARK: Symbolic links

    /// Throws a temporary failure naming the first symbolic link (or non-directory) met on the
    /// way from the partition to the folder and its tmp/, new/ and cur/; returns whether they
    /// all exist. Nothing below the mail root is ever written through a link.
    @discardableResult
    public func checkLinks() throws -> Bool {
        guard let (folderFD, fds) = try openDirectories(["tmp", "new", "cur"]) else { return false }
        close(folderFD)
        for fd in fds { close(fd) }
        return true
    }

    /// The folder and its `subs`, opened level by level from the partition without following a
    /// link (only from the folder on when the partition is not known); nil when one does not
    /// exist. The caller closes every descriptor.
    func openDirectories(_ subs: [String]) throws -> (folder: Int32, subs: [Int32])? {
        let folderFD: Int32?
        if let partition {
            folderFD = try Files.openDirectoryBeneath(partition, try Files.relativePath(path, below: partition))
        } else {
            folderFD = try Files.openDirectoryBeneath(path, "")
        }
        guard let folderFD else { return nil }
        var fds: [Int32] = []
        for sub in subs {
            let fd = openat(folderFD, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 {
                let code = errno
                defer { close(folderFD) }
                for f in fds { close(f) }
                if code == ENOENT { return nil }
                var st = stat()
                if fstatat(folderFD, sub, &st, AT_SYMLINK_NOFOLLOW) == 0 && (st.st_mode & S_IFMT) == S_IFLNK {
                    throw NestboxFailure(.temporary, "\(path)/\(sub) is a symbolic link: refused below the mail root")
                }
                throw NestboxFailure.system("open directory", "\(path)/\(sub)", errno: code)
            }
            fds.append(fd)
        }
        return (folderFD, fds)
    }

    /// Whether `path` still names the directory open as `fd` (it was not renamed or replaced).
    static func sameDirectory(_ fd: Int32, _ path: String) -> Bool {
        var a = stat(), b = stat()
        return fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }

    // MARK: Listing

    /// Every message file in new/ and cur/ (no UIDs yet).
    func files() throws -> [(sub: String, name: MaildirName)] {
        var out: [(String, MaildirName)] = []
        for sub in ["new", "cur"] {
            for n in try Files.list("\(path)/\(sub)") ?? [] where MaildirName.isMessageName(n) {
                out.append((sub, MaildirName(n)))
            }
        }
        return out
    }

    /// The messages, in UID order; those without a UID yet come last.
    public func messages() throws -> [StoredMessage] {
        let uids = try uidList.read()?.uidsByStem() ?? [:]
        let keywords = try Keywords.read(folder: path)
        var result: [StoredMessage] = []
        for (sub, name) in try files() {
            let filePath = "\(path)/\(sub)/\(name.fileName)"
            var size = name.size ?? -1
            if size < 0 { size = Int64((try Files.status(filePath))?.st_size ?? 0) }
            var flags: [String] = []
            var kws: [String] = []
            for letter in name.flagLetters {
                if let f = MaildirFlag(rawValue: letter) { flags.append(f.imapName) }
                else if let k = keywords.name(of: letter) { kws.append(k) }
            }
            result.append(StoredMessage(uid: uids[name.stem], subdirectory: sub, name: name, flags: flags, keywords: kws,
                                        size: size, virtualSize: name.virtualSize, path: filePath))
        }
        result.sort { ($0.uid ?? UInt32.max, $0.name.stem) < ($1.uid ?? UInt32.max, $1.name.stem) }
        return result
    }

    /// Gives UIDs to files that the list does not know, in Dovecot's order, in a uidlist
    /// session waiting as `options` say. Returns how many.
    @discardableResult
    public func assignUIDs(options: DotLock.Options = DotLock.Options()) throws -> Int {
        let session = try beginUIDListSession(options: options)
        defer { session.finish() }
        let known = try session.read()?.uidsByStem() ?? [:]
        let fresh = try files().map { $0.name.stem }.filter { known[$0] == nil }
        let ordered = Set(fresh).sorted(by: Folder.dovecotOrder)
        _ = try session.append(ordered)
        return ordered.count
    }

    /// Dovecot's order for new files: leading seconds, then the M<usec> value, then the name.
    /// To sort many names, use `sortedInDovecotOrder`, which reads each name's key once.
    public static func dovecotOrder(_ a: String, _ b: String) -> Bool {
        let ka = dovecotOrderKey(a), kb = dovecotOrderKey(b)
        if ka != kb { return ka < kb }
        return a < b
    }

    /// `names` in `dovecotOrder`, each name's (seconds, microseconds) key read once.
    public static func sortedInDovecotOrder<S: Sequence>(_ names: S) -> [String] where S.Element == String {
        names.map { (key: dovecotOrderKey($0), name: $0) }
            .sorted { $0.key != $1.key ? $0.key < $1.key : $0.name < $1.name }
            .map(\.name)
    }

    /// The leading seconds and the M<usec> value after the first dot (0 when absent or too
    /// large), read from the bytes of an ASCII name.
    static func dovecotOrderKey(_ s: String) -> (Int64, Int64) {
        var bytes = s.utf8.makeIterator()
        // Non-ASCII: a digit may take a combining mark into its Character; read by Characters.
        guard !s.utf8.contains(where: { $0 >= 0x80 }) else { return dovecotOrderKeyOfCharacters(s) }
        func number(_ first: UInt8?) -> (Int64, UInt8?) {
            var value: Int64 = 0, digits = 0, overflow = false, c = first
            while let d = c, d >= 0x30 && d <= 0x39 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (v, o2) = m.addingReportingOverflow(Int64(d - 0x30))
                overflow = overflow || o1 || o2
                value = v; digits += 1
                c = bytes.next()
            }
            return (digits == 0 || overflow ? 0 : value, c)
        }
        let (secs, first) = number(bytes.next())
        var c = first
        while let d = c, d != 0x2E { c = bytes.next() }   // to the first "."
        var usec: Int64 = 0
        if c != nil, bytes.next() == 0x4D { usec = number(bytes.next()).0 }  // ".M"
        return (secs, usec)
    }

    /// `dovecotOrderKey` of the name in `s` of `bytes`.
    static func dovecotOrderKey(_ bytes: [UInt8], _ s: Span) -> (Int64, Int64) {
        var i = Int(s.start)
        let end = Int(s.end)
        for j in i..<end where bytes[j] >= 0x80 { return dovecotOrderKey(bytes.string(s)) }
        func number() -> Int64 {
            var value: Int64 = 0, digits = 0, overflow = false
            while i < end, bytes[i] >= 0x30 && bytes[i] <= 0x39 {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (v, o2) = m.addingReportingOverflow(Int64(bytes[i] - 0x30))
                overflow = overflow || o1 || o2
                value = v; digits += 1
                i += 1
            }
            return digits == 0 || overflow ? 0 : value
        }
        let secs = number()
        while i < end, bytes[i] != 0x2E { i += 1 }  // to the first "."
        var usec: Int64 = 0
        if i + 1 < end, bytes[i + 1] == 0x4D {      // ".M"
            i += 2
            usec = number()
        }
        return (secs, usec)
    }

    private static func dovecotOrderKeyOfCharacters(_ s: String) -> (Int64, Int64) {
        let secs = Int64(s.prefix { $0.isASCII && $0.isNumber }) ?? 0
        var usec: Int64 = 0
        if let dot = s.firstIndex(of: "."), s[s.index(after: dot)...].first == "M" {
            usec = Int64(s[s.index(dot, offsetBy: 2)...].prefix { $0.isASCII && $0.isNumber }) ?? 0
        }
        return (secs, usec)
    }

    // MARK: Flags

    /// Sets the flags (IMAP names) and keywords of the message with `uid`, moving it to cur/.
    /// Keywords new to the folder are added to dovecot-keywords (at most 26). Done in a uidlist
    /// session waiting as `options` say.
    public func setFlags(uid: UInt32, flags: [String], keywords: [String],
                         options: DotLock.Options = DotLock.Options()) throws {
        let session = try beginUIDListSession(options: options)
        defer { session.finish() }
        guard let list = try session.read(), let record = list.records.first(where: { $0.uid == uid }) else {
            throw NestboxFailure(.temporary, "\(path): no message with uid \(uid)")
        }
        guard let (sub, name) = try files().first(where: { $0.name.stem == record.stem }) else {
            throw NestboxFailure(.temporary, "\(path): uid \(uid) has no file")
        }
        var letters = ""
        for f in flags {
            guard let flag = MaildirFlag(imapName: f) else { throw NestboxFailure(.dataError, "unknown flag \(f)") }
            letters.append(flag.rawValue)
        }
        // Keep letters we do not manage (P, unknown ones).
        for c in name.flagLetters where c == "P" || (MaildirFlag(rawValue: c) == nil && !(c.isLowercase && c.isASCII)) {
            letters.append(c)
        }
        var table = try Keywords.read(folder: path)
        let before = table
        for k in keywords {
            guard let l = table.letterAdding(k) else { throw NestboxFailure(.temporary, "\(path): more than 26 keywords") }
            letters.append(l)
        }
        if table != before { try table.writeLocked(folder: path) }
        let newName = name.with(flags: letters)
        let from = "\(path)/\(sub)/\(name.fileName)", to = "\(path)/cur/\(newName.fileName)"
        if from != to {
            try Files.rename(from, to)
            try Files.fsyncDirectory("\(path)/cur")
            if sub == "new" { try Files.fsyncDirectory("\(path)/new") }
        }
    }
}
