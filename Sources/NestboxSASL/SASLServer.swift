// The libsasl2 side of the SASL bridge: the calls saslpasswd2 makes, with every result code
// turned into a row of the outcome table and one line that says what and why.
//
// libsasl2 is initialised once per process (`sasl_server_init` is process-wide). Its options
// come from our getopt callback first and from /etc/sasl2/<appname>.conf after: we answer
// `sasldb_path` (our `sasl_sasldb_path`, or -f), `auxprop_plugin: sasldb` and
// `pwcheck_method: auxprop` and `scram_secret_generate: yes` (without it the SCRAM plugins store
// no secret, and saslpasswd2 -n stores nothing at all), so that whatever a site's saslpasswd.conf says, writes and checks
// go to the file we were told, through the same plugin saslauthd, Postfix's smtpd and Cyrus
// read it with. Everything else (mech_list...) is the site's.
//
// Realms are always given to libsasl2 explicitly (`user_realm` of sasl_server_new) and user
// names never carry `@realm`: with a user_realm, libsasl2's sasldb plugin takes the name
// whole, so what we store is exactly the (user, realm) the caller validated (SASLName).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSASL
@_exported import NestboxSASLDB
import NestboxSupport

/// What libsasl2 is asked for; set once, before `SASLServer.start`.
nonisolated(unsafe) private var optionValues: [String: UnsafeMutablePointer<CChar>] = [:]
/// libsasl2's last log message (its errors carry more detail there than in the result code).
nonisolated(unsafe) private var lastLogMessage: String? = nil

private let getoptCallback: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?,
                                            UnsafeMutablePointer<UnsafePointer<CChar>?>?, UnsafeMutablePointer<UInt32>?) -> Int32 = {
    _, _, option, result, length in
    guard let option, let value = optionValues[String(cString: option)] else { return SASL_FAIL }
    result?.pointee = UnsafePointer(value)
    length?.pointee = UInt32(strlen(value))
    return SASL_OK
}

private let logCallback: @convention(c) (UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Int32 = {
    _, level, message in
    if let message, level <= SASL_LOG_WARN { lastLogMessage = String(cString: message) }
    return SASL_OK
}

public final class SASLServer {
    public let databasePath: String
    public let appName: String
    nonisolated(unsafe) private static var started: (appName: String, path: String)? = nil
    private var callbacks: [sasl_callback_t] = []

    /// Initialises libsasl2 for `appName` on the database at `databasePath`. Once per process.
    public init(appName: String, databasePath: String) throws {
        self.appName = appName
        self.databasePath = databasePath
        if let started = SASLServer.started {
            precondition(started == (appName, databasePath), "libsasl2 is initialised once per process")
            return
        }
        for (key, value) in ["sasldb_path": databasePath, "auxprop_plugin": "sasldb", "pwcheck_method": "auxprop",
                              "scram_secret_generate": "yes"] {
            optionValues[key] = strdup(value)
        }
        // libsasl2 keeps the pointer: the array is never freed (one per process).
        let list = UnsafeMutablePointer<sasl_callback_t>.allocate(capacity: 3)
        list[0] = sasl_callback_t(id: UInt(SASL_CB_GETOPT), proc: unsafeBitCast(getoptCallback, to: (@convention(c) () -> Int32).self), context: nil)
        list[1] = sasl_callback_t(id: UInt(SASL_CB_LOG), proc: unsafeBitCast(logCallback, to: (@convention(c) () -> Int32).self), context: nil)
        list[2] = sasl_callback_t(id: UInt(SASL_CB_LIST_END), proc: nil, context: nil)
        let rc = sasl_server_init(list, appName)
        guard rc == SASL_OK else { throw SASLServer.failure("initialise libsasl2 (\(appName))", rc, nil) }
        SASLServer.started = (appName, databasePath)
    }

    /// libsasl2's version, as `saslpasswd2 -v` shows it.
    public static var libraryVersion: String {
        var implementation: UnsafePointer<CChar>? = nil
        var version: UnsafePointer<CChar>? = nil
        sasl_version_info(&implementation, &version, nil, nil, nil, nil)
        return "\(implementation.map { String(cString: $0) } ?? "libsasl2") \(version.map { String(cString: $0) } ?? "?")"
    }

    // MARK: Operations

    /// Sets `user`'s password (creating the records with `create`); `noPlain`: no `userPassword`,
    /// only the mechanisms' secrets.
    public func setPassword(_ name: SASLName, _ password: String, create: Bool, noPlain: Bool) throws {
        try withConnection(name.realm) { conn in
            var flags: UInt32 = 0
            if create { flags |= UInt32(SASL_SET_CREATE) }
            if noPlain { flags |= UInt32(SASL_SET_NOPLAIN) }
            let rc = sasl_setpass(conn, name.user, password, UInt32(password.utf8.count), nil, 0, flags)
            guard rc == SASL_OK else { throw SASLServer.failure("set password of \(name)", rc, conn) }
        }
    }

    /// Whether `password` is `user`'s, as saslauthd -a sasldb would say: true, false for a
    /// wrong password, a failure for anything else.
    public func checkPassword(_ name: SASLName, _ password: String) throws -> Bool {
        try withConnection(name.realm) { conn in
            let rc = sasl_checkpass(conn, name.user, UInt32(name.user.utf8.count), password, UInt32(password.utf8.count))
            switch rc {
            case SASL_OK: return true
            case SASL_BADAUTH, SASL_NOUSER, SASL_NOVERIFY: return false
            default: throw SASLServer.failure("check password of \(name)", rc, conn)
            }
        }
    }

    /// sasl_user_exists: libsasl2's own answer (it looks for a password, so a user created with
    /// -n and no mechanism secrets is not seen; SASLDatabase.knows sees every record).
    public func userExists(_ name: SASLName) throws -> Bool {
        try withConnection(name.realm) { conn in
            let rc = sasl_user_exists(conn, nil, name.realm, name.user)
            switch rc {
            case SASL_OK: return true
            case SASL_NOUSER: return false
            default: throw SASLServer.failure("look up \(name)", rc, conn)
            }
        }
    }

    /// Removes `properties` of `user` through the auxprop store: a property given no value is
    /// deleted by the sasldb plugin (this is how SCRAM's `authPassword`, which saslpasswd2 -d
    /// leaves behind, goes too).
    public func removeProperties(_ name: SASLName, _ properties: [String]) throws {
        guard !properties.isEmpty else { return }
        try withConnection(name.realm) { conn in
            var owned: OpaquePointer? = prop_new(UInt32(properties.count))
            guard let ctx = owned else { throw NestboxFailure(.temporary, "remove \(name): out of memory") }
            defer { prop_dispose(&owned) }
            let copies = properties.map { UnsafePointer(strdup($0)) }
            defer { copies.forEach { free(UnsafeMutablePointer(mutating: $0)) } }
            var names: [UnsafePointer<CChar>?] = copies + [nil]
            var rc = prop_request(ctx, &names)
            guard rc == SASL_OK else { throw SASLServer.failure("remove \(name)", rc, conn) }
            rc = sasl_auxprop_store(conn, ctx, name.user)
            guard rc == SASL_OK else { throw SASLServer.failure("remove \(name)", rc, conn) }
        }
    }

    // MARK: Connections and errors

    private func withConnection<T>(_ realm: String, _ body: (OpaquePointer) throws -> T) throws -> T {
        var conn: OpaquePointer? = nil
        lastLogMessage = nil
        let rc = sasl_server_new(appName, nil, realm, nil, nil, nil, 0, &conn)
        guard rc == SASL_OK, let conn else { throw SASLServer.failure("start a libsasl2 session", rc, nil) }
        defer { var disposed: OpaquePointer? = conn; sasl_dispose(&disposed) }
        return try body(conn)
    }

    /// A libsasl2 result as a failure: the row by what it means, the text from libsasl2.
    static func failure(_ operation: String, _ rc: Int32, _ conn: OpaquePointer?) -> NestboxFailure {
        var reason = String(cString: sasl_errstring(rc, nil, nil))
        if let conn, let detail = sasl_errdetail(conn) {
            let text = String(cString: detail)
            if !text.isEmpty { reason = text }
        }
        if let logged = lastLogMessage, !reason.contains(logged) { reason += " (\(logged))" }
        let row: Outcome
        switch rc {
        case SASL_NOUSER: row = .userUnknown
        case SASL_NOCHANGE: row = .userExists
        case SASL_BADAUTH: row = .authenticationFailed
        case SASL_DISABLED, SASL_NOAUTHZ, SASL_EXPIRED, SASL_PWLOCK: row = .noPermission
        case SASL_BADPARAM, SASL_BADVERS, SASL_NOMECH, SASL_CONFIGERR: row = .config
        default: row = .temporary
        }
        return NestboxFailure(row, "\(operation): \(reason)")
    }
}
