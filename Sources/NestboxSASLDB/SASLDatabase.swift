// Reading Cyrus SASL's user database (sasldb2) the way sasldblistusers2 does: through Berkeley
// DB, read-only, never by parsing the hash file by hand.
//
// The file is a Berkeley DB hash written by libsasl2's sasldb plugin (db_berkeley.c). Each
// record is one property of one user: the key is `authid NUL realm NUL property` (no trailing
// NUL), the value the property's bytes (`userPassword` in plain text, `authPassword` and
// `cmusaslsecret*` for the mechanisms' secrets). A user "exists" as long as one record with
// its `authid NUL realm NUL` prefix is left, which is also what sasldblistusers2 shows.
//
// What this file guarantees: it never writes (the database is opened DB_RDONLY, without an
// environment, as libsasl2 opens it), it opens and closes the file on every call, so a reader
// never holds it across a writer's change, and Berkeley DB's own messages never reach the
// terminal (they are collected into the failure's detail). libsasl2 writes without locks:
// a reader racing a writer can see a half-written page, which shows as a temporary failure,
// never as a missing user.
//
// Berkeley DB is loaded (dlopen) the first time a database is opened, not linked: every program
// reaches this file through the store (autocreate_users: sasldb), and the dynamic loader would
// otherwise map and relocate libdb at each start of nestbox-deliver, once per message, for the
// few sites that use it. A missing library is a configuration error naming the package.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CBerkeleyDB
import NestboxSupport

/// One record of the database.
public struct SASLEntry: Sendable, Equatable, Comparable {
    public let user: String
    public let realm: String
    public let property: String

    public init(user: String, realm: String, property: String) {
        self.user = user
        self.realm = realm
        self.property = property
    }

    /// As sasldblistusers2 prints it: `user@realm: property`.
    public var line: String { "\(user)@\(realm): \(property)" }

    public static func < (a: SASLEntry, b: SASLEntry) -> Bool {
        (a.user, a.realm, a.property) < (b.user, b.realm, b.property)
    }
}

public struct SASLDatabase: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    /// Whether the file is there at all (a missing database is no error for `create`).
    public var exists: Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// Every record, sorted by user, realm, property. A missing file is the .noInput row,
    /// one that may not be read .noPermission, anything else a temporary failure.
    public func entries() throws -> [SASLEntry] {
        var out: [SASLEntry] = []
        try walk { out.append($0); return true }
        return out.sorted()
    }

    /// The properties stored for `user` in `realm` (empty: no such user).
    public func properties(user: String, realm: String) throws -> [String] {
        var out: [String] = []
        try walk { e in
            if e.user == user && e.realm == realm { out.append(e.property) }
            return true
        }
        return out.sorted()
    }

    /// Whether `user` in `realm` has any record. Cheap for the usual case: direct look-ups of
    /// the properties libsasl2 writes first, and a walk only when both are missing.
    public func knows(user: String, realm: String) throws -> Bool {
        var found = false
        try withOpenDatabase { db in
            for property in ["userPassword", "authPassword"] {
                var key = Array(user.utf8) + [0] + Array(realm.utf8) + [0] + Array(property.utf8)
                var data = DBT()
                let rc = key.withUnsafeMutableBytes { k -> Int32 in
                    var dbkey = DBT()
                    dbkey.data = k.baseAddress
                    dbkey.size = UInt32(k.count)
                    return db.pointee.get(db, nil, &dbkey, &data, 0)
                }
                if rc == 0 { found = true; return }
                if rc != DB_NOTFOUND { throw failure("read", rc) }
            }
        }
        if found { return true }
        try walk { e in
            if e.user == user && e.realm == realm { found = true; return false }
            return true
        }
        return found
    }

    // MARK: Berkeley DB

    /// Calls `body` with every record until it returns false.
    private func walk(_ body: (SASLEntry) throws -> Bool) throws {
        try withOpenDatabase { db in
            var cursor: UnsafeMutablePointer<DBC>? = nil
            var rc = db.pointee.cursor(db, nil, &cursor, 0)
            guard rc == 0, let cursor else { throw failure("read", rc) }
            defer { _ = cursor.pointee.close(cursor) }
            while true {
                var key = DBT()
                var data = DBT()
                rc = cursor.pointee.get(cursor, &key, &data, UInt32(DB_NEXT))
                if rc == DB_NOTFOUND { return }
                guard rc == 0 else { throw failure("read", rc) }
                guard let entry = SASLDatabase.entry(key) else { continue }
                if try !body(entry) { return }
            }
        }
    }

    /// `authid NUL realm NUL property` as an entry; nil for a key of another shape.
    static func entry(_ key: DBT) -> SASLEntry? {
        guard let base = key.data else { return nil }
        let bytes = UnsafeRawBufferPointer(start: base, count: Int(key.size))
        let parts = bytes.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        let text = parts.map { String(decoding: $0, as: UTF8.self) }
        return SASLEntry(user: text[0], realm: text[1], property: text[2])
    }

    private func withOpenDatabase(_ body: (UnsafeMutablePointer<DB>) throws -> Void) throws {
        // Berkeley DB opens with O_RDONLY and no O_NOFOLLOW: look first, so that a missing or
        // unreadable file is named as such rather than as Berkeley DB's generic error.
        if access(path, R_OK) != 0 {
            let code = errno
            throw failure("open", code)
        }
        let library = try BerkeleyDB.load()
        var handle: UnsafeMutablePointer<DB>? = nil
        var rc = library.create(&handle, nil, 0)
        guard rc == 0, let db = handle else { throw failure("open", rc) }
        defer { _ = db.pointee.close(db, 0) }
        db.pointee.set_errcall(db, nil)
        db.pointee.set_errfile(db, nil)
        rc = db.pointee.open(db, nil, path, nil, DB_UNKNOWN, UInt32(DB_RDONLY), 0)
        guard rc == 0 else { throw failure("open", rc) }
        try body(db)
    }

    /// A Berkeley DB or errno code as the failure of `operation` on this file.
    func failure(_ operation: String, _ code: Int32) -> NestboxFailure {
        let reason = (try? BerkeleyDB.load())?.strerror(code).map { String(cString: $0) } ?? errnoText(code)
        switch code {
        case ENOENT: return NestboxFailure(.noInput, "\(operation) SASL database \(path): \(reason)")
        case EACCES, EPERM: return NestboxFailure(.noPermission, "\(operation) SASL database \(path): \(reason)")
        default: return NestboxFailure(.temporary, "\(operation) SASL database \(path): \(reason)")
        }
    }
}

/// libdb's two entry points this file calls by name (everything else goes through the handle's
/// function pointers), found once per process.
struct BerkeleyDB: @unchecked Sendable {
    typealias Create = @convention(c) (UnsafeMutablePointer<UnsafeMutablePointer<DB>?>?, OpaquePointer?, UInt32) -> Int32
    typealias StrError = @convention(c) (Int32) -> UnsafeMutablePointer<CChar>?

    let create: Create
    let strerror: StrError

    /// The soname Debian's libdb5.3 installs (the one libsasl2's sasldb plugin uses).
    static let soname = "libdb-5.3.so"

    private static let loaded: Result<BerkeleyDB, NestboxFailure> = {
        guard let handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? soname
            return .failure(NestboxFailure(.config, "Berkeley DB (for the SASL database) cannot be loaded: \(why); install libdb5.3"))
        }
        guard let create = dlsym(handle, "db_create"), let strerror = dlsym(handle, "db_strerror") else {
            return .failure(NestboxFailure(.config, "\(soname): db_create or db_strerror missing"))
        }
        return .success(BerkeleyDB(create: unsafeBitCast(create, to: Create.self),
                                   strerror: unsafeBitCast(strerror, to: StrError.self)))
    }()

    static func load() throws -> BerkeleyDB { try loaded.get() }
}
