// A folder scan: the message files of new/ and cur/ joined to the dovecot-uidlist records by
// stem (the part of the name before `:`), and everything that does not fit reported. A report
// only: nothing is repaired here (reconstruct decides what to do with it).
//
// What is reported, and why each matters to Dovecot:
// - a record whose file is gone: harmless to Dovecot (it drops the record at its next sync), but
//   a sign of files removed behind the list's back (and the quota's);
// - a file with no record: Dovecot numbers it at its next sync; our own appends must then not
//   give it a second UID;
// - two files with the same base name (`<secs>.M<usec>P<pid>...`, before the first `,`): Dovecot
//   keys messages by base, so one of them is invisible or both flip; one needs a fresh base;
// - a missing or wrong `,S=` (exact file size) or `,W=` (RFC822.SIZE: every bare LF counted as CRLF):
//   Dovecot trusts both, and a wrong `S=` makes every FETCH BODY[] of the message fail.
// A scan that is meant to be acted on runs inside the folder's uidlist session
// (UIDListSession.swift): readdir may skip entries while another process renames.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NestboxSupport

/// One message file found by a scan.
public struct ScannedMessage: Equatable, Sendable {
    /// From the uidlist; nil when no record names the file.
    public var uid: UInt32?
    /// "new" or "cur".
    public var subdirectory: String
    public var name: MaildirName
    public var path: String
    /// The file's size (stat), -1 if it vanished during the scan.
    public var size: Int64
    /// The file's RFC822.SIZE (every bare LF counted as CRLF), when the scan read the file.
    public var virtualSize: Int64?

    /// Whether the file carries the flag letter (`T` is \Deleted).
    public func has(_ flag: MaildirFlag) -> Bool { name.has(flag.rawValue) }
}

public struct FolderScan: Equatable, Sendable {
    public enum SizeField: Character, Sendable { case size = "S", virtualSize = "W" }

    /// A `,S=` or `,W=` field that is missing (`recorded` nil) or does not match the file.
    public struct WrongSize: Equatable, Sendable {
        public var path: String
        public var field: SizeField
        public var recorded: Int64?
        public var actual: Int64
    }

    public var list: UIDList?
    /// Every message file, in UID order; files without a record last, by stem.
    public var messages: [ScannedMessage]
    /// Records whose file is in neither new/ nor cur/.
    public var missingFiles: [UIDList.Record]
    /// Files no record names.
    public var unrecorded: [ScannedMessage]
    /// Groups of two or more files sharing a base name.
    public var duplicateBases: [[ScannedMessage]]
    public var wrongSizes: [WrongSize]

    public var isClean: Bool {
        missingFiles.isEmpty && unrecorded.isEmpty && duplicateBases.isEmpty && wrongSizes.isEmpty
    }

    /// Scans `folder`. With `session`, the list is read through it (the caller holds the lock);
    /// otherwise without a lock, as a reader. `readFiles` reads every file to check `,W=` (and
    /// to find a missing one); without it only `,S=` is checked, by stat. `trustNames` (without
    /// `readFiles`): a file the directory lists as regular and whose name has `,S=` is not
    /// stat'ed, its size taken from the name (no wrong `,S=` is found then): for expunge, which
    /// counts the quota by the names anyway, over folders of 100k files. Without `checks`,
    /// only `list` and `messages` (in directory order) are filled in.
    public static func scan(_ folder: Folder, session: UIDListSession? = nil, readFiles: Bool = true,
                            trustNames: Bool = false, checks: Bool = true) throws -> FolderScan {
        let list = try session?.read() ?? folder.uidList.read()
        var messages: [ScannedMessage] = []
        var wrong: [WrongSize] = []
        try forEachMessage(folder, uids: list?.uidsByStem() ?? [:], session: session, readFiles: readFiles,
                           trustNames: trustNames) { m in
            messages.append(m)
            if m.name.size != m.size {
                wrong.append(WrongSize(path: m.path, field: .size, recorded: m.name.size, actual: m.size))
            }
            if let virtual = m.virtualSize, m.name.virtualSize != virtual {
                wrong.append(WrongSize(path: m.path, field: .virtualSize, recorded: m.name.virtualSize, actual: virtual))
            }
        }
        // Without `checks` (an expunge by predicate over a large folder): the messages as
        // listed, nothing compared (no order, no missing records, no shared bases).
        guard checks else {
            return FolderScan(list: list, messages: messages, missingFiles: [], unrecorded: [], duplicateBases: [], wrongSizes: wrong)
        }
        messages.sort { ($0.uid ?? UInt32.max, $0.name.stem) < ($1.uid ?? UInt32.max, $1.name.stem) }
        let present = Set(messages.map { $0.name.stem })
        let missing = (list?.records ?? []).filter { !present.contains($0.stem) }
        // Counted first: an array per base would be one allocation per message.
        var baseCount: [String: Int] = [:]
        baseCount.reserveCapacity(messages.count)
        for m in messages { baseCount[m.name.base, default: 0] += 1 }
        var byBase: [String: [ScannedMessage]] = [:]
        if baseCount.values.contains(where: { $0 > 1 }) {
            for m in messages where baseCount[m.name.base]! > 1 { byBase[m.name.base, default: []].append(m) }
        }
        let duplicates = byBase.values.sorted { $0[0].name.base < $1[0].name.base }
        return FolderScan(list: list, messages: messages, missingFiles: missing,
                          unrecorded: messages.filter { $0.uid == nil }, duplicateBases: duplicates,
                          wrongSizes: wrong)
    }

    /// Calls `body` for each message file of new/ then cur/, in directory order, as it is
    /// listed (`uids`: the list's UID of each stem). `readFiles` and `trustNames` as for `scan`.
    /// For a caller that acts on each file while the listing goes on (expunge).
    public static func forEachMessage(_ folder: Folder, uids: [String: UInt32], session: UIDListSession? = nil,
                                      readFiles: Bool = false, trustNames: Bool = false,
                                      _ body: (ScannedMessage) throws -> Void) throws {
        for sub in ["new", "cur"] {
            let dir = "\(folder.path)/\(sub)"
            try Files.forEachEntry(dir) { rawName, _, type, _ in
                let fileName = String(cString: rawName)
                guard MaildirName.isMessageName(fileName) else { return }
                session?.keepAlive()
                let name = MaildirName(fileName)
                let path = "\(dir)/\(fileName)"
                let size: Int64
                if trustNames && !readFiles && type == UInt8(DT_REG), let named = name.size {
                    size = named
                } else {
                    guard let st = try Files.status(path), (st.st_mode & S_IFMT) == S_IFREG else { return }
                    size = Int64(st.st_size)
                }
                let virtual = readFiles ? try virtualSize(path) : nil
                try body(ScannedMessage(uid: uids[name.stem], subdirectory: sub, name: name, path: path,
                                        size: size, virtualSize: virtual))
            }
        }
    }

    /// RFC822.SIZE: the size plus one for every LF not preceded by CR (Dovecot's count; for the
    /// LF files the store writes, the number of LF bytes). Read in 64 KiB chunks; nil if the file
    /// vanished.
    public static func virtualSize(_ path: String) throws -> Int64? {
        guard let fd = try Files.openForReading(path) else { return nil }
        defer { close(fd) }
        var total: Int64 = 0
        var previous: UInt8 = 0
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw NestboxFailure.system("read", path)
            }
            if n == 0 { break }
            total += Int64(n)
            for i in 0..<n {
                if buffer[i] == 10 && previous != 13 { total += 1 }
                previous = buffer[i]
            }
        }
        return total
    }
}
